"""``python -m vmwrapper.demo [--work-dir DIR] [--db URL] [--trickle S] [--input-mb MB]``.

Progress goes to stderr, a line per step with the elapsed time; the summary
goes to stdout. Exit statuses: 0 the whole chain worked, 1 a step failed
(the message says which and why), 2 bad options, 130 interrupted (SIGINT,
SIGTERM or SIGHUP). Every process the demo started is stopped on every one
of these paths.
"""

from __future__ import annotations

import argparse
import pathlib
import signal
import sys
import time
import traceback
from collections.abc import Sequence

from trickle_handler.db import DatabaseError
from vmwrapper.appliance.builder import BuildError
from vmwrapper.demo.steps import DEFAULT_WORK_DIR, STEP_COUNT, DemoFailed, DemoOptions, run_demo
from vmwrapper.demo.summary import render
from vmwrapper.deploy.executable import BuildError as ExeBuildError
from vmwrapper.deploy.spec import DeployError
from vmwrapper.progress_bar import StepProgress, format_clock
from vmwrapper.testing.chain import ChainError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Failures the message alone explains (anything else also gets its traceback).
EXPECTED_ERRORS = (DemoFailed, ChainError, TimeoutError, BuildError, ExeBuildError, DeployError,
                   ValueError, DatabaseError)


class Interrupted(Exception):
    """A signal asked the demo to stop; cleanup runs as for any failure."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vmwrapper.demo",
        description="Run a VM job under a real BOINC client end to end and show the credit "
                    "it earns (what `make demo` runs; needs root and scripts/bootstrap.sh).")
    p.add_argument("--work-dir", type=pathlib.Path, default=DEFAULT_WORK_DIR, metavar="DIR",
                   help=f"logs, database and client dir; emptied first (default {DEFAULT_WORK_DIR})")
    p.add_argument("--db", metavar="URL",
                   help="project database: mysql://root@127.0.0.1:3306/boincvm_demo (dropped and "
                        "recreated) or sqlite:///FILE (default: project.db in the work dir)")
    p.add_argument("--trickle", type=float, default=DemoOptions.trickle_period, metavar="S",
                   help="seconds between CPU-time trickles (default %(default)g)")
    p.add_argument("--input-mb", type=float, default=DemoOptions.input_bytes / 2**20,
                   metavar="MB", help="size of the word list the guest sorts (default %(default)g)")
    p.add_argument("--timeout", type=float, default=DemoOptions.task_timeout, metavar="S",
                   help="most seconds for the task to run (default %(default)g)")
    return p


def _options(argv: Sequence[str]) -> DemoOptions:
    parser = _parser()
    args = parser.parse_args(list(argv))
    if args.trickle <= 0:
        parser.error(f"--trickle {args.trickle:g}: give a positive number of seconds")
    if not 0 < args.input_mb <= 512:
        parser.error(f"--input-mb {args.input_mb:g}: give a size above 0 and at most 512")
    if args.timeout <= 0:
        parser.error(f"--timeout {args.timeout:g}: give a positive number of seconds")
    return DemoOptions(work_dir=args.work_dir, db=args.db, trickle_period=args.trickle,
                       input_bytes=int(args.input_mb * 2**20), task_timeout=args.timeout)


def _on_signal(signum: int, _frame: object) -> None:
    # Later signals must not break the cleanup this one starts.
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    options = _options(sys.argv[1:] if argv is None else argv)

    started = time.monotonic()
    steps = StepProgress("demo", expected=STEP_COUNT)

    def note(text: str) -> None:
        print(f"       {format_clock(time.monotonic() - started):>5}  {text}",
              file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, _on_signal) for sig in _SIGNALS}
    try:
        report = run_demo(options, steps, note)
        steps("summary")
    except Interrupted as exc:
        print(f"\ndemo stopped: {exc}; every process it started was stopped. "
              f"Logs so far: {options.work_dir}/logs", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - any failure: say which step, exit 1
        if not isinstance(exc, EXPECTED_ERRORS):
            traceback.print_exc()
        kind = "" if isinstance(exc, (DemoFailed, ChainError)) else f"{type(exc).__name__}: "
        print(f"\ndemo FAILED at step {steps.steps}/{STEP_COUNT}: {kind}{exc}\n"
              f"Logs: {options.work_dir}/logs (client.log, stderr.txt, trickle_handler.log)",
              file=sys.stderr)
        return EXIT_FAILED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.stdout.write("\n" + render(report))
    return EXIT_OK

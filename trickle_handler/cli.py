"""The ``trickle_handler`` command: a BOINC server daemon granting credit for CPU-time trickles.

Options follow BOINC's daemons (``sched/trickle_handler.cpp``, ``sched/validator.cpp``): long
options take one or two dashes, ``-d LEVEL`` sets the log level, ``--one_pass`` handles what is
queued and exits. Add it to the project's ``config.xml`` like any daemon::

    <daemon><cmd>trickle_handler --variety cpu_time --max_runtime 3600</cmd></daemon>
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from collections.abc import Sequence
from typing import Any

from trickle_handler import __version__
from trickle_handler.batch import DEFAULT_BATCH_SIZE, BatchHandler, MessageLog
from trickle_handler.boinclog import CRITICAL, DEBUG, NORMAL, BoincLog
from trickle_handler.config import ConfigError, locate, stop_file
from trickle_handler.credit import DEFAULT_MAX_FPOPS
from trickle_handler.daemon import EXIT_FATAL, Daemon
from trickle_handler.db import BadDatabaseURL, open_database, parse_database_url
from trickle_handler.reasons import Reason
from trickle_handler.rules import (
    DEFAULT_MAX_RUNTIME,
    DEFAULT_REPORT_GRACE,
    Grant,
    Message,
    Policy,
)

#: Signals that stop the daemon after the batch in progress (bin/stop sends SIGHUP).
STOP_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive finite number")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _boinc_option(*names: str) -> tuple[str, ...]:
    """``--name`` and ``-name``: BOINC daemons accept both spellings (sched_util.cpp is_arg)."""
    return tuple(spelling for name in names for spelling in (f"--{name}", f"-{name}"))


#: The options in ``--help`` order: their spellings, then argparse's keywords for them.
OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (_boinc_option("project_dir"), {"metavar": "DIR", "help": "the BOINC project directory"}),
    (_boinc_option("db"), {
        "metavar": "URL",
        "help": "mysql://user:pw@host:port/db or sqlite:///path (overrides config.xml)"}),
    (_boinc_option("variety"), {
        "default": "cpu_time", "help": "message variety (default cpu_time)"}),
    (_boinc_option("one_pass"), {
        "action": "store_true", "help": "handle the queue once, then exit"}),
    (_boinc_option("sleep", "sleep_interval"), {
        "dest": "sleep", "type": _positive, "default": 5.0, "metavar": "SECONDS",
        "help": "pause when the queue is empty (default 5)"}),
    (_boinc_option("mod"), {
        "nargs": 2, "type": _non_negative_int, "metavar": ("N", "I"),
        "help": "handle only messages with hostid %% N == I"}),
    (("-d", "--d"), {
        "dest": "debug_level", "type": int, "default": NORMAL, "metavar": "LEVEL",
        "help": "log level: 1 critical, 2 warning, 3 normal, 4 debug (+ SQL)"}),
    (_boinc_option("max_runtime"), {
        "type": _positive, "default": DEFAULT_MAX_RUNTIME, "metavar": "SECONDS",
        "help": f"most CPU seconds credited for one message (default {DEFAULT_MAX_RUNTIME:g})"}),
    (_boinc_option("max_fpops"), {
        "type": _positive, "default": DEFAULT_MAX_FPOPS, "metavar": "FLOPS",
        "help": f"speed cap while too few hosts for percentiles (default {DEFAULT_MAX_FPOPS:g})"}),
    (_boinc_option("report_grace"), {
        "type": _non_negative_int, "default": DEFAULT_REPORT_GRACE, "metavar": "SECONDS",
        "help": "credit trickles stored this long after the result was reported (default 3600)"}),
    (_boinc_option("batch_size"), {
        "type": int, "default": DEFAULT_BATCH_SIZE, "metavar": "N",
        "help": f"messages per transaction (default {DEFAULT_BATCH_SIZE})"}),
    (_boinc_option("create_tables"), {
        "action": "store_true",
        "help": "create our state tables (and BOINC's, when absent) if missing"}),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to print ``--help``), built from :data:`OPTIONS`."""
    p = argparse.ArgumentParser(
        prog="trickle_handler",
        allow_abbrev=False,  # BOINC daemons take whole option names only
        description="Grant BOINC credit for CPU-time trickle-up messages, exactly once.",
        epilog="Stops after the current batch on SIGHUP, SIGTERM, SIGINT or <project>/stop_daemons.",
    )
    for spellings, keywords in OPTIONS:
        p.add_argument(*spellings, **keywords)
    p.add_argument("-v", "--version", action="version", version=f"trickle_handler {__version__}")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and cross-check the options (argparse exits 2 with a message on bad ones)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mod is not None:
        n, i = args.mod
        if n < 1 or i >= n:
            parser.error(f"--mod {n} {i}: need N >= 1 and 0 <= I < N")
        args.mod = (n, i)
    if args.debug_level < CRITICAL:
        parser.error(f"-d {args.debug_level}: levels are 1 to {DEBUG}")
    if args.batch_size < 1:
        parser.error(f"--batch_size {args.batch_size}: must be at least 1")
    return args


def message_logger(log: BoincLog) -> MessageLog:
    """The ``-d 4`` line per message: what it earned and why, or why it earned nothing."""

    def log_message(
        msg: Message, grant: Grant | None, reasons: tuple[Reason, ...], detail: str
    ) -> None:
        codes = ",".join(r.code for r in reasons)
        if grant is None:
            log.debug(f"msg {msg.id} host {msg.hostid}: rejected {codes} {detail}".rstrip())
        else:
            log.debug(
                f"msg {msg.id} host {msg.hostid}: credited {grant.seconds:f} s"
                f" x {grant.flops:g} FLOPS = {grant.credit:f}" + (f" ({codes})" if codes else "")
            )

    return log_message


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trickle_handler`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["stats"]:  # the statistics view: trickle_handler/stats.py
        from trickle_handler.stats import main as stats_main  # noqa: PLC0415

        return stats_main(argv[1:])
    args = parse_args(argv)
    log = BoincLog(args.debug_level)
    try:
        db_url = parse_database_url(args.db) if args.db else None
        where = locate(db_url, args.project_dir)
    except (ConfigError, BadDatabaseURL) as exc:
        log.critical(str(exc))
        return EXIT_FATAL

    from twisted.internet import reactor  # noqa: PLC0415 - installs the reactor; only when run

    db = open_database(where.db)
    if log.enabled(DEBUG):
        db.trace = lambda sql: log.debug(f"SQL: {' '.join(sql.split())[:2000]}")
    message_log = message_logger(log) if log.enabled(DEBUG) else None
    handler = BatchHandler(
        db,
        now=reactor.seconds,
        variety=args.variety,
        policy=Policy(args.max_runtime, args.max_fpops, args.report_grace),
        mod=args.mod,
        batch_size=args.batch_size,
        message_log=message_log,
    )
    daemon = Daemon(
        reactor,
        handler,
        log,
        sleep=args.sleep,
        one_pass=args.one_pass,
        stop_file=stop_file(where.project_dir),
        create_tables=args.create_tables,
    )
    for signum in STOP_SIGNALS:
        name = signal.Signals(signum).name
        signal.signal(signum, lambda _s, _f, name=name: reactor.callFromThread(daemon.stop, name))
    log.normal(
        f"Starting trickle handler {__version__}: variety {args.variety}, database"
        f" {where.db.redacted()} (from {where.db_source}), project {where.project_dir or '-'}"
        + (f", mod {args.mod[0]} {args.mod[1]}" if args.mod else "")
    )
    status: list[int] = []

    def finished(code: int) -> None:
        status.append(code)
        reactor.stop()

    reactor.callWhenRunning(lambda: daemon.run().addCallback(finished))
    reactor.run(installSignalHandlers=False)
    return status[0] if status else EXIT_FATAL


if __name__ == "__main__":
    sys.exit(main())

"""The ``copilot`` command.

Physicists (``--server URL --token T``, or COPILOT_SERVER / COPILOT_TOKEN)::

    copilot submit JOB.json                      a job file (see the README)
    copilot submit --input data.txt --output 'out*' --max-run-time 600 -- ./run.sh data.txt
    copilot status [JOB]                         one job, or a table of yours
    copilot wait JOB [--timeout S]               until done/failed/cancelled
    copilot fetch JOB DIR                        outputs, sha256-checked
    copilot cancel JOB
    copilot logs JOB

Operators::

    copilot serve --store sqlite:///var/lib/copilot/jobs.db --storage DIR \\
        --http 127.0.0.1:8080 --broker 127.0.0.1:61613 --credentials creds.json
    copilot add-user NAME --store URL            prints the user's token

Pilots (in the guest; the wrapper starts this for a time slice)::

    copilot pilot --broker H:P --login vm-ID --passcode P --work-dir DIR [--slice S]
    copilot pilot --config copilot.json --work-dir DIR   (settings from a file, see pilotconfig)

Exit status: 0 success, 1 an error (message on stderr), 2 usage; ``wait``
exits 0 only when the job is done, 3 when it failed or was cancelled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any

from vmcontroller.copilot.client import ApiError, CopilotClient
from vmcontroller.copilot.spec import JobSpec, SpecError

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_JOB_UNSUCCESSFUL = 3


class CliError(Exception):
    """An expected failure: printed without a traceback."""


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: use HOST:PORT")
    return host, int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="copilot", description="Co-Pilot job submission")
    parser.add_argument("--server", default=os.environ.get("COPILOT_SERVER", ""))
    parser.add_argument("--token", default=os.environ.get("COPILOT_TOKEN", ""))
    sub = parser.add_subparsers(dest="command", required=True)

    submit = sub.add_parser("submit", help="submit a job from a job file or flags")
    submit.add_argument("job_file", nargs="?", help="JSON job file")
    submit.add_argument("--input", action="append", default=[], help="input file (repeatable)")
    submit.add_argument("--output", action="append", default=[], help="output pattern")
    submit.add_argument("--shell", help="run this shell command instead of argv")
    submit.add_argument("--env", action="append", default=[], help="NAME=VALUE")
    submit.add_argument("--cores", type=int)
    submit.add_argument("--memory-mb", type=int)
    submit.add_argument("--max-run-time", type=float)
    submit.add_argument("--retries", type=int)
    submit.add_argument("argv", nargs="*", help="the command (after --)")

    status = sub.add_parser("status", help="one job, or a table of your jobs")
    status.add_argument("job", nargs="?")
    wait = sub.add_parser("wait", help="wait until a job is final")
    wait.add_argument("job")
    wait.add_argument("--timeout", type=float, default=None)
    wait.add_argument("--interval", type=float, default=1.0)
    fetch = sub.add_parser("fetch", help="download a job's outputs")
    fetch.add_argument("job")
    fetch.add_argument("dir")
    for name in ("cancel", "logs"):
        sub.add_parser(name).add_argument("job")

    serve = sub.add_parser("serve", help="run the job manager")
    serve.add_argument("--store", required=True, help="sqlite:///PATH or mysql://USER@H:P/DB")
    serve.add_argument("--storage", required=True, help="directory for inputs and outputs")
    serve.add_argument("--http", type=_address, default=("127.0.0.1", 8080))
    serve.add_argument("--public-url", help="URL pilots use for files (default: the --http one)")
    serve.add_argument("--broker", type=_address, default=("127.0.0.1", 61613))
    serve.add_argument("--credentials", help="credentials file (its host login is used)")
    serve.add_argument("--login")
    serve.add_argument("--passcode")
    serve.add_argument("--vhost", default="/")
    serve.add_argument("--offer-ttl", type=float, default=30.0)
    serve.add_argument("--lease-ttl", type=float, default=60.0)
    serve.add_argument("--heartbeat-interval", type=float, default=10.0)
    serve.add_argument("--sweep-interval", type=float, default=1.0)
    serve.add_argument("--retry-after", type=float, default=2.0,
                       help="seconds an idle pilot waits before asking again")
    serve.add_argument("--max-output-bytes", type=int, default=256 * 1024 * 1024)
    serve.add_argument("--store-thread", choices=["auto", "on", "off"], default="auto",
                       help="store calls in a worker thread (auto: for MariaDB/PostgreSQL)")
    serve.add_argument("--max-releases", type=int, default=20,
                       help="times a job may be given back by pilots without spending an attempt")

    add_user = sub.add_parser("add-user", help="create a user (or renew its token)")
    add_user.add_argument("name")
    add_user.add_argument("--store", required=True)

    # Unset flags stay None: they come from --config, else pilotconfig.DEFAULTS.
    pilot = sub.add_parser("pilot", help="run the pilot loop (inside a guest)")
    pilot.add_argument("--config", help="JSON settings file (broker, login, passcode, slice...)")
    pilot.add_argument("--broker", type=_address)
    pilot.add_argument("--login", help="the VM's broker login, vm-<id>")
    pilot.add_argument("--passcode", default=os.environ.get("COPILOT_PASSCODE"))
    pilot.add_argument("--vhost")
    pilot.add_argument("--work-dir", required=True)
    pilot.add_argument("--cores", type=int)
    pilot.add_argument("--memory-mb", type=int)
    pilot.add_argument("--max-run-time", type=float)
    pilot.add_argument("--slice", type=float, help="seconds until the slice ends")
    pilot.add_argument("--exit-when-idle", type=float, default=None)
    pilot.add_argument("--request-timeout", type=float, default=10.0)
    return parser


# --- physicists ------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> CopilotClient:
    try:
        return CopilotClient(args.server, args.token)
    except ValueError as error:
        raise CliError(str(error)) from None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise CliError(f"cannot read input {path}: {error.strerror}") from None


def _submit(args: argparse.Namespace) -> int:
    job: dict[str, Any] = {}
    inputs: dict[str, bytes] = {}
    base = "."
    if args.job_file:
        base = os.path.dirname(os.path.abspath(args.job_file))
        try:
            with open(args.job_file, encoding="utf-8") as handle:
                job = json.load(handle)
        except OSError as error:
            raise CliError(f"cannot read job file {args.job_file}: {error.strerror}") from None
        except ValueError as error:
            raise CliError(f"job file {args.job_file} is not valid JSON: {error}") from None
        if not isinstance(job, dict):
            raise CliError(f"job file {args.job_file}: a job must be a JSON object")
    paths = list(job.get("inputs", [])) if isinstance(job.get("inputs", []), list) else []
    paths += args.input
    for path in paths:
        if not isinstance(path, str):
            raise CliError(f"inputs must be file paths, got {path!r}")
        name = os.path.basename(path)
        if name in inputs:
            raise CliError(f"two inputs are named {name!r}")
        inputs[name] = _read(os.path.join(base, path))
    job["inputs"] = list(inputs)
    if args.argv:
        job["argv"] = args.argv
    if args.shell:
        job["shell"] = args.shell
    job["outputs"] = list(job.get("outputs", [])) + args.output
    for key in ("cores", "memory_mb", "max_run_time", "retries"):
        if getattr(args, key) is not None:
            job[key] = getattr(args, key)
    if args.env:
        env = dict(job.get("env") or {})
        for item in args.env:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise CliError(f"--env {item!r}: use NAME=VALUE")
            env[name] = value
        job["env"] = env
    try:
        JobSpec.from_dict(job, source=args.job_file or "job")  # clear errors before sending
    except SpecError as error:
        raise CliError(str(error)) from None
    view = _client(args).submit(job, inputs)
    print(view["id"])
    return 0


def _bar(view: dict[str, Any]) -> str:
    marks = {"queued": "....", "running": "##..", "done": "####", "failed": "XXXX",
             "cancelled": "----"}  # fmt: skip
    return f"[{marks.get(view['state'], '????')}]"


def _status(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.job:
        view = client.job(args.job)
        print(f"job {view['id']}  {_bar(view)} {view['state']}  attempts {view['attempts']}"
              f"/{view['max_attempts']}  agent {view['agent'] or '-'}")
        for event in view.get("history", []):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event["at"]))
            print(f"  {stamp}  {event['state']:<9}  {event['detail']}")
        for info in view.get("outputs", []):
            print(f"  output {info['name']}  {info['size']} bytes  sha256 {info['sha256']}")
        return 0
    jobs = client.jobs()
    counts: dict[str, int] = {}
    print(f"{'JOB':<18} {'STATE':<10} {'TRIES':<6} COMMAND")
    for view in jobs:
        counts[view["state"]] = counts.get(view["state"], 0) + 1
        spec = view["spec"]
        command = spec.get("shell") or " ".join(spec.get("argv") or [])
        print(f"{view['id']:<18} {view['state']:<10} {view['attempts']}/{view['max_attempts']:<4} "
              f"{command[:40]}")
    done = counts.get("done", 0) + counts.get("failed", 0) + counts.get("cancelled", 0)
    width = 30
    filled = width * done // len(jobs) if jobs else width
    print(f"[{'#' * filled}{'.' * (width - filled)}] {done}/{len(jobs)} final  "
          + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


def _wait(args: argparse.Namespace) -> int:
    client = _client(args)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while True:
        view = client.job(args.job)
        if view["state"] in ("done", "failed", "cancelled"):
            print(f"{view['id']} {view['state']}")
            return 0 if view["state"] == "done" else EXIT_JOB_UNSUCCESSFUL
        if deadline is not None and time.monotonic() >= deadline:
            raise CliError(f"job {args.job} still {view['state']} after {args.timeout} s")
        time.sleep(args.interval)


def _fetch(args: argparse.Namespace) -> int:
    client = _client(args)
    view = client.job(args.job)
    if view["state"] != "done":
        raise CliError(f"job {args.job} is {view['state']}: only a done job has outputs")
    os.makedirs(args.dir, exist_ok=True)
    for info in view["outputs"]:
        data = client.output(args.job, info["name"])
        if hashlib.sha256(data).hexdigest() != info["sha256"] or len(data) != info["size"]:
            raise CliError(f"output {info['name']} arrived damaged (sha256 mismatch)")
        with open(os.path.join(args.dir, info["name"]), "wb") as handle:
            handle.write(data)
        print(f"{info['name']}  {info['size']} bytes  sha256 ok")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    view = _client(args).cancel(args.job)
    print(f"{view['id']} {view['state']}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    logs = _client(args).logs(args.job)
    sys.stdout.write(logs["stdout"])
    if logs["stderr"]:
        sys.stdout.write("--- stderr ---\n" + logs["stderr"])
    return 0


# --- operators and pilots ----------------------------------------------------------------


def _add_user(args: argparse.Namespace) -> int:
    from vmcontroller.copilot.store import StoreError, open_store

    try:
        store = open_store(args.store)
        print(store.add_user(args.name))
        store.close()
    except StoreError as error:
        raise CliError(str(error)) from None
    return 0


def _broker_login(args: argparse.Namespace) -> tuple[str, str]:
    if args.credentials:
        from vmcontroller.broker.credentials import CredentialsError, load_credentials

        try:
            login = load_credentials(args.credentials).host_login()
        except CredentialsError as error:
            raise CliError(str(error)) from None
        return login.login, login.passcode
    if not args.login:
        raise CliError("give --credentials FILE or --login/--passcode for the broker")
    return args.login, args.passcode or ""


def _serve(args: argparse.Namespace) -> int:
    from vmcontroller.copilot.service import ServiceConfig, serve

    login, passcode = _broker_login(args)
    config = ServiceConfig(
        store_url=args.store, storage_dir=args.storage, http=args.http,
        public_url=args.public_url, broker=args.broker, login=login, passcode=passcode,
        vhost=args.vhost, offer_ttl=args.offer_ttl, lease_ttl=args.lease_ttl,
        heartbeat_interval=args.heartbeat_interval, sweep_interval=args.sweep_interval,
        retry_after=args.retry_after,
        max_output_bytes=args.max_output_bytes, store_thread=args.store_thread,
        max_releases=args.max_releases,
    )  # fmt: skip
    return serve(config)


def _pilot(args: argparse.Namespace) -> int:
    from vmcontroller.copilot.pilotconfig import PilotSettingsError, load_settings, merge_settings
    from vmcontroller.copilot.service import PilotConfig, run_pilot

    flags = {key: getattr(args, key) for key in (
        "broker", "vhost", "login", "passcode", "slice", "cores", "memory_mb", "max_run_time")}
    try:
        settings = merge_settings(flags, load_settings(args.config) if args.config else {})
    except PilotSettingsError as error:
        raise CliError(str(error)) from None
    config = PilotConfig(
        broker=settings["broker"], login=settings["login"], passcode=settings["passcode"],
        vhost=settings["vhost"], work_dir=args.work_dir, cores=settings["cores"],
        memory_mb=settings["memory_mb"], max_run_time=settings["max_run_time"],
        slice_seconds=settings["slice"], exit_when_idle=args.exit_when_idle,
        request_timeout=args.request_timeout,
    )  # fmt: skip
    return run_pilot(config)


_COMMANDS = {
    "submit": _submit, "status": _status, "wait": _wait, "fetch": _fetch, "cancel": _cancel,
    "logs": _logs, "serve": _serve, "add-user": _add_user, "pilot": _pilot,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``copilot`` console script."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (CliError, ApiError) as error:
        print(f"copilot: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""The ``vmcontroller`` command: broker, agent and admin tools.

::

    vmcontroller broker --listen 127.0.0.1:61613 --credentials creds.json
    vmcontroller agent --config agent.json
    vmcontroller run VM [--timeout S] [--cwd DIR] [--env K=V] -- CMD [ARG...]
    vmcontroller run VM --shell 'echo $HOSTNAME'
    vmcontroller put VM LOCAL_SRC GUEST_DST
    vmcontroller get VM GUEST_SRC LOCAL_DST
    vmcontroller ls [--wait S]

The admin tools (run/put/get/ls) log in with the host login of a
credentials file (``--credentials``) or an explicit ``--login``/``--passcode``,
and talk to ``--broker HOST:PORT`` (default 127.0.0.1:61613).  ``run`` exits
with the command's exit status (128+N when killed by signal N); tool errors
exit 1, usage errors 2.

The admin tools read the VM's reply queue: while the wrapper's own host
controller serves that VM, the two would share its replies, so use them on
VMs nothing else is driving (or stop the wrapper first).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["main"]

#: subcommand -> (module, function, help); each function takes argv, returns a status.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "broker": ("vmcontroller.broker", "main", "run the embedded STOMP broker"),
    "agent": ("vmcontroller.guest.__main__", "main", "run the guest agent"),
    "run": ("vmcontroller.cli", "run_main", "run a command in a VM, streaming its output"),
    "put": ("vmcontroller.cli", "put_main", "copy a local file into a VM"),
    "get": ("vmcontroller.cli", "get_main", "copy a file out of a VM"),
    "ls": ("vmcontroller.cli", "ls_main", "list the VMs whose agents are connected"),
}

EXIT_TOOL_ERROR = 1
EXIT_USAGE = 2


class ToolError(Exception):
    """An expected failure: printed without a traceback, exit status 1."""


def _usage() -> str:
    lines = ["usage: vmcontroller SUBCOMMAND [args...]", ""]
    for name, (_, _, text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<8} {text}")
    lines.append("\n'vmcontroller SUBCOMMAND --help' describes each one.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vmcontroller`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else EXIT_USAGE
    if args[0] == "--version":
        from vmcontroller import __version__

        print(f"vmcontroller {__version__}")
        return 0
    if args[0] not in SUBCOMMANDS:
        print(
            f"vmcontroller: unknown subcommand {args[0]!r}; valid: {', '.join(SUBCOMMANDS)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    module, function, _ = SUBCOMMANDS[args[0]]
    return int(getattr(importlib.import_module(module), function)(args[1:]) or 0)


# --- connection options shared by the admin tools -------------------------------


def _admin_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"vmcontroller {prog}", description=description)
    parser.add_argument(
        "--broker", default="127.0.0.1:61613", help="broker HOST:PORT (default %(default)s)"
    )
    parser.add_argument("--credentials", help="credentials file: use its host login")
    parser.add_argument("--login", help="broker login (instead of --credentials)")
    parser.add_argument("--passcode", help="broker passcode (with --login)")
    parser.add_argument("--vhost", default="/", help="STOMP host header (default %(default)s)")
    parser.add_argument(
        "--connect-timeout", type=float, default=10.0, help="seconds to reach the broker"
    )
    return parser


def _login(args: argparse.Namespace) -> tuple[str, str, dict[str, str] | None]:
    """(login, passcode, VM id -> VM login or None when unknown)."""
    if args.login:
        if args.passcode is None:
            raise ToolError("--login needs --passcode")
        return args.login, args.passcode, None
    if args.credentials:
        from vmcontroller.broker.credentials import CredentialsError, load_credentials

        try:
            credentials = load_credentials(args.credentials)
            host = credentials.host_login()
        except (CredentialsError, KeyError, ValueError) as error:
            raise ToolError(f"{args.credentials}: {error}") from None
        vm_logins = {
            login.vm_id: login.login for login in credentials.values() if login.vm_id is not None
        }
        return host.login, host.passcode, vm_logins
    raise ToolError("give --credentials FILE or --login/--passcode")


def _broker_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ToolError(f"invalid --broker {value!r}: expected HOST:PORT, e.g. 127.0.0.1:61613")
    return host.strip("[]"), int(port)


def _run_with_host(args: argparse.Namespace, action: Callable[[Any, Any], Any]) -> int:
    """Connect a HostController, run ``action(host, reactor)``, return its status."""
    try:
        login, passcode, vm_logins = _login(args)
        host_name, port = _broker_address(args.broker)
    except ToolError as error:
        print(f"vmcontroller: {error}", file=sys.stderr)
        return EXIT_USAGE
    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from vmcontroller.host.controller import HostController
    from vmcontroller.stomp.client import StompConfig, StompSession

    session = StompSession(
        TCP4ClientEndpoint(reactor, host_name, port, timeout=args.connect_timeout),
        StompConfig(login, passcode, vhost=args.vhost),
        clock=reactor,
    )
    # With a credentials file, messages are believed only from the VM's own login.
    host = HostController(session, reactor, vm_logins=vm_logins)
    outcome: list[int] = []

    @defer.inlineCallbacks
    def go() -> Any:
        try:
            host.start()
            connecting = host.when_connected(fail_after=3)
            connecting.addTimeout(args.connect_timeout, reactor)
            yield connecting
            status = yield action(host, reactor)
            outcome.append(int(status or 0))
        except Exception as error:  # expected failures: one line, no traceback
            message = getattr(error, "message", None) or str(error) or type(error).__name__
            print(f"vmcontroller: {message}", file=sys.stderr)
            outcome.append(EXIT_TOOL_ERROR)
        finally:
            try:
                yield host.stop()
            except Exception:
                pass
            reactor.stop()

    reactor.callWhenRunning(go)
    reactor.run()
    return outcome[0] if outcome else EXIT_TOOL_ERROR


# --- subcommands -----------------------------------------------------------------


def run_main(argv: list[str]) -> int:
    """``vmcontroller run VM [options] -- CMD...``"""
    parser = _admin_parser("run", "Run a command in a VM's agent, streaming its output.")
    parser.add_argument("vm", help="VM id")
    parser.add_argument("--shell", help="run this /bin/sh -c command instead of CMD")
    parser.add_argument("--cwd", help="working directory, relative to the agent's work dir")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="extra env")
    parser.add_argument("--timeout", type=float, help="kill the command after S seconds")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the agent")
    parser.epilog = "The command follows '--': vmcontroller run VM [options] -- CMD [ARG...]"
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    if bool(command) == bool(args.shell):
        parser.error("give either -- CMD [ARG...] or --shell 'COMMAND'")
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--env {item!r}: expected K=V")
        env[key] = value

    def on_output(stream: str, data: bytes) -> None:
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.buffer.write(data)
        out.flush()

    def action(host: Any, reactor: Any) -> Any:
        waiting = host.wait_for_hello(args.vm, args.wait)

        def started(_: Any) -> Any:
            return host.run(
                args.vm,
                argv=command or None,
                shell=args.shell,
                env=env or None,
                cwd=args.cwd,
                timeout=args.timeout,
                on_output=on_output,
            )

        def status(result: Any) -> int:
            if result.timed_out:
                print(f"vmcontroller: timed out after {args.timeout} s", file=sys.stderr)
            return result.code if result.code is not None else 128 + (result.signal or 0)

        return waiting.addCallback(started).addCallback(status)

    return _run_with_host(args, action)


def _transfer_main(argv: list[str], direction: str) -> int:
    verb = "into" if direction == "put" else "out of"
    parser = _admin_parser(direction, f"Copy a file {verb} a VM through the broker.")
    parser.add_argument("vm", help="VM id")
    parser.add_argument("source", help="local file" if direction == "put" else "guest path")
    parser.add_argument("destination", help="guest path" if direction == "put" else "local file")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the agent")
    args = parser.parse_args(argv)

    def action(host: Any, reactor: Any) -> Any:
        def go(_: Any) -> Any:
            if direction == "put":
                return host.put_file(args.vm, args.source, args.destination)
            return host.get_file(args.vm, args.source, args.destination)

        def report(result: Any) -> int:
            print(f"{result.size} bytes, sha256 {result.sha256}")
            return 0

        return host.wait_for_hello(args.vm, args.wait).addCallback(go).addCallback(report)

    return _run_with_host(args, action)


def put_main(argv: list[str]) -> int:
    """``vmcontroller put VM LOCAL_SRC GUEST_DST``"""
    return _transfer_main(argv, "put")


def get_main(argv: list[str]) -> int:
    """``vmcontroller get VM GUEST_SRC LOCAL_DST``"""
    return _transfer_main(argv, "get")


def ls_main(argv: list[str]) -> int:
    """``vmcontroller ls``: VMs heard on the presence topic within ``--wait`` seconds."""
    parser = _admin_parser("ls", "List the VMs whose agents are connected.")
    parser.add_argument(
        "--wait",
        type=float,
        default=11.0,
        help="seconds to listen for heartbeats (default %(default)s: one default interval)",
    )
    args = parser.parse_args(argv)

    def action(host: Any, reactor: Any) -> Any:
        from twisted.internet import task

        def show() -> int:
            vms = host.connected_vms()
            for status in vms:
                hello = status.hello
                where = hello.host_info.get("hostname", "?") if hello else "?"
                version = hello.version if hello else "?"
                print(f"{status.vm_id}\t{where}\tagent {version}\trunning {status.running}")
            if not vms:
                print("no connected VMs", file=sys.stderr)
            return 0

        return task.deferLater(reactor, args.wait, show)

    return _run_with_host(args, action)


if __name__ == "__main__":
    sys.exit(main())

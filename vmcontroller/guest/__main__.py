"""``python3 -m vmcontroller.guest``: start the guest agent (see :func:`main`)."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmcontroller agent",
        description="Run the vmcontroller guest agent until SIGTERM/SIGINT.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="agent settings (JSON); default: vmcontroller.config= on the kernel command "
        "line, else /run/cidata/agent.json",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages too")
    return parser


def _start_logging(verbose: bool) -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(LogLevel.debug if verbose else LogLevel.info)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, read the settings, run the agent; returns an exit status."""
    args = _parser().parse_args(argv)
    from vmcontroller.guest.config import ConfigError, find_config_path, load_config

    try:
        config = load_config(find_config_path(args.config))
    except ConfigError as error:
        print(f"vmcontroller agent: {error}", file=sys.stderr)
        return 2
    _start_logging(args.verbose)

    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from vmcontroller.guest.agent import Agent
    from vmcontroller.stomp.client import StompConfig, StompSession
    from vmcontroller.stomp.heap import freeze_startup_objects, reuse_large_buffers

    reuse_large_buffers()  # file chunks reuse heap pages instead of fresh mmaps

    session = StompSession(
        TCP4ClientEndpoint(reactor, config.broker_host, config.broker_port, timeout=10),
        StompConfig(
            config.login,
            config.passcode,
            vhost=config.vhost,
            heartbeat=config.heartbeat_interval,
        ),
        clock=reactor,
    )
    agent = Agent(config, session, reactor)
    stopping: list[Any] = []

    def shutdown(signum: int, frame: Any) -> None:
        if stopping:
            return
        stopping.append(signum)
        reactor.callFromThread(
            lambda: agent.stop(f"signal {signum}").addBoth(lambda _: reactor.stop())
        )

    reactor.callWhenRunning(agent.start)
    reactor.callWhenRunning(freeze_startup_objects)  # set up: spare the GC these objects
    reactor.callWhenRunning(signal.signal, signal.SIGTERM, shutdown)
    reactor.callWhenRunning(signal.signal, signal.SIGINT, shutdown)
    reactor.run(installSignalHandlers=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

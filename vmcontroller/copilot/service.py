"""Wiring for the two long-running processes: ``copilot serve`` and ``copilot pilot``.

Each builds its parts from an immutable config, runs the global reactor
and returns an exit status.  ``serve`` prints ``http http://HOST:PORT``
once listening (tests and scripts read that line).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from twisted.internet.endpoints import TCP4ClientEndpoint

from vmcontroller.stomp.client import StompConfig, StompSession

__all__ = ["PilotConfig", "ServiceConfig", "run_pilot", "serve"]


def _log_to_stderr() -> None:
    """Info and above to stderr; debug events (one per dispatched job) are dropped
    before they are formatted."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.info)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


@dataclass(frozen=True)
class ServiceConfig:
    store_url: str
    storage_dir: str
    http: tuple[str, int]
    broker: tuple[str, int]
    login: str
    passcode: str
    vhost: str = "/"
    public_url: str | None = None
    offer_ttl: float = 30.0
    lease_ttl: float = 60.0
    heartbeat_interval: float = 10.0
    sweep_interval: float = 1.0
    retry_after: float = 2.0
    max_output_bytes: int = 256 * 1024 * 1024
    #: Store calls in a worker thread: ``auto`` (MariaDB/PostgreSQL), ``on``, ``off``.
    store_thread: str = "auto"
    #: Releases of one job that spare its attempt (then a release counts as a failure).
    max_releases: int = 20


def serve(config: ServiceConfig) -> int:
    """Run the job manager until SIGTERM/SIGINT."""
    from twisted.internet import reactor
    from twisted.web.server import Site

    from vmcontroller.copilot.dispatch import Dispatcher
    from vmcontroller.copilot.executor import executor_for
    from vmcontroller.copilot.http_api import CopilotResource
    from vmcontroller.copilot.lease import LeaseTimes
    from vmcontroller.copilot.manager import JobManager
    from vmcontroller.copilot.storage import JobStorage
    from vmcontroller.copilot.store import StoreError, open_store

    _log_to_stderr()
    if config.heartbeat_interval * 2 >= config.lease_ttl:
        print("copilot: --lease-ttl must exceed two heartbeat intervals", file=sys.stderr)
        return 2
    try:
        store = open_store(config.store_url)
    except StoreError as error:
        print(f"copilot: {error}", file=sys.stderr)
        return 1
    storage = JobStorage(config.storage_dir, max_file_bytes=config.max_output_bytes)
    times = LeaseTimes(offer_ttl=config.offer_ttl, lease_ttl=config.lease_ttl)
    executor = executor_for(store.blocking, reactor, config.store_thread)
    print(f"copilot: store calls {'in a worker thread' if executor.threaded else 'inline'}",
          file=sys.stderr, flush=True)
    manager = JobManager(
        store, storage, reactor, times, config.sweep_interval, executor,
        max_releases=config.max_releases,
    )
    port = reactor.listenTCP(config.http[1], Site(CopilotResource(manager)), interface=config.http[0])
    address = port.getHost()
    url = config.public_url or f"http://{address.host}:{address.port}"
    session = StompSession(
        TCP4ClientEndpoint(reactor, *config.broker),
        StompConfig(config.login, config.passcode, vhost=config.vhost),
        reactor,
    )
    Dispatcher(
        manager, session, url, heartbeat_interval=config.heartbeat_interval,
        retry_after=config.retry_after,
    )
    session.start()
    manager.start()
    print(f"http {url}", flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", manager.stop)
    reactor.addSystemEventTrigger("before", "shutdown", session.stop)
    reactor.run()
    executor.stop()  # the store work in hand ends before its connection closes
    store.close()
    return 0


@dataclass(frozen=True)
class PilotConfig:
    broker: tuple[str, int]
    login: str
    passcode: str
    work_dir: str
    vhost: str = "/"
    cores: int = 1
    memory_mb: int = 1024
    max_run_time: float = 24 * 3600.0
    slice_seconds: float | None = None
    exit_when_idle: float | None = None
    request_timeout: float = 10.0


def _stop_reactor(reactor: object) -> None:
    """Stop the reactor unless a shutdown is already under way.

    On SIGTERM the reactor is stopping while the pilot gives its job back
    (a shutdown trigger waits for that), and the loop's end comes after:
    a second ``stop()`` would raise ReactorNotRunning into the pilot's log.
    ``reactor.running`` stays true until the shutdown's "during" phase, so
    it cannot tell; the error itself can.
    """
    from twisted.internet.error import ReactorNotRunning

    try:
        reactor.stop()  # type: ignore[attr-defined]
    except ReactorNotRunning:
        pass


def run_pilot(config: PilotConfig) -> int:
    """Run the pilot loop until the slice ends, it idles out, or SIGTERM."""
    from twisted.internet import reactor

    from vmcontroller.copilot.dispatch import agent_for_login
    from vmcontroller.copilot.pilot import Pilot
    from vmcontroller.copilot.spec import Capabilities

    _log_to_stderr()
    try:
        agent_id = agent_for_login(config.login)
    except ValueError as error:
        print(f"copilot: {error}", file=sys.stderr)
        return 2
    session = StompSession(
        TCP4ClientEndpoint(reactor, *config.broker),
        StompConfig(config.login, config.passcode, vhost=config.vhost),
        reactor,
    )
    caps = Capabilities(config.cores, config.memory_mb, config.max_run_time)
    until = None if config.slice_seconds is None else reactor.seconds() + config.slice_seconds
    pilot = Pilot(
        reactor, session, agent_id, os.path.abspath(config.work_dir), caps, until=until,
        request_timeout=config.request_timeout, exit_when_idle=config.exit_when_idle,
    )  # fmt: skip
    outcome: dict = {}

    def finished(summary: dict) -> None:
        outcome.update(summary)
        print(f"pilot finished: {summary['jobs_run']} jobs, {summary['cpu_time']:.2f} s CPU",
              flush=True)

    def failed(failure) -> None:
        print(f"copilot pilot: {failure.getErrorMessage()}", file=sys.stderr)

    session.start()
    done = pilot.run()
    done.addCallbacks(finished, failed)
    done.addBoth(lambda _: session.stop())
    done.addBoth(lambda _: _stop_reactor(reactor))
    reactor.addSystemEventTrigger("before", "shutdown", pilot.stop)
    reactor.run()
    return 0 if outcome else 1

"""Real brokers, real agent processes, and a host controller driven from tests.

* Brokers: the embedded one (``vmcontroller broker`` in a child process, on
  a port of its own) and RabbitMQ's STOMP plugin on 127.0.0.1:61613 in a
  private vhost with per-VM users (:mod:`tests.integration.rabbitmq`).
  Tests take the ``broker`` fixture and run once per broker.
* Agents: ``python -m vmcontroller.guest --config FILE`` child processes,
  one per test, each with its own VM id and work directory.
* The host controller runs in this process on a *private* reactor (not the
  global one, which other tests may want) in a background thread;
  :meth:`HostReactor.call` runs a function there and waits for its Deferred.

Every process started here is stopped by a finalizer, even when a test fails.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.epollreactor import EPollReactor

from tests.integration.rabbitmq import each_broker, rabbit_session  # noqa: F401 (fixture)
from vmcontroller.broker.credentials import generate_credentials, load_credentials
from vmcontroller.host.controller import HostController
from vmcontroller.stomp.client import StompConfig, StompSession

ROOT = Path(__file__).resolve().parents[3]


class HostReactor:
    """A private Twisted reactor running in a daemon thread."""

    def __init__(self) -> None:
        self.reactor = EPollReactor()
        self.thread = threading.Thread(
            target=self.reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
        )
        self.thread.start()

    def call(self, function: Callable[..., Any], *args: Any, timeout: float = 60, **kw: Any) -> Any:
        """Run ``function`` in the reactor thread; wait for its (Deferred) result."""
        results: queue.Queue[Any] = queue.Queue()

        def run() -> None:
            d = defer.maybeDeferred(function, *args, **kw)
            d.addBoth(results.put)

        self.reactor.callFromThread(run)
        try:
            outcome = results.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"{getattr(function, '__name__', function)} took over {timeout} s"
            ) from None
        if hasattr(outcome, "raiseException"):
            outcome.raiseException()
        return outcome

    def stop(self) -> None:
        self.reactor.callFromThread(self.reactor.stop)
        self.thread.join(10)


def _stop_process(process: subprocess.Popen, grace: float = 5.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.kill(process.pid, signal.SIGCONT)  # in case a test stopped it
        process.terminate()
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    except ProcessLookupError:
        pass


class EmbeddedBroker:
    """``vmcontroller broker`` as a child process; can be killed and restarted."""

    kind = "embedded"
    vhost = "/"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.credentials_path = workdir / "credentials.json"
        self.vm_ids = [f"e{n}-{uuid.uuid4().hex[:6]}" for n in range(24)]
        generate_credentials(self.vm_ids, self.credentials_path)
        self.credentials = load_credentials(self.credentials_path)
        self.process: subprocess.Popen | None = None
        self.port = 0
        self._free = list(self.vm_ids)
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vmcontroller.cli", "broker",
             "--listen", f"127.0.0.1:{self.port}", "--credentials", str(self.credentials_path)],
            stdout=subprocess.PIPE, stderr=open(self.workdir / "broker.log", "ab"), text=True,
            cwd=ROOT,
        )  # fmt: skip
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.process.kill()
            raise RuntimeError(f"embedded broker did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL: every queued message is lost, every connection dropped."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(5)

    def stop(self) -> None:
        if self.process is not None:
            _stop_process(self.process)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def host_login(self) -> tuple[str, str]:
        login = self.credentials.host_login()
        return login.login, login.passcode

    def new_vm(self) -> tuple[str, str, str]:
        """A fresh VM id with its login and passcode."""
        vm_id = self._free.pop()
        login = self.credentials.vm_login(vm_id)
        return vm_id, login.login, login.passcode

    def cleanup(self) -> None:
        self.stop()


@pytest.fixture(scope="session")
def host_reactor():
    hr = HostReactor()
    yield hr
    hr.stop()


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory):
    broker = EmbeddedBroker(tmp_path_factory.mktemp("embedded-broker"))
    yield broker
    broker.cleanup()


@pytest.fixture(scope="session")
def rabbitmq_broker():
    yield from rabbit_session(24, "e")


class AgentProcess:
    """One guest agent in a child process."""

    def __init__(
        self,
        broker: Any,
        workdir: Path,
        heartbeat: float,
        python: str = sys.executable,
        **settings: Any,
    ) -> None:
        self.vm_id, login, passcode = broker.new_vm()
        self.work_dir = workdir / f"work-{self.vm_id}"
        self.config_path = workdir / f"agent-{self.vm_id}.json"
        self.log_path = workdir / f"agent-{self.vm_id}.log"
        host, port = broker.address
        self.config_path.write_text(json.dumps({
            "broker_host": host, "broker_port": port, "login": login, "passcode": passcode,
            "vm_id": self.vm_id, "work_dir": str(self.work_dir),
            "heartbeat_interval": heartbeat, "vhost": broker.vhost, "kill_grace": 1.0,
            **settings,
        }))  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen(
            [python, "-m", "vmcontroller.guest", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "ab"), cwd=ROOT, env=env,
        )  # fmt: skip

    def stop(self) -> None:
        _stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Harness:
    """A host controller (in the private reactor) plus agents, for one test."""

    def __init__(self, hr: HostReactor, broker: Any, workdir: Path, request: Any) -> None:
        self.hr = hr
        self.broker = broker
        self.workdir = workdir
        self.agents: list[AgentProcess] = []
        self.hosts: list[HostController] = []
        request.addfinalizer(self.close)
        self.host = self.new_host()

    def new_host(self, **options: Any) -> HostController:
        login, passcode = self.broker.host_login()
        host_name, port = self.broker.address
        reactor = self.hr.reactor

        def build() -> HostController:
            session = StompSession(
                TCP4ClientEndpoint(reactor, host_name, port, timeout=5),
                StompConfig(login, passcode, vhost=self.broker.vhost, heartbeat=2.0),
                clock=reactor,
            )
            host = HostController(session, reactor, **options)
            host.start()
            return host

        host = self.hr.call(build)
        self.hr.call(host.when_connected, 5)
        self.hosts.append(host)
        return host

    def agent(
        self, heartbeat: float = 2.0, python: str = sys.executable, **settings: Any
    ) -> AgentProcess:
        agent = AgentProcess(self.broker, self.workdir, heartbeat, python, **settings)
        self.agents.append(agent)
        return agent

    def ready_agent(
        self,
        heartbeat: float = 2.0,
        timeout: float = 20,
        python: str = sys.executable,
        **settings: Any,
    ) -> AgentProcess:
        agent = self.agent(heartbeat, python, **settings)
        try:
            self.hr.call(self.host.wait_for_hello, agent.vm_id, timeout, timeout=timeout + 5)
        except Exception:
            raise AssertionError(f"agent never said hello; its log:\n{agent.log()}") from None
        return agent

    def call(self, function: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self.hr.call(function, *args, **kw)

    def close(self) -> None:
        for agent in self.agents:
            agent.stop()
        for host in self.hosts:
            try:
                self.hr.call(host.stop, timeout=10)
            except Exception:
                pass


@pytest.fixture
def harness(host_reactor, broker, tmp_path, request):
    return Harness(host_reactor, broker, tmp_path, request)



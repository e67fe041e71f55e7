"""Real brokers, real agent processes, and a host controller driven from tests.

* Brokers: the embedded one (``vmcontroller broker`` in a child process, on
  a port of its own) and RabbitMQ's STOMP plugin on 127.0.0.1:61613 with
  per-VM users made by rabbitmqctl.  Tests take the ``broker`` fixture and
  run once per broker.
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
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.epollreactor import EPollReactor

from vmcontroller.broker.credentials import generate_credentials, load_credentials
from vmcontroller.broker.rabbitmq import permissions_for
from vmcontroller.destinations import Role
from vmcontroller.host.controller import HostController
from vmcontroller.stomp.client import StompConfig, StompSession

ROOT = Path(__file__).resolve().parents[3]
RABBIT_STOMP = ("127.0.0.1", 61613)


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


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


class RabbitBroker:
    """RabbitMQ's STOMP plugin with a host user and a pool of per-VM users.

    Users are created with one ``rabbitmqctl eval`` and removed, with the
    queues they used, by two more: each
    rabbitmqctl run costs ~0.3 s, so one call per user would dominate.
    """

    kind = "rabbitmq"
    vhost = "/"

    def __init__(self, pool: int = 24) -> None:
        self.address = RABBIT_STOMP
        self.prefix = f"e-{uuid.uuid4().hex[:6]}"
        self.host_user = (f"{self.prefix}-host", uuid.uuid4().hex)
        self.vms = [
            (f"{self.prefix}-{n}", f"{self.prefix}-{n}-agent", uuid.uuid4().hex)
            for n in range(pool)
        ]
        self._free = list(self.vms)
        users = [self.host_user] + [(user, password) for _, user, password in self.vms]
        # The deployment's permission regexes (vmcontroller.broker.rabbitmq), so
        # these tests prove the agent and host need nothing more.
        permissions = [(self.host_user[0], permissions_for(Role.HOST))]
        permissions += [(user, permissions_for(Role.VM, vm_id)) for vm_id, user, _ in self.vms]

        def erl(text: str) -> str:
            return '<<"' + text.replace("\\", "\\\\") + '">>'

        calls = [
            f'rabbit_auth_backend_internal:add_user({erl(u)}, {erl(p)}, <<"test">>)'
            for u, p in users
        ]
        for user, perms in permissions:
            calls.append(
                f'rabbit_auth_backend_internal:set_permissions({erl(user)}, <<"/">>, '
                f'{erl(perms.configure)}, {erl(perms.write)}, {erl(perms.read)}, <<"test">>)'
            )
            calls.append(
                f'rabbit_auth_backend_internal:set_topic_permissions({erl(user)}, <<"/">>, '
                f'<<"amq.topic">>, {erl(perms.topic_write)}, {erl(perms.topic_read)}, '
                '<<"test">>)'
            )
        _rabbitmqctl("eval", "[" + ", ".join(calls) + "].")

    def host_login(self) -> tuple[str, str]:
        return self.host_user

    def new_vm(self) -> tuple[str, str, str]:
        return self._free.pop(0)

    def cleanup(self) -> None:
        prefix = f"vmc.{self.prefix}-".encode()
        _rabbitmqctl(
            "eval",
            '[rabbit_amqqueue:delete(Q, false, false, <<"test-cleanup">>) '
            '|| Q <- rabbit_amqqueue:list(<<"/">>), '
            f'binary:match(element(4, amqqueue:get_name(Q)), <<"{prefix.decode()}">>) '
            f"=:= {{0,{len(prefix)}}}].",
        )
        names = ", ".join(f'<<"{u}">>' for u in [self.host_user[0]] + [v[1] for v in self.vms])
        _rabbitmqctl(
            "eval",
            f'[rabbit_auth_backend_internal:delete_user(U, <<"test-cleanup">>) || U <- [{names}]].',
        )


def _rabbit_available() -> str | None:
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed (scripts/bootstrap.sh installs RabbitMQ)"
    try:
        socket.create_connection(RABBIT_STOMP, timeout=2).close()
    except OSError as error:
        return f"RabbitMQ STOMP is not listening on 127.0.0.1:61613 ({error})"
    return None


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
def rabbitmq_broker(tmp_path_factory):
    reason = _rabbit_available()
    if reason:
        pytest.skip(reason)
    broker = RabbitBroker()
    yield broker
    broker.cleanup()


@pytest.fixture(params=["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def broker(request):
    """Each test using this runs against both brokers."""
    return request.getfixturevalue(f"{request.param}_broker")


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


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (for conditions outside any reactor, like process exit)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)

"""Real brokers, a real job manager process and real pilot processes for Co-Pilot tests.

* Brokers (session-wide): the embedded one (``vmcontroller broker`` as a
  child process) and RabbitMQ's STOMP plugin on 127.0.0.1:61613 with a
  private vhost and per-VM users (:mod:`tests.integration.rabbitmq`), so
  other engineers' traffic on the shared RabbitMQ never meets ours.
* ``copilot serve`` and ``copilot pilot`` run as child processes; every
  process started here is stopped by a finalizer, even when a test fails.
  Jobs that a test orphans on purpose (by killing their pilot) write their
  pid into the test's directory and are killed from there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.rabbitmq import each_broker, rabbit_session  # noqa: F401 (fixture)
from tests.polling import wait_until as wait_for
from vmcontroller.broker.credentials import generate_credentials, load_credentials
from vmcontroller.copilot.client import CopilotClient
from vmcontroller.copilot.store import open_store

ROOT = Path(__file__).resolve().parents[3]
PYTHON = sys.executable
AGENTS = 6
#: Pilots of the full-scale test (RabbitMQ only).
SCALE_AGENTS = 20


def stop_process(process: subprocess.Popen, grace: float = 5.0) -> None:
    """Terminate one process we started (SIGCONT first, in case a test stopped it)."""
    if process.poll() is not None:
        return
    try:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    except ProcessLookupError:
        pass


def _drop_mariadb(name: str) -> None:
    import pymysql

    connection = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    connection.close()


def _drop_postgresql(name: str) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres",
                         autocommit=True) as connection:  # fmt: skip
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def backend_url(kind: str, tmp_path) -> tuple[str, object]:
    """A fresh store URL of ``kind`` and a function dropping it afterwards."""
    name = f"copilot_test_{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/{name}.db", lambda: None
    if kind == "mariadb":
        return f"mysql://root@127.0.0.1:3306/{name}", lambda: _drop_mariadb(name)
    return f"postgresql://postgres@127.0.0.1:5432/{name}", lambda: _drop_postgresql(name)


class EmbeddedBrokerProcess:
    kind = "embedded"
    vhost = "/"

    def __init__(self, workdir: Path) -> None:
        self.agent_ids = [f"cpe{n}-{uuid.uuid4().hex[:6]}" for n in range(AGENTS)]
        path = workdir / "credentials.json"
        generate_credentials(self.agent_ids, path)
        self.credentials = load_credentials(path)
        self.process = subprocess.Popen(
            [PYTHON, "-m", "vmcontroller.cli", "broker", "--listen", "127.0.0.1:0",
             "--credentials", str(path)],
            stdout=subprocess.PIPE, stderr=open(workdir / "broker.log", "ab"), text=True, cwd=ROOT,
        )  # fmt: skip
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.process.kill()
            raise RuntimeError(f"embedded broker did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def host_login(self) -> tuple[str, str]:
        login = self.credentials.host_login()
        return login.login, login.passcode

    def vm_login(self, index: int) -> tuple[str, str]:
        login = self.credentials.vm_login(self.agent_ids[index % AGENTS])
        return login.login, login.passcode

    def close(self) -> None:
        stop_process(self.process)


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory):
    broker = EmbeddedBrokerProcess(tmp_path_factory.mktemp("copilot-broker"))
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def rabbitmq_broker():
    """VM logins 0-3 serve the small tests, 4 to 4 + SCALE_AGENTS - 1 the scale test."""
    yield from rabbit_session(4 + SCALE_AGENTS, "cp")


class Deployment:
    """One job manager process plus the pilots a test starts, all stopped at the end."""

    def __init__(self, broker: Any, workdir: Path, store_url: str | None = None) -> None:
        self.broker = broker
        self.workdir = workdir
        self.shared = workdir / "shared"
        self.shared.mkdir()
        self.store_url = store_url or f"sqlite:///{workdir}/jobs.db"
        self.processes: list[subprocess.Popen] = []
        self.manager: subprocess.Popen | None = None
        self.url = ""
        store = open_store(self.store_url)
        self.tokens = {name: store.add_user(name) for name in ("alice", "bob", "carol")}
        store.close()

    def start_manager(self, *extra: str, port: int = 0) -> None:
        login, passcode = self.broker.host_login()
        self.manager = subprocess.Popen(
            [PYTHON, "-m", "vmcontroller.copilot.cli", "serve", "--store", self.store_url,
             "--storage", str(self.workdir / "storage"), "--http", f"127.0.0.1:{port}",
             "--broker", f"127.0.0.1:{self.broker.port}", "--login", login,
             f"--passcode={passcode}", "--vhost", self.broker.vhost,
             "--offer-ttl", "2", "--lease-ttl", "2", "--heartbeat-interval", "0.5",
             "--sweep-interval", "0.2", "--retry-after", "0.3", *extra],
            stdout=subprocess.PIPE, stderr=open(self.workdir / "manager.log", "ab"), text=True,
            cwd=ROOT,
        )  # fmt: skip
        self.processes.append(self.manager)
        line = self.manager.stdout.readline()
        if not line.startswith("http "):
            raise RuntimeError(f"copilot serve did not start: {line!r}; see manager.log")
        self.url = line.split()[1]

    def start_pilot(self, index: int, *extra: str) -> subprocess.Popen:
        login, passcode = self.broker.vm_login(index)
        log = open(self.workdir / f"pilot{index}.log", "ab")
        process = subprocess.Popen(
            [PYTHON, "-m", "vmcontroller.copilot.cli", "pilot",
             "--broker", f"127.0.0.1:{self.broker.port}", "--login", login,
             f"--passcode={passcode}", "--vhost", self.broker.vhost,
             "--work-dir", str(self.workdir / f"pilot{index}"), "--cores", "2",
             "--memory-mb", "1024", "--request-timeout", "1", *extra],
            stdout=log, stderr=log, cwd=ROOT,
        )  # fmt: skip
        self.processes.append(process)
        return process

    def pilot_log(self, index: int) -> str:
        return (self.workdir / f"pilot{index}.log").read_text(errors="replace")

    def agent_id(self, index: int) -> str:
        return self.broker.vm_login(index)[0][len("vm-"):]

    def client(self, user: str = "alice") -> CopilotClient:
        return CopilotClient(self.url, self.tokens[user])

    def cli(self, user: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(os.environ, COPILOT_SERVER=self.url, COPILOT_TOKEN=self.tokens.get(user, user))
        return subprocess.run(
            [PYTHON, "-m", "vmcontroller.copilot.cli", *args], env=env, capture_output=True,
            text=True, timeout=timeout, cwd=self.workdir,
        )  # fmt: skip

    def wait_state(self, job_id: str, states: tuple[str, ...], timeout: float = 30) -> dict:
        client = self.client()
        return wait_for(
            lambda: (view := client.job(job_id))["state"] in states and view,
            timeout, f"job {job_id} in {states}",
        )

    def close(self) -> None:
        # Pilots first (the manager answers their goodbyes), all at once: one by
        # one, 20 pilots each finishing their goodbye would take a minute.
        pilots = [p for p in self.processes if p is not self.manager and p.poll() is None]
        for process in pilots:
            try:
                os.kill(process.pid, signal.SIGCONT)
                process.terminate()
            except ProcessLookupError:
                pass
        for process in reversed(self.processes):
            stop_process(process)
        for pid_file in self.shared.glob("*.pid"):  # jobs orphaned on purpose
            try:
                os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (ValueError, ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def deployment_factory(tmp_path):
    """``factory(broker, store_url=None)`` -> a :class:`Deployment` closed after the test."""
    made: list[Deployment] = []

    def factory(broker: Any, store_url: str | None = None) -> Deployment:
        workdir = tmp_path / f"d{len(made)}"
        workdir.mkdir()
        made.append(Deployment(broker, workdir, store_url))
        return made[-1]

    yield factory
    for deployment in made:
        deployment.close()

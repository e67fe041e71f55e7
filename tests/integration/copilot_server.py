"""A real Co-Pilot server for tests: ``vmcontroller broker`` and ``copilot serve`` child processes.

Used by the pilot tests (a pilot on the host, and one in a QEMU guest run by the
real BOINC client). Every process is started here and stopped by :meth:`close`.
"""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
import uuid

from tests.conftest import ROOT
from vmcontroller.broker.credentials import generate_credentials, load_credentials
from vmcontroller.copilot.client import CopilotClient
from vmcontroller.copilot.store import open_store


def free_port() -> int:
    """A loopback port free now (``copilot serve`` must know its public URL before it listens)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM one process we started; SIGKILL if it has not exited after 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class CopilotServer:
    """``vmcontroller broker`` + ``copilot serve`` on loopback, one pilot login.

    :param public_host: how pilots reach this host: ``10.0.2.2`` from a QEMU
        guest under NAT, ``127.0.0.1`` for a pilot on the host.
    """

    def __init__(self, workdir: pathlib.Path, public_host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.public_host = public_host
        self.pilot_id = f"pvm{uuid.uuid4().hex[:8]}"
        credentials_path = workdir / "credentials.json"
        generate_credentials([self.pilot_id], credentials_path)
        credentials = load_credentials(credentials_path)
        self.host, self.vm = credentials.host_login(), credentials.vm_login(self.pilot_id)
        self.processes: list[subprocess.Popen] = []
        try:
            self._start_both(credentials_path)
        except BaseException:
            self.close()
            raise

    def _start_both(self, credentials_path: pathlib.Path) -> None:
        broker = self._start([sys.executable, "-m", "vmcontroller.cli", "broker", "--listen",
                              "127.0.0.1:0", "--credentials", str(credentials_path)], "broker")
        line = broker.stdout.readline()
        assert line.startswith("listening on "), line
        self.broker_port = int(line.rsplit(":", 1)[1])
        store_url = f"sqlite:///{self.workdir}/jobs.db"
        store = open_store(store_url)
        self.token = store.add_user("alice")
        store.close()
        http_port = free_port()
        manager = self._start([
            sys.executable, "-m", "vmcontroller.copilot", "serve", "--store", store_url,
            "--storage", str(self.workdir / "storage"), "--http", f"127.0.0.1:{http_port}",
            "--public-url", f"http://{self.public_host}:{http_port}",
            "--broker", f"127.0.0.1:{self.broker_port}", "--login", self.host.login,
            f"--passcode={self.host.passcode}", "--heartbeat-interval", "2", "--lease-ttl", "10",
            "--retry-after", "2"], "manager")
        line = manager.stdout.readline()
        assert line.startswith("http "), f"copilot serve did not start: {line!r}"
        self.client = CopilotClient(f"http://127.0.0.1:{http_port}", self.token)

    def _start(self, argv: list[str], name: str) -> subprocess.Popen:
        with open(self.workdir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                       stderr=log)
        self.processes.append(process)
        return process

    def pilot_settings(self) -> bytes:
        """A pilot's ``copilot.json``: its own login, at the broker as the pilot reaches it."""
        return json.dumps({"broker": f"{self.public_host}:{self.broker_port}", "vhost": "/",
                           "login": self.vm.login, "passcode": self.vm.passcode}).encode()

    def start_pilot(self, *args: str) -> subprocess.Popen:
        """``copilot pilot --config`` on the host (``public_host`` 127.0.0.1); output in pilot.log."""
        settings = self.workdir / "copilot.json"
        settings.write_bytes(self.pilot_settings())
        with open(self.workdir / "pilot.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "vmcontroller.copilot", "pilot", "--config", str(settings),
                 "--work-dir", str(self.workdir / "pilot"), "--request-timeout", "2", *args],
                stdout=log, stderr=log, cwd=ROOT)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process)

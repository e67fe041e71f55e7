"""The QEMU driver in the contract suite: real TCG guests booted from the appliance.

Session-wide: ONE appliance image (built once, cached across runs under
``.cache/appliance``), one embedded broker (engineer D's
``vmcontroller.broker.EmbeddedBroker``) on 127.0.0.1, one host controller that
hears the real guest agent's hello, one probe server. Every QEMU the driver
starts is killed at session end even when tests fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.endpoints import TCP4ClientEndpoint

from tests.integration.hypervisor.guest_probe import PROBE_SCRIPT, ProbeServer, prolog
from tests.integration.hypervisor.harness import DriverHarness
from vmwrapper.appliance.builder import BuildOptions, build, default_output
from vmwrapper.appliance.userdata import AgentConfig, write_config_disk
from vmwrapper.hypervisor import procinfo
from vmwrapper.hypervisor.base import VMSpec
from vmwrapper.hypervisor.qemu import QemuDriver

ROOT = Path(__file__).resolve().parents[3]
#: The guest sees the host's loopback as this address (QEMU user networking).
HOST_FROM_GUEST = "10.0.2.2"


def require_qemu() -> None:
    """Skip, naming what is missing, when this host cannot run the QEMU tests."""
    for tool in ("qemu-system-x86_64", "qemu-img", "debootstrap", "extlinux", "genisoimage"):
        if shutil.which(tool) is None:
            pytest.skip(f"QEMU tests need {tool} (scripts/bootstrap.sh installs it)")
    if os.geteuid() != 0:
        pytest.skip("building the appliance needs root")


@pytest.fixture(scope="session")
def appliance():
    """The appliance image, built once (about 70 s the first time, then cached)."""
    require_qemu()
    return build(BuildOptions(output=default_output(), formats=("qcow2",)))


def processes_in(vm_dir: Path) -> list[int]:
    """Live processes whose command line names a file in ``vm_dir``."""
    marker = str(vm_dir) + "/"
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and procinfo.is_running(int(entry.name)):
            if any(marker in arg for arg in procinfo.command_line(int(entry.name))):
                pids.append(int(entry.name))
    return pids


class QemuGuests:
    """GuestObserver over the real agent (hello through the broker) and the probe."""

    def __init__(self, host: Any, probes: ProbeServer, vm_ids: dict[str, str]) -> None:
        self.host = host
        self.probes = probes
        self.vm_ids = vm_ids

    def hello(self, name: str, timeout: float):
        return self.host.wait_for_hello(self.vm_ids[name], timeout).addCallback(repr)

    def next_sample(self, name: str, timeout: float):
        return self.probes.next_sample(name, timeout)


class QemuSession:
    """Broker, host controller and probe server shared by every QEMU test."""

    def __init__(self, reactor_thread: Any, appliance: Any, workdir: Path) -> None:
        from vmcontroller.broker.credentials import generate_credentials
        from vmcontroller.broker.server import EmbeddedBroker
        from vmcontroller.host.controller import HostController
        from vmcontroller.stomp.client import StompConfig, StompSession

        self.rt = reactor_thread
        self.appliance = appliance
        self.workdir = workdir
        self.free_ids = [f"hv{n:02d}" for n in range(40)]
        self.credentials = generate_credentials(self.free_ids)
        self.broker = EmbeddedBroker(credentials=self.credentials)
        _, self.broker_port = self.broker.start()
        self.vm_ids: dict[str, str] = {}
        host_login = self.credentials.host_login()
        reactor = reactor_thread.reactor

        def build_host() -> Any:
            session = StompSession(
                TCP4ClientEndpoint(reactor, "127.0.0.1", self.broker_port, timeout=5),
                StompConfig(host_login.login, host_login.passcode, heartbeat=5.0), clock=reactor)
            host = HostController(session, reactor)
            host.start()
            return host

        self.host = reactor_thread.call(build_host)
        reactor_thread.call(self.host.when_connected, 5)
        self.probes = ProbeServer(reactor)
        self.probe_port = reactor_thread.call(self.probes.listen)
        self.guests = QemuGuests(self.host, self.probes, self.vm_ids)
        self.drivers: list[QemuDriver] = []

    def new_driver(self, **options: Any) -> QemuDriver:
        options.setdefault("accel", "tcg")
        driver = self.rt.call(lambda: QemuDriver(self.rt.reactor, **options))
        self.drivers.append(driver)
        return driver

    def make_spec(self, vm_dir: Path, name: str, memory_mb: int = 512) -> VMSpec:
        """A spec booting the appliance with the real agent and the probe."""
        vm_id = self.vm_ids.setdefault(name, self.free_ids.pop())
        login = self.credentials.vm_login(vm_id)
        config = AgentConfig(broker_host=HOST_FROM_GUEST, broker_port=self.broker_port,
                             login=login.login, passcode=login.passcode, vm_id=vm_id,
                             work_dir="/var/lib/boinc-vm/work", heartbeat_interval=2.0)
        iso = write_config_disk(vm_dir.parent / f"{name}-cidata.iso", config,
                                files={"probe.py": PROBE_SCRIPT},
                                prolog=prolog(HOST_FROM_GUEST, self.probe_port, name))
        return VMSpec(name=name, base_image=self.appliance.qcow2, vm_dir=vm_dir,
                      memory_mb=memory_mb, config_disk=iso)

    def kill_vm_process(self, driver: QemuDriver, name: str) -> None:
        pid = self.rt.call(driver.pid, name)
        assert pid, f"VM {name} has no QEMU process to kill"
        os.kill(pid, signal.SIGKILL)

    def run_orphan(self, vm_dir: Path, name: str) -> None:
        """Start a VM from another wrapper process, then SIGKILL that process."""
        spec = self.make_spec(vm_dir, name)
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.hypervisor.orphan_run", "qemu",
             str(spec.base_image), str(vm_dir), name, str(spec.config_disk)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline()
            assert line.startswith("running"), f"orphan run failed: {line}{child.stderr.read()}"
        finally:
            child.kill()
            child.wait(10)

    def close(self) -> None:
        for driver in self.drivers:
            self.rt.call(driver.kill_all)
        self.rt.call(self.host.stop, timeout=10)
        self.broker.stop()


@pytest.fixture(scope="session")
def qemu_session(reactor_thread, appliance, tmp_path_factory):
    session = QemuSession(reactor_thread, appliance, tmp_path_factory.mktemp("qemu"))
    yield session
    session.close()


@pytest.fixture(scope="session")
def qemu_harness(qemu_session) -> DriverHarness:
    driver = qemu_session.new_driver()
    return DriverHarness(
        driver=driver,
        make_spec=qemu_session.make_spec,
        guest=qemu_session.guests,
        kill_vm_process=lambda name: qemu_session.kill_vm_process(driver, name),
        vm_processes=processes_in,
        run_orphan=qemu_session.run_orphan,
        boot_timeout=120.0,
    )


#: Fixtures the contract conftest imports from this module.
FIXTURES = ["appliance", "qemu_session", "qemu_harness"]

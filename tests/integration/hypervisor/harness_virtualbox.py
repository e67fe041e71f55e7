"""The VirtualBox driver in the contract suite, against the fake ``VBoxManage``.

VirtualBox cannot run here; ``tests/fakes/vboxmanage`` keeps real state on disk
and runs each VM as a real process (see its docstring). The "guest" of a fake VM
is that process: its counter and clock live in ``fake-vm-ram.json`` in the VM
folder (its memory), which snapshots and saved states copy, so the suite's
pause, checkpoint and restore checks observe real effects.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet import defer, task

from tests.fakes.vboxmanage import FAKE_VBOXMANAGE, fake_vm_pids, kill_fake_vms, write_qcow2
from tests.integration.hypervisor.harness import DriverHarness, GuestSample
from vmwrapper.hypervisor.base import VMSpec
from vmwrapper.hypervisor.virtualbox import VirtualBoxDriver, vbox_vm_name

POLL = 0.05
ROOT = Path(__file__).resolve().parents[3]


class FakeGuestObserver:
    """Reads the fake guests' memory files (``GuestObserver`` for the fake VMs)."""

    def __init__(self, reactor, vm_dirs: dict[str, Path]) -> None:
        self.reactor = reactor
        self.vm_dirs = vm_dirs

    def _ram(self, name: str) -> dict | None:
        path = self.vm_dirs[name] / vbox_vm_name(name) / "fake-vm-ram.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _alive(self, ram: dict | None) -> bool:
        if not ram:
            return False
        try:
            state = Path(f"/proc/{ram['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")

    @defer.inlineCallbacks
    def _poll(self, check, timeout: float, what: str):
        deadline = self.reactor.seconds() + timeout
        while True:
            value = check()
            if value is not None:
                return value
            if self.reactor.seconds() > deadline:
                raise TimeoutError(f"{what} within {timeout} s")
            yield task.deferLater(self.reactor, POLL, lambda: None)

    def hello(self, name: str, timeout: float):
        def check():
            ram = self._ram(name)
            return f"hello from fake VirtualBox guest {name}" if self._alive(ram) else None

        return self._poll(check, timeout, f"no hello from {name}")

    def next_sample(self, name: str, timeout: float):
        before = self._ram(name) or {}

        def check():
            ram = self._ram(name)
            if not self._alive(ram):
                return None
            if (ram["ticks"], ram["pid"]) == (before.get("ticks"), before.get("pid")):
                return None
            return GuestSample(ram["ticks"], ram["guest_clock"], self.reactor.seconds())

        return self._poll(check, timeout, f"no probe report from {name}")


@pytest.fixture(scope="session")
def virtualbox_harness(reactor_thread, tmp_path_factory) -> DriverHarness:
    """The VirtualBox driver on the fake VBoxManage, with its own VBOX_USER_HOME."""
    root = tmp_path_factory.mktemp("vbox")
    home = root / "home"
    base = write_qcow2(root / "base.qcow2")
    vm_dirs: dict[str, Path] = {}
    driver = VirtualBoxDriver(reactor_thread.reactor, vboxmanage=str(FAKE_VBOXMANAGE),
                              vbox_user_home=home)

    def make_spec(vm_dir: Path, name: str) -> VMSpec:
        vm_dirs[name] = vm_dir
        return VMSpec(name=name, base_image=base, vm_dir=vm_dir, memory_mb=128)

    def run_orphan(vm_dir: Path, name: str) -> None:
        """Create and start ``name`` from another process, then SIGKILL that process."""
        vm_dirs[name] = vm_dir
        wrapper = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.hypervisor.orphan_run_virtualbox",
             str(home), str(base), str(vm_dir), name],
            stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            line = wrapper.stdout.readline()
            assert line.startswith("running"), f"orphan run failed: {line!r}"
        finally:
            wrapper.kill()
            wrapper.wait(10)
            wrapper.stdout.close()

    def kill_vm_process(name: str) -> None:
        for pid in fake_vm_pids(vm_dirs[name]):
            os.kill(pid, signal.SIGKILL)

    harness = DriverHarness(
        driver=driver, make_spec=make_spec,
        guest=FakeGuestObserver(reactor_thread.reactor, vm_dirs),
        kill_vm_process=kill_vm_process, vm_processes=fake_vm_pids, run_orphan=run_orphan,
        boot_timeout=10.0)
    yield harness
    kill_fake_vms(root)

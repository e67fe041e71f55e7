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
from pathlib import Path

import pytest
from twisted.internet import defer, task

from tests.fakes.vboxmanage import FAKE_VBOXMANAGE, fake_vm_pids, kill_fake_vms
from tests.integration.hypervisor.harness import DriverHarness, GuestSample
from vmwrapper.hypervisor.base import VMSpec
from vmwrapper.hypervisor.virtualbox import VirtualBoxDriver, vbox_vm_name

POLL = 0.05


def write_fake_qcow2(path: Path, virtual_size: int = 1 << 30) -> Path:
    """A file with a qcow2 header (magic, version 3, virtual size): enough for the
    fake to open it as a disk image; the fake never reads the data."""
    header = bytearray(512)
    header[0:4] = b"QFI\xfb"
    header[4:8] = (3).to_bytes(4, "big")
    header[24:32] = virtual_size.to_bytes(8, "big")
    path.write_bytes(bytes(header))
    return path


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
    base = write_fake_qcow2(root / "base.qcow2")
    vm_dirs: dict[str, Path] = {}
    driver = VirtualBoxDriver(reactor_thread.reactor, vboxmanage=str(FAKE_VBOXMANAGE),
                              vbox_user_home=home)

    def make_spec(vm_dir: Path, name: str) -> VMSpec:
        vm_dirs[name] = vm_dir
        return VMSpec(name=name, base_image=base, vm_dir=vm_dir, memory_mb=128)

    def kill_vm_process(name: str) -> None:
        for pid in fake_vm_pids(vm_dirs[name]):
            os.kill(pid, signal.SIGKILL)

    harness = DriverHarness(
        driver=driver, make_spec=make_spec,
        guest=FakeGuestObserver(reactor_thread.reactor, vm_dirs),
        kill_vm_process=kill_vm_process, vm_processes=fake_vm_pids, boot_timeout=10.0)
    yield harness
    kill_fake_vms(root)

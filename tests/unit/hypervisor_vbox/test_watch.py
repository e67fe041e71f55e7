"""Noticing that the VM process ended, on the /proc fallback path, driven by a Clock.

(With a real reactor the driver waits on a pidfd instead; the integration tests
cover that path with real processes.)
"""

from __future__ import annotations

import subprocess

import pytest
from twisted.internet.task import Clock

from tests.unit.hypervisor_vbox.test_commands import create, make_driver
from vmwrapper.hypervisor import procinfo
from vmwrapper.hypervisor.base import VMSpec, VMState


@pytest.fixture
def child():
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def spec(tmp_path):
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"QFI\xfb" + bytes(508))
    return VMSpec(name="w", base_image=base, vm_dir=tmp_path / "vm")


@pytest.mark.parametrize(("vbox_state", "expected"), [("aborted", VMState.CRASHED),
                                                      ("poweroff", VMState.STOPPED),
                                                      ("running", VMState.CRASHED)])
def test_process_end_fires_when_stopped_after_one_interval(spec, child, vbox_state, expected):
    driver = make_driver()
    driver.clock = driver.reactor = Clock()
    create(driver, spec)
    vm = driver._vms[spec.name]
    vm.pid, vm.pid_start = child.pid, procinfo.start_ticks(child.pid)
    driver._watch_exit(vm)
    assert vm.exit_watch is None and vm.watcher.running  # a Clock has no addReader
    fired = []
    driver.when_stopped(spec.name).addCallback(fired.append)
    driver.reactor.advance(driver.watch_interval * 3)
    assert fired == []
    child.kill()
    child.wait()
    driver.runner.answers["showvminfo"] = (0, f'VMState="{vbox_state}"\n', "")
    driver.reactor.advance(driver.watch_interval)
    # A gone process is never "alive", whatever VBoxSVC still says.
    assert fired == [expected]
    assert not vm.watcher.running


def test_reused_pid_is_not_our_process(spec, child):
    driver = make_driver()
    create(driver, spec)
    vm = driver._vms[spec.name]
    vm.pid, vm.pid_start = child.pid, procinfo.start_ticks(child.pid) + 1
    assert not vm.process_alive()
    assert driver.cpu_time(spec.name).result == 0.0
    assert driver.memory_use(spec.name).result == 0
    vm.pid_start -= 1
    assert vm.process_alive()
    assert driver.memory_use(spec.name).result > 0

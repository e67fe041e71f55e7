"""The driver contract: every hypervisor driver must pass these, unchanged.

Written against ``vmwrapper.hypervisor.base`` only; ``conftest.py`` runs them
once per driver (real QEMU guests for ``qemu``). Every VM a test creates is
destroyed in a finalizer, so a failing test leaves no process behind.
"""

from __future__ import annotations

import dataclasses
import socket
import time
import uuid

import pytest

from tests.conftest import ARTIFACTS
from vmwrapper.hypervisor.base import Checkpoint, PortForward, VMState
from vmwrapper.hypervisor.errors import (
    CheckpointMissing,
    HypervisorError,
    ImageCorrupt,
    ImageMissing,
    PortInUse,
    VMExists,
    VMNotFound,
    VMStateError,
)


@pytest.fixture
def vm(harness, reactor_thread, tmp_path, request):
    """A created (not started) VM; its console log is kept under test-artifacts/ and
    it is destroyed after the test whatever happens."""
    name = f"ct-{uuid.uuid4().hex[:8]}"
    spec = harness.make_spec(tmp_path / "vm", name)

    def finish() -> None:
        try:
            try:  # the test may have destroyed it already
                text = reactor_thread.call(harness.driver.console_log, name, timeout=10)
            except HypervisorError:
                text = ""
            if text:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                (ARTIFACTS / f"hypervisor-{request.node.name}.console.log").write_text(text)
        finally:
            reactor_thread.call(harness.driver.destroy, name, timeout=60)

    request.addfinalizer(finish)
    reactor_thread.call(harness.driver.create, spec)
    return spec


def _call(rt, function, *args, timeout=60.0):
    return rt.call(function, *args, timeout=timeout)


def _need(harness, flag: str) -> None:
    if not getattr(harness.driver.capabilities, flag):
        pytest.skip(f"{harness.driver.name} driver does not support {flag}")


def _need_guest(harness) -> None:
    if harness.guest is None:
        pytest.skip(f"{harness.driver.name} harness cannot observe its guests")


def _boot(harness, rt, name: str) -> None:
    _call(rt, harness.driver.start, name)
    assert _call(rt, harness.driver.state, name) is VMState.RUNNING
    if harness.guest is not None:
        hello = rt.call(harness.guest.hello, name, harness.boot_timeout,
                        timeout=harness.boot_timeout + 10)
        assert hello


def _sample(harness, rt, name: str, timeout: float = 30.0):
    return rt.call(harness.guest.next_sample, name, timeout, timeout=timeout + 5)


def _assert_gone(harness, rt, spec) -> None:
    assert _call(rt, harness.driver.state, spec.name) is VMState.ABSENT
    assert harness.vm_processes(spec.vm_dir) == []
    leftovers = sorted(p.name for p in spec.vm_dir.iterdir()) if spec.vm_dir.exists() else []
    assert leftovers == [], f"destroy left files behind: {leftovers}"
    assert spec.base_image.exists(), "destroy must never remove the base image"


def test_lifecycle_boot_pause_resume_power_off_destroy(harness, reactor_thread, vm):
    rt, driver, name = reactor_thread, harness.driver, vm.name
    assert _call(rt, driver.state, name) is VMState.STOPPED
    base_mtime = vm.base_image.stat().st_mtime_ns
    _boot(harness, rt, name)

    if harness.guest is not None and driver.capabilities.pause:
        before = _sample(harness, rt, name)
        _call(rt, driver.pause, name)
        assert _call(rt, driver.state, name) is VMState.PAUSED
        _call(rt, driver.pause, name)  # idempotent
        paused_at = time.monotonic()
        time.sleep(2.0)
        _call(rt, driver.resume, name)
        host_gap = time.monotonic() - paused_at
        after = _sample(harness, rt, name)
        assert _call(rt, driver.state, name) is VMState.RUNNING
        guest_gap = after.guest_clock - before.guest_clock
        assert after.counter > before.counter, "the guest process lost its state"
        assert guest_gap < host_gap - 1.0, (
            f"guest clock ran while paused: guest {guest_gap:.2f} s vs host {host_gap:.2f} s")

    if driver.capabilities.cpu_time:
        assert _call(rt, driver.cpu_time, name) > 0
    if driver.capabilities.memory_use:
        assert _call(rt, driver.memory_use, name) > 1024 * 1024
    if driver.capabilities.console_log:
        assert _call(rt, driver.console_log, name).strip()

    waiter = []  # asked for before the stop: must fire when it happens
    rt.call(lambda: waiter.append(driver.when_stopped(name)))
    grace = 30.0 if driver.capabilities.graceful_shutdown else 0.0
    _call(rt, driver.power_off, name, grace, timeout=grace + 60)
    assert _call(rt, driver.state, name) is VMState.STOPPED
    assert rt.call(lambda: waiter[0], timeout=5) is VMState.STOPPED
    assert harness.vm_processes(vm.vm_dir) == []
    assert vm.base_image.stat().st_mtime_ns == base_mtime, "the base image was written"

    _call(rt, driver.destroy, name)
    _assert_gone(harness, rt, vm)
    _call(rt, driver.destroy, name)  # destroying an absent VM is a no-op


def test_checkpoint_survives_kill_and_restore(harness, reactor_thread, vm):
    _need(harness, "checkpoint")
    _need(harness, "checkpoint_survives_crash")
    _need_guest(harness)
    rt, driver, name = reactor_thread, harness.driver, vm.name
    assert _call(rt, driver.has_checkpoint, name) is False
    _boot(harness, rt, name)
    _sample(harness, rt, name)
    first = _call(rt, driver.save_checkpoint, name, timeout=150)
    assert isinstance(first, Checkpoint)
    before = _sample(harness, rt, name)
    checkpoint = _call(rt, driver.save_checkpoint, name, timeout=150)  # replaces the first
    assert checkpoint.name != first.name
    assert _call(rt, driver.state, name) is VMState.RUNNING
    assert _call(rt, driver.has_checkpoint, name) is True
    time.sleep(2.0)
    last = _sample(harness, rt, name)
    assert last.counter > before.counter + 5

    harness.kill_vm_process(name)
    deadline = time.monotonic() + 10
    while _call(rt, driver.state, name) is not VMState.CRASHED:
        assert time.monotonic() < deadline, "the driver did not notice its VM died"
        time.sleep(0.05)
    assert harness.vm_processes(vm.vm_dir) == []

    _call(rt, driver.restore_checkpoint, name, timeout=150)
    assert _call(rt, driver.state, name) is VMState.RUNNING
    resumed = _sample(harness, rt, name, timeout=60)
    assert before.counter <= resumed.counter < last.counter, (
        f"counter {resumed.counter} should continue from the checkpoint "
        f"(between {before.counter} and {last.counter})")
    _call(rt, driver.destroy, name)
    _assert_gone(harness, rt, vm)


def test_cleanup_stale_removes_vm_of_killed_run(harness, reactor_thread, tmp_path):
    rt, driver = reactor_thread, harness.driver
    vm_dir = tmp_path / "stale"
    name = f"st-{uuid.uuid4().hex[:8]}"
    harness.run_orphan(vm_dir, name)
    assert harness.vm_processes(vm_dir), "the orphaned VM should still be running"
    cleaned = _call(rt, driver.cleanup_stale, vm_dir, False)
    assert cleaned == [name]
    assert harness.vm_processes(vm_dir) == []
    left = sorted(p.name for p in vm_dir.iterdir()) if vm_dir.exists() else []
    assert left == [], f"cleanup_stale left files: {left}"
    assert _call(rt, driver.cleanup_stale, vm_dir, False) == []  # nothing left to do


def test_state_errors(harness, reactor_thread, vm):
    rt, driver, name = reactor_thread, harness.driver, vm.name
    with pytest.raises(VMStateError):
        _call(rt, driver.pause, name)
    with pytest.raises(VMStateError):
        _call(rt, driver.save_checkpoint, name)
    if driver.capabilities.checkpoint:
        with pytest.raises(CheckpointMissing):
            _call(rt, driver.restore_checkpoint, name)
    with pytest.raises(VMExists):
        _call(rt, driver.create, vm)
    with pytest.raises(VMNotFound):
        _call(rt, driver.start, "no-such-vm")
    assert _call(rt, driver.state, "no-such-vm") is VMState.ABSENT
    _call(rt, driver.power_off, name)  # stopping a stopped VM is a no-op
    assert _call(rt, driver.state, name) is VMState.STOPPED


def test_missing_image(harness, reactor_thread, tmp_path):
    spec = harness.make_spec(tmp_path / "vm", f"mi-{uuid.uuid4().hex[:8]}")
    spec = dataclasses.replace(spec, base_image=tmp_path / "nowhere.qcow2")
    with pytest.raises(ImageMissing) as info:
        _call(reactor_thread, harness.driver.create, spec)
    assert "nowhere.qcow2" in str(info.value)
    assert _call(reactor_thread, harness.driver.state, spec.name) is VMState.ABSENT
    assert not (spec.vm_dir.exists() and any(spec.vm_dir.iterdir()))


def test_corrupt_image(harness, reactor_thread, tmp_path):
    spec = harness.make_spec(tmp_path / "vm", f"ci-{uuid.uuid4().hex[:8]}")
    broken = tmp_path / "broken.img"
    with open(spec.base_image, "rb") as source:  # a real image cut short
        broken.write_bytes(source.read(64 * 1024))
    spec = dataclasses.replace(spec, base_image=broken)
    with pytest.raises(ImageCorrupt):
        _call(reactor_thread, harness.driver.create, spec)
    assert _call(reactor_thread, harness.driver.state, spec.name) is VMState.ABSENT
    assert not (spec.vm_dir.exists() and any(spec.vm_dir.iterdir()))


def test_port_already_taken(harness, reactor_thread, tmp_path, request):
    _need(harness, "port_forward")
    rt, driver = reactor_thread, harness.driver
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    request.addfinalizer(taken.close)
    spec = harness.make_spec(tmp_path / "vm", f"pt-{uuid.uuid4().hex[:8]}")
    spec = dataclasses.replace(
        spec, port_forwards=(PortForward(taken.getsockname()[1], 8080),))
    request.addfinalizer(lambda: rt.call(driver.destroy, spec.name, timeout=60))
    _call(rt, driver.create, spec)
    with pytest.raises(PortInUse) as info:
        _call(rt, driver.start, spec.name)
    assert str(taken.getsockname()[1]) in str(info.value)
    assert _call(rt, driver.state, spec.name) is VMState.STOPPED
    assert harness.vm_processes(spec.vm_dir) == []

"""The VirtualBox driver against the fake VBoxManage: what the contract suite
does not cover (VirtualBox failure modes, versions, checkpoint files, stale VMs).

Every test has its own VBOX_USER_HOME and slot; VM processes are real and are
killed by the fixture whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.fakes.vboxmanage import FAKE_VBOXMANAGE, fake_vm_pids, kill_fake_vms, write_qcow2
from tests.integration.hypervisor.harness_virtualbox import FakeGuestObserver
from vmwrapper.hypervisor import errors
from vmwrapper.hypervisor.base import PortForward, VMSpec, VMState
from vmwrapper.hypervisor.virtualbox import VirtualBoxDriver, vbox_vm_name


class Setup:
    def __init__(self, reactor_thread, root: Path) -> None:
        self.call = reactor_thread.call
        self.reactor = reactor_thread.reactor
        self.root = root
        self.home = root / "home"
        self.home.mkdir()
        self.base = write_qcow2(root / "base.qcow2")
        self.vm_dirs: dict[str, Path] = {}
        self.guest = FakeGuestObserver(self.reactor, self.vm_dirs)

    def driver(self, **kwargs) -> VirtualBoxDriver:
        kwargs.setdefault("retry_delay", 0.05)
        return VirtualBoxDriver(self.reactor, vboxmanage=str(FAKE_VBOXMANAGE),
                                vbox_user_home=self.home, use_api=False, **kwargs)

    def spec(self, name: str = "wu_1_0", **kwargs) -> VMSpec:
        vm_dir = self.root / "slot" / name
        self.vm_dirs[name] = vm_dir
        return VMSpec(name=name, base_image=kwargs.pop("base_image", self.base), vm_dir=vm_dir,
                      memory_mb=128, **kwargs)

    def faults(self, *rules: dict) -> None:
        (self.home / "fake-faults.json").write_text(json.dumps(list(rules)))

    def calls(self) -> list[dict]:
        path = self.home / "fake-calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def registered(self) -> str:
        return subprocess.run([str(FAKE_VBOXMANAGE), "-q", "list", "vms"], capture_output=True,
                              text=True, env={"VBOX_USER_HOME": str(self.home)},
                              check=True).stdout


@pytest.fixture
def vbox(reactor_thread, tmp_path):
    setup = Setup(reactor_thread, tmp_path)
    yield setup
    kill_fake_vms(tmp_path)


def commands_running(fragment: str) -> list[int]:
    """Pids of live processes whose command line contains ``fragment``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError, UnicodeDecodeError):
            continue
        if fragment in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_checkpoints_keep_one_snapshot_and_restore_continues(vbox):
    driver = vbox.driver()
    spec = vbox.spec()
    base_digest = hashlib.sha256(vbox.base.read_bytes()).hexdigest()
    vbox.call(driver.create, spec)
    vbox.call(driver.start, spec.name)
    vbox.call(vbox.guest.hello, spec.name, 10)
    for _ in range(3):
        checkpoint = vbox.call(driver.save_checkpoint, spec.name)
    snapshots = spec.vm_dir / vbox_vm_name(spec.name) / "Snapshots"
    # LHC@home's full disks: exactly one snapshot (one saved state, one diff image).
    assert len(list(snapshots.glob("*.sav"))) == 1
    assert len(list(snapshots.glob("*.vdi"))) == 1
    assert checkpoint.size_bytes > 0
    saved = json.loads(next(snapshots.glob("*.sav")).read_text().strip())
    assert vbox.call(driver.state, spec.name) is VMState.RUNNING
    stopped = []
    vbox.call(lambda: driver.when_stopped(spec.name).addCallback(stopped.append) and None)
    for pid in fake_vm_pids(spec.vm_dir):
        os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stopped == [VMState.CRASHED]
    assert vbox.call(driver.state, spec.name) is VMState.CRASHED
    vbox.call(driver.restore_checkpoint, spec.name)
    sample = vbox.call(vbox.guest.next_sample, spec.name, 5)
    assert saved["ticks"] < sample.counter < saved["ticks"] + 20
    assert vbox.call(driver.cpu_time, spec.name) > 0.0  # the fake guest boots with 0.05 s CPU
    assert vbox.call(driver.memory_use, spec.name) > 1 << 20
    assert fake_vm_pids(spec.vm_dir) == [driver.pid(spec.name)]  # BOINC's <other_pid>
    assert "counter at" in vbox.call(driver.console_log, spec.name)
    vbox.call(driver.destroy, spec.name)
    assert files_under(spec.vm_dir) == []
    assert fake_vm_pids(vbox.root) == []
    assert vbox.registered() == ""
    assert hashlib.sha256(vbox.base.read_bytes()).hexdigest() == base_digest
    assert vbox.call(driver.state, spec.name) is VMState.ABSENT
    vbox.call(driver.destroy, spec.name)  # idempotent


def test_session_lock_is_retried_with_backoff(vbox):
    driver = vbox.driver(retry_delay=0.1)
    spec = vbox.spec()
    vbox.call(driver.create, spec)
    vbox.call(driver.start, spec.name)
    vbox.faults({"command": "controlvm", "contains": "pause", "fault": "session_locked",
                 "times": 3})
    vbox.call(driver.pause, spec.name)
    assert vbox.call(driver.state, spec.name) is VMState.PAUSED
    pauses = [c for c in vbox.calls() if c["argv"][1:2] == ["controlvm"] and "pause" in c["argv"]]
    assert [c["status"] for c in pauses] == [1, 1, 1, 0]
    gaps = [b["time"] - a["time"] for a, b in zip(pauses, pauses[1:], strict=False)]
    assert gaps[2] > gaps[0] + 0.1  # 0.1, 0.2, 0.4 s: the pause doubles
    vbox.call(driver.destroy, spec.name)


def test_lock_held_through_all_retries_is_a_typed_error(vbox):
    driver = vbox.driver(retry_delay=0.01)
    spec = vbox.spec()
    vbox.call(driver.create, spec)
    vbox.faults({"command": "startvm", "fault": "session_locked"})
    with pytest.raises(errors.HypervisorFailure, match="locked") as caught:
        vbox.call(driver.start, spec.name)
    assert caught.value.transient
    assert "Another VirtualBox management application" in str(caught.value)
    vbox.faults()
    vbox.call(driver.destroy, spec.name)


def test_stuck_vboxmanage_is_killed_and_reported(vbox):
    driver = vbox.driver(command_timeout=1.0)
    spec = vbox.spec()
    vbox.call(driver.create, spec)
    vbox.call(driver.start, spec.name)
    vbox.faults({"command": "controlvm", "contains": "pause", "fault": "hang", "times": 1})
    started = time.monotonic()
    with pytest.raises(errors.OperationTimeout, match="did not answer within 1 s"):
        vbox.call(driver.pause, spec.name)
    assert time.monotonic() - started < 5
    stuck = f"VBoxManage -q controlvm {vbox_vm_name(spec.name)}"
    deadline = time.monotonic() + 5  # SIGKILLed at the deadline; reaped soon after
    while commands_running(stuck) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert commands_running(stuck) == []
    assert vbox.call(driver.state, spec.name) is VMState.RUNNING
    vbox.call(driver.destroy, spec.name)


@pytest.mark.parametrize(("verr", "error_class", "text"), [
    ("VERR_VMX_MSR_ALL_VMX_DISABLED", errors.NoVirtualization, "ERR_CPU_VM_EXTENSIONS_DISABLED"),
    ("VERR_SVM_DISABLED", errors.NoVirtualization, "ERR_CPU_VM_EXTENSIONS_DISABLED"),
    ("VERR_VMX_IN_VMX_ROOT_MODE", errors.HypervisorFailure, "another hypervisor"),
    ("VERR_NO_MEMORY", errors.HypervisorFailure, "out of memory"),
])
def test_power_up_failures_are_typed_and_leave_no_process(vbox, verr, error_class, text):
    driver = vbox.driver()
    spec = vbox.spec()
    vbox.call(driver.create, spec)
    vbox.faults({"command": "startvm", "fault": "start_error", "verr": verr, "times": 1})
    with pytest.raises(error_class, match=text):
        vbox.call(driver.start, spec.name)
    assert vbox.call(driver.state, spec.name) is VMState.STOPPED
    assert fake_vm_pids(vbox.root) == []
    vbox.call(driver.destroy, spec.name)


def test_forwarded_port_taken_is_port_in_use_then_works_when_free(vbox):
    driver = vbox.driver()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = vbox.spec(port_forwards=(PortForward(port, 22),))
        vbox.call(driver.create, spec)
        with pytest.raises(errors.PortInUse, match=str(port)):
            vbox.call(driver.start, spec.name)
        assert vbox.call(driver.state, spec.name) is VMState.STOPPED
    vbox.call(driver.start, spec.name)
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the VM's NAT engine (the fake VM process) listens on it
    vbox.call(driver.destroy, spec.name)


def test_bad_images_are_typed_and_leave_nothing(vbox):
    driver = vbox.driver()
    junk = vbox.root / "junk.qcow2"
    junk.write_bytes(bytes(range(256)) * 16)
    spec = vbox.spec("corrupt", base_image=junk)
    with pytest.raises(errors.ImageCorrupt, match="junk.qcow2"):
        vbox.call(driver.create, spec)
    assert files_under(spec.vm_dir) == []
    assert vbox.registered() == ""
    assert vbox.call(driver.state, "corrupt") is VMState.ABSENT
    with pytest.raises(errors.ImageMissing, match="gone.qcow2"):
        vbox.call(driver.create, vbox.spec("missing", base_image=vbox.root / "gone.qcow2"))


def test_create_failing_half_way_unregisters_and_deletes(vbox):
    driver = vbox.driver()
    spec = vbox.spec()
    vbox.faults({"command": "storagectl", "fault": "invalid_vm_state", "times": 1})
    with pytest.raises(errors.VMStateError):
        vbox.call(driver.create, spec)
    assert vbox.registered() == ""
    assert files_under(spec.vm_dir) == []
    vbox.call(driver.create, spec)  # and a retry works
    vbox.call(driver.destroy, spec.name)


def test_no_space_for_the_overlay_is_out_of_disk(vbox):
    small = vbox.root / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        driver = vbox.driver()
        big = write_qcow2(vbox.root / "big.qcow2", virtual_size=1 << 36)  # 64 GiB
        spec = VMSpec(name="full", base_image=big, vm_dir=small / "vm", memory_mb=128)
        with pytest.raises(errors.OutOfDisk, match="disk is full"):
            vbox.call(driver.create, spec)
        assert files_under(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_cleanup_stale_keeps_the_checkpoint_for_the_next_run(vbox):
    first = vbox.driver()
    spec = vbox.spec()
    vbox.call(first.create, spec)
    vbox.call(first.start, spec.name)
    vbox.call(vbox.guest.hello, spec.name, 10)
    vbox.call(first.save_checkpoint, spec.name)
    snapshot_ram = json.loads(next((spec.vm_dir / vbox_vm_name(spec.name) / "Snapshots")
                                   .glob("*.sav")).read_text().strip())
    # The wrapper "crashes": the first driver is abandoned with its VM running.
    assert fake_vm_pids(spec.vm_dir)
    second = vbox.driver()
    assert vbox.call(second.cleanup_stale, spec.vm_dir) == [spec.name]
    assert fake_vm_pids(spec.vm_dir) == []
    vbox.call(second.create, spec)  # adopts the VM with its snapshot
    assert vbox.call(second.has_checkpoint, spec.name)
    vbox.call(second.restore_checkpoint, spec.name)
    sample = vbox.call(vbox.guest.next_sample, spec.name, 5)
    assert snapshot_ram["ticks"] < sample.counter < snapshot_ram["ticks"] + 20
    vbox.call(second.destroy, spec.name)
    assert files_under(spec.vm_dir) == []


def test_cleanup_stale_discarding_removes_every_trace(vbox):
    first = vbox.driver()
    spec = vbox.spec()
    other = vbox.spec("someone_else")
    vbox.call(first.create, spec)
    vbox.call(first.create, other)
    vbox.call(first.start, spec.name)
    vbox.call(first.start, other.name)
    second = vbox.driver()
    assert vbox.call(second.cleanup_stale, spec.vm_dir, False) == [spec.name]
    assert files_under(spec.vm_dir) == []
    assert fake_vm_pids(spec.vm_dir) == []
    # Only our slot's VM went; the other slot's VM still runs, registered.
    assert fake_vm_pids(other.vm_dir)
    assert vbox_vm_name(other.name) in vbox.registered()
    assert vbox_vm_name(spec.name) not in vbox.registered()
    assert vbox.call(second.cleanup_stale, spec.vm_dir) == []
    vbox.call(first.destroy, other.name)


def test_virtualbox_61_is_driven_with_its_own_options(vbox):
    driver = vbox.driver(environ={**os.environ, "FAKE_VBOX_VERSION": "6.1.38_Debianr153438"})
    info = vbox.call(driver.probe_host)
    assert info.version == "6.1.38_Debianr153438" and info.hypervisor == "virtualbox"
    spec = vbox.spec()
    vbox.call(driver.create, spec)
    vbox.call(driver.start, spec.name)
    vbox.call(driver.save_checkpoint, spec.name)
    vbox.call(driver.destroy, spec.name)
    modify = [c["argv"] for c in vbox.calls() if "modifyvm" in c["argv"]]
    assert any("--audio" in argv and "none" in argv for argv in modify)
    # Every call succeeded but the first "is it registered?" query.
    failed = [c["argv"] for c in vbox.calls() if c["status"] != 0]
    assert failed == [["-q", "showvminfo", vbox_vm_name(spec.name), "--machinereadable"]]


def test_graceful_power_off_lets_the_guest_shut_down(vbox):
    driver = vbox.driver()
    spec = vbox.spec()
    vbox.call(driver.create, spec)
    vbox.call(driver.start, spec.name)
    vbox.call(vbox.guest.hello, spec.name, 10)
    vbox.call(driver.power_off, spec.name, 5.0)
    assert vbox.call(driver.state, spec.name) is VMState.STOPPED
    assert "power button" in vbox.call(driver.console_log, spec.name)
    assert not any("poweroff" in c["argv"] for c in vbox.calls())
    vbox.call(driver.destroy, spec.name)


def test_missing_vboxmanage_is_not_installed(vbox):
    driver = VirtualBoxDriver(vbox.reactor, vboxmanage=str(vbox.root / "no" / "VBoxManage"))
    with pytest.raises(errors.HypervisorNotInstalled, match="VBoxManage"):
        vbox.call(driver.probe_host)


def test_vm_dying_right_after_start_is_reported_at_once(vbox):
    driver = vbox.driver()
    spec = vbox.spec()
    vbox.call(driver.create, spec)
    vbox.faults({"command": "startvm", "fault": "crash_after_start", "times": 1})
    stopped = []
    vbox.call(driver.start, spec.name)
    vbox.call(lambda: driver.when_stopped(spec.name).addCallback(stopped.append) and None)
    deadline = time.monotonic() + 5
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stopped == [VMState.CRASHED]
    assert vbox.call(driver.state, spec.name) is VMState.CRASHED
    vbox.call(driver.start, spec.name)  # a crashed VM can be started again
    assert vbox.call(driver.state, spec.name) is VMState.RUNNING
    vbox.call(driver.destroy, spec.name)


def test_savestate_usage_keeps_the_guest_across_power_off(vbox):
    driver = vbox.driver()
    spec = vbox.spec(extra={"enable_vm_savestate_usage": True})
    vbox.call(driver.create, spec)
    vbox.call(driver.start, spec.name)
    before = vbox.call(vbox.guest.next_sample, spec.name, 5)
    vbox.call(driver.power_off, spec.name)
    assert vbox.call(driver.state, spec.name) is VMState.STOPPED
    assert fake_vm_pids(spec.vm_dir) == []
    vbox.call(driver.start, spec.name)  # continues from the saved state, not a cold boot
    after = vbox.call(vbox.guest.next_sample, spec.name, 5)
    assert before.counter < after.counter < before.counter + 20
    vbox.call(driver.destroy, spec.name)
    assert files_under(spec.vm_dir) == []


def test_remote_desktop_with_the_extension_pack(vbox):
    driver = vbox.driver(environ={**os.environ, "FAKE_VBOX_EXTPACK": "1",
                                  "FAKE_VBOX_VERSION": "7.1.4r165100"})
    spec = vbox.spec(extra={"enable_remotedesktop": True, "network_bridged_mode": False})
    vbox.call(driver.create, spec)
    address = driver.remote_desktop_address(spec.name)
    assert address and address.startswith("127.0.0.1:")
    assert all(c["status"] == 0 for c in vbox.calls() if "modifyvm" in c["argv"])
    vbox.call(driver.destroy, spec.name)


def test_a_vm_virtualbox_forgot_is_registered_again_with_its_snapshot(vbox):
    first = vbox.driver()
    spec = vbox.spec()
    vbox.call(first.create, spec)
    vbox.call(first.start, spec.name)
    vbox.call(first.save_checkpoint, spec.name)
    vbox.call(first.power_off, spec.name)
    name = vbox_vm_name(spec.name)
    # VirtualBox's registry lost the VM (reinstalled, new VBOX_USER_HOME...): the
    # slot still has its settings file, disks and snapshot (vboxwrapper: register_vm).
    subprocess.run([str(FAKE_VBOXMANAGE), "-q", "unregistervm", name], check=True,
                   env={"VBOX_USER_HOME": str(vbox.home)})
    assert name not in vbox.registered()
    second = vbox.driver()
    vbox.call(second.create, spec)
    assert name in vbox.registered()
    assert vbox.call(second.has_checkpoint, spec.name)
    vbox.call(second.restore_checkpoint, spec.name)
    assert vbox.call(second.state, spec.name) is VMState.RUNNING
    vbox.call(second.destroy, spec.name)
    assert files_under(spec.vm_dir) == []


def test_failed_snapshot_keeps_the_previous_one_and_the_vm_running(vbox):
    driver = vbox.driver()
    spec = vbox.spec()
    vbox.call(driver.create, spec)
    vbox.call(driver.start, spec.name)
    first = vbox.call(driver.save_checkpoint, spec.name)
    snapshots = spec.vm_dir / vbox_vm_name(spec.name) / "Snapshots"
    before = sorted(p.name for p in snapshots.iterdir())
    vbox.faults({"command": "snapshot", "contains": "take", "fault": "invalid_vm_state",
                 "times": 1})
    with pytest.raises(errors.CheckpointFailed, match="snapshot of VM") as caught:
        vbox.call(driver.save_checkpoint, spec.name)
    assert caught.value.transient  # the wrapper exits temporarily, for minutes
    assert sorted(p.name for p in snapshots.iterdir()) == before
    assert vbox.call(driver.state, spec.name) is VMState.RUNNING  # resumed after the pause
    assert vbox.call(driver.has_checkpoint, spec.name)
    assert vbox.call(driver.save_checkpoint, spec.name).name != first.name
    vbox.call(driver.destroy, spec.name)


def test_vboxsvc_unreachable_is_retried_then_reported(vbox):
    driver = vbox.driver(retry_delay=0.01)
    vbox.faults({"command": "list", "fault": "vboxsvc_unreachable", "times": 2})
    assert vbox.call(driver.probe_host).hypervisor == "virtualbox"
    assert [c["status"] for c in vbox.calls() if "hostinfo" in c["argv"]] == [1, 1, 0]
    vbox.faults({"command": "list", "fault": "vboxsvc_unreachable"})
    with pytest.raises(errors.HypervisorNotInstalled, match="reinstalled"):
        vbox.call(vbox.driver(retry_delay=0.01).probe_host)
    vbox.faults({"command": "list", "fault": "vboxdrv_missing"})
    with pytest.raises(errors.HypervisorNotInstalled, match="kernel"):
        vbox.call(vbox.driver().probe_host)

"""QEMU driver parts that need no running guest: error classification, the
command line, the state table, stale-VM cleanup safety, /proc readings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet import defer, task
from twisted.internet.error import ProcessDone, ProcessTerminated

from vmwrapper.hypervisor import procinfo
from vmwrapper.hypervisor.base import HostInfo, PortForward, SharedFolder, VMSpec, VMState
from vmwrapper.hypervisor.errors import (
    HypervisorFailure,
    ImageCorrupt,
    ImageMissing,
    NoVirtualization,
    OutOfDisk,
    PortInUse,
)
from vmwrapper.hypervisor.qemu import _VM, QemuDriver, _QemuProcess, classify_qemu_error


@pytest.mark.parametrize("text, error", [
    ("qemu-system-x86_64: -netdev user,id=n0,hostfwd=tcp:127.0.0.1:80-:80: "
     "Could not set up host forwarding rule 'tcp:127.0.0.1:80-:80'", PortInUse),
    ("qemu-img: /x/disk.qcow2: Could not create '/x/disk.qcow2': No space left on device",
     OutOfDisk),
    ("qemu-system-x86_64: -drive file=/a.qcow2: Could not open '/a.qcow2': "
     "No such file or directory", ImageMissing),
    ("qemu-img: Could not open 'b.img': Image is not in qcow2 format", ImageCorrupt),
    ("Could not access KVM kernel module: No such file or directory\n"
     "qemu-system-x86_64: failed to initialize kvm: No such file or directory", NoVirtualization),
    ("something new went wrong", HypervisorFailure),
])
def test_qemu_messages_map_to_typed_errors(text, error):
    assert type(classify_qemu_error(text)) is error


def _driver() -> QemuDriver:
    return QemuDriver(task.Clock(), accel="tcg")


def _vm(tmp_path: Path, **changes) -> _VM:
    spec = VMSpec(name="vm1", base_image=Path("/images/base.qcow2"), vm_dir=tmp_path / "vm,1",
                  **changes)
    return _VM(spec=spec, overlay=spec.vm_dir / "disk.qcow2", qmp_socket=spec.vm_dir / "q.sock")


def test_command_line_tcg_with_everything(tmp_path):
    vm = _vm(tmp_path, config_disk=tmp_path / "ud.iso", memory_mb=256, cpus=2,
             port_forwards=(PortForward(8080, 80),),
             shared_folder=SharedFolder(tmp_path / "shared", read_only=True))
    argv = _driver()._argv(vm, "/usr/bin/qemu-system-x86_64", HostInfo("qemu", "7.2", False))
    line = " ".join(argv)
    assert "-accel tcg,tb-size=64 -cpu max" in line and "-m 256 -smp 2" in line
    assert "-S" in argv and "-no-reboot" in argv and "-nodefaults" in argv
    assert f"file={tmp_path}/vm,,1/disk.qcow2,if=virtio" in line, "commas must be doubled"
    assert "hostfwd=tcp:127.0.0.1:8080-:80" in line
    assert f"path={tmp_path}/shared,security_model=none,readonly=on" in line
    assert f"file={tmp_path}/ud.iso,if=virtio,format=raw,readonly=on" in line
    assert str(vm.spec.base_image) not in line, "QEMU opens the base only through the overlay"


def test_command_line_kvm_and_no_network(tmp_path):
    vm = _vm(tmp_path, network=False)
    argv = _driver()._argv(vm, "qemu", HostInfo("qemu", "7.2", True))
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-cpu") + 1] == "host"
    assert not any("netdev" in arg for arg in argv)


@pytest.mark.parametrize("stopping, reason, exit_status, state", [
    (True, None, ProcessTerminated(signal=9), VMState.STOPPED),        # we killed it
    (False, "guest-shutdown", ProcessDone(0), VMState.STOPPED),       # guest powered off
    (False, "guest-panic", ProcessDone(0), VMState.CRASHED),
    (False, None, ProcessTerminated(signal=9), VMState.CRASHED),       # OOM killer
    (False, None, ProcessTerminated(exitCode=1), VMState.CRASHED),     # QEMU abort
])
def test_state_table_when_qemu_ends(tmp_path, stopping, reason, exit_status, state):
    driver, vm = _driver(), _vm(tmp_path)
    vm.spec.vm_dir.mkdir()
    proc = _QemuProcess()
    vm.process, vm.stopping, vm.shutdown_reason, vm.state = proc, stopping, reason, VMState.RUNNING
    told = []
    vm.stopped_waiters.append(defer.Deferred().addCallback(told.append))
    driver._on_ended(exit_status, vm, proc)
    assert vm.state is state and told == [state] and vm.process is None


@pytest.fixture
def sleeper(tmp_path):
    """A real process whose command line names a QMP socket path, like QEMU's."""
    sock = tmp_path / "vm" / "qmp.sock"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(sock)])
    yield proc, sock
    proc.kill()
    proc.wait()


def _record(vm_dir: Path, pid: int, ticks: int | None, sock: Path) -> None:
    vm_dir.mkdir(exist_ok=True)
    (vm_dir / "vm.json").write_text(json.dumps(
        {"name": "old", "pid": pid, "start_ticks": ticks, "qmp_socket": str(sock)}))
    (vm_dir / "disk.qcow2").write_bytes(b"overlay")


def _run_cleanup(clock: task.Clock, driver: QemuDriver, vm_dir: Path, keep: bool):
    d = driver.cleanup_stale(vm_dir, keep)
    for _ in range(200):
        if d.called:
            break
        clock.advance(0.05)
    return d.result


def test_cleanup_stale_kills_only_the_recorded_process(tmp_path, sleeper):
    proc, sock = sleeper
    clock = task.Clock()
    driver = QemuDriver(clock, accel="tcg")
    _record(sock.parent, proc.pid, procinfo.start_ticks(proc.pid) + 1, sock)  # pid reused
    assert _run_cleanup(clock, driver, sock.parent, True) == ["old"]
    assert proc.poll() is None, "a process with another start time must be left alone"
    assert (sock.parent / "disk.qcow2").exists(), "keep_checkpoint keeps the overlay"

    _record(sock.parent, proc.pid, procinfo.start_ticks(proc.pid), sock)
    assert _run_cleanup(clock, driver, sock.parent, False) == ["old"]
    assert proc.wait(5) == -9
    assert not sock.parent.exists(), "everything the driver made is gone"


def test_procinfo_reads_this_process():
    pid = os.getpid()
    sum(range(200000))
    assert procinfo.cpu_seconds(pid) > 0
    assert procinfo.resident_bytes(pid) > 1024 * 1024
    assert procinfo.is_running(pid) and procinfo.command_line(pid)
    assert procinfo.cpu_seconds(2**22 + 1) == 0.0 and not procinfo.is_running(2**22 + 1)


def test_accelerator_and_probe_files_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VMWRAPPER_QEMU_ACCEL", "tcg")
    monkeypatch.setenv("VMWRAPPER_QEMU_PROBE_DIR", str(tmp_path))
    driver = QemuDriver(task.Clock())
    assert driver.accel == "tcg" and driver.probe_kernel == tmp_path / "probe-vmlinuz"
    assert QemuDriver(task.Clock(), accel="auto").accel == "auto", "an argument wins"
    monkeypatch.setenv("VMWRAPPER_QEMU_ACCEL", "hvf")
    with pytest.raises(Exception, match="'auto', 'tcg' or 'kvm'"):
        QemuDriver(task.Clock())

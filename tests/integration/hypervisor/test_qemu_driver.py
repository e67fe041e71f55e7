"""QEMU-specific behaviour beyond the contract: accelerator probe, deadlines,
death reporting, missing binary, a full disk. Real QEMU processes."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.integration.hypervisor.harness_qemu import processes_in
from vmwrapper.hypervisor import procinfo
from vmwrapper.hypervisor.base import SharedFolder, VMState
from vmwrapper.hypervisor.errors import HypervisorNotInstalled, OperationTimeout, OutOfDisk

pytestmark = pytest.mark.qemu


def _name() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def test_kvm_probe_fails_fast_then_is_cached(qemu_session, appliance, tmp_path):
    rt = qemu_session.rt
    cache = tmp_path / "kvm-probe.json"
    options = dict(accel="auto", probe_kernel=appliance.probe_kernel,
                   probe_initrd=appliance.probe_initrd, probe_timeout=8.0, probe_cache=cache)
    started = time.monotonic()
    first = rt.call(qemu_session.new_driver(**options).probe_host, timeout=60)
    took = time.monotonic() - started
    assert took < 8.0 + 5.0, f"the KVM probe took {took:.1f} s"
    if not os.access("/dev/kvm", os.W_OK):
        assert not first.accelerated and "no usable /dev/kvm" in first.detail
        return
    assert cache.exists(), "a probe verdict must be cached on disk"
    started = time.monotonic()
    second = rt.call(qemu_session.new_driver(**options).probe_host, timeout=60)
    assert time.monotonic() - started < 2.0
    assert second.accelerated == first.accelerated
    assert "cached" in second.detail
    assert processes_in(appliance.directory) == [], "the probe QEMU was left running"


def test_death_is_reported_at_once(qemu_session, tmp_path, request):
    rt = qemu_session.rt
    driver = qemu_session.new_driver()
    spec = qemu_session.make_spec(tmp_path / "vm", _name())
    request.addfinalizer(lambda: rt.call(driver.destroy, spec.name, timeout=60))
    rt.call(driver.create, spec)
    rt.call(driver.start, spec.name)
    waiter = []
    rt.call(lambda: waiter.append(driver.when_stopped(spec.name)))
    killed = time.monotonic()
    os.kill(rt.call(driver.pid, spec.name), signal.SIGKILL)
    assert rt.call(lambda: waiter[0], timeout=10) is VMState.CRASHED
    assert time.monotonic() - killed < 1.0


def test_start_deadline_kills_a_hung_qemu(qemu_session, tmp_path, request):
    """A QEMU that never answers on QMP is killed when the start deadline passes."""
    rt = qemu_session.rt
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\n"
                    'if [ "$1" = --version ]; then echo "QEMU emulator version 0.0-hung"; exit 0; fi\n'
                    'exec python3 -c "import time; time.sleep(600)" "$@"\n')
    fake.chmod(0o755)
    driver = qemu_session.new_driver(qemu_binary=str(fake), start_timeout=2.0)
    spec = qemu_session.make_spec(tmp_path / "vm", _name())
    request.addfinalizer(lambda: rt.call(driver.destroy, spec.name, timeout=60))
    rt.call(driver.create, spec)
    started = time.monotonic()
    with pytest.raises(OperationTimeout):
        rt.call(driver.start, spec.name, timeout=30)
    assert time.monotonic() - started < 10
    assert processes_in(spec.vm_dir) == []
    assert rt.call(driver.state, spec.name) in (VMState.STOPPED, VMState.CRASHED)


def test_qemu_binary_missing(qemu_session, tmp_path):
    rt = qemu_session.rt
    driver = qemu_session.new_driver(qemu_binary="/nonexistent/qemu-system-x86_64")
    spec = qemu_session.make_spec(tmp_path / "vm", _name())
    with pytest.raises(HypervisorNotInstalled) as info:
        rt.call(driver.create, spec)
    assert "/nonexistent/qemu-system-x86_64" in str(info.value)
    assert "Install" in str(info.value)
    assert rt.call(driver.state, spec.name) is VMState.ABSENT
    assert not spec.vm_dir.exists()


@pytest.fixture
def small_tmpfs(tmp_path, request):
    """An 8 MiB tmpfs: too small for a VM's overlay and checkpoint."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(mount_point)]))
    return mount_point


def test_no_space_for_the_overlay(qemu_session, small_tmpfs):
    rt = qemu_session.rt
    driver = qemu_session.new_driver()
    spec = qemu_session.make_spec(small_tmpfs / "vm", _name())
    with pytest.raises(OutOfDisk) as info:
        rt.call(driver.create, spec)
    assert "MiB free" in str(info.value)
    assert rt.call(driver.state, spec.name) is VMState.ABSENT
    assert not (small_tmpfs / "vm").exists(), "create must remove the directory it made"


def test_power_button_shuts_the_appliance_down_cleanly(qemu_session, tmp_path, request):
    """power_off(grace) presses the ACPI power button; the appliance's init answers it."""
    rt = qemu_session.rt
    driver = qemu_session.new_driver()
    spec = qemu_session.make_spec(tmp_path / "vm", _name())
    request.addfinalizer(lambda: rt.call(driver.destroy, spec.name, timeout=60))
    rt.call(driver.create, spec)
    rt.call(driver.start, spec.name)
    rt.call(qemu_session.guests.hello, spec.name, 120, timeout=130)
    started = time.monotonic()
    rt.call(driver.power_off, spec.name, 30.0, timeout=60)
    took = time.monotonic() - started
    console = rt.call(driver.console_log, spec.name)
    assert "power button pressed" in console, console[-2000:]
    assert took < 10, f"the guest took {took:.1f} s to power off"
    assert rt.call(driver.state, spec.name) is VMState.STOPPED


@pytest.mark.parametrize("behaviour, accelerated, words", [
    ('echo "BOINC-VM-PROBE-OK"; exec sleep 600', True, "reached user space"),
    ("exec sleep 600", False, "hung"),
    ('echo "kvm_buf_set_msrs: Assertion failed" >&2; exit 134', False, "exited"),
])
def test_kvm_probe_outcomes(qemu_session, appliance, tmp_path, behaviour, accelerated, words):
    """The probe believes only the marker, kills a hung probe at its deadline."""
    if not os.access("/dev/kvm", os.W_OK):
        pytest.skip("the KVM probe runs only where /dev/kvm is usable")
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\n"
                    'if [ "$1" = --version ]; then echo "QEMU emulator version 0.0-fake"; exit 0; fi\n'
                    f"{behaviour}\n")
    fake.chmod(0o755)
    driver = qemu_session.new_driver(qemu_binary=str(fake), accel="auto", probe_timeout=1.5,
                                     probe_kernel=appliance.probe_kernel,
                                     probe_initrd=appliance.probe_initrd)
    started = time.monotonic()
    info = qemu_session.rt.call(driver.probe_host, timeout=30)
    assert time.monotonic() - started < 5
    assert info.accelerated is accelerated and words in info.detail
    assert info.version == "0.0-fake"
    leftovers = [p for p in processes_in(tmp_path) if p != os.getpid()]
    assert leftovers == [], "the probe QEMU must be killed"


def test_agent_runs_from_the_image_and_its_exit_powers_the_guest_off(
        qemu_session, appliance, tmp_path, request):
    """The real agent (from the image, not the host) runs a command; when it
    exits the appliance powers off and the driver reports a clean stop."""
    rt = qemu_session.rt
    driver = qemu_session.new_driver()
    spec = qemu_session.make_spec(tmp_path / "vm", _name())
    request.addfinalizer(lambda: rt.call(driver.destroy, spec.name, timeout=60))
    rt.call(driver.create, spec)
    rt.call(driver.start, spec.name)
    rt.call(qemu_session.guests.hello, spec.name, 120, timeout=130)
    vm_id = qemu_session.vm_ids[spec.name]
    output: list[bytes] = []
    result = rt.call(qemu_session.host.run, vm_id, None,
                     "uname -r; python3 -c 'import vmcontroller; print(vmcontroller.__file__)'",
                     on_output=lambda _stream, data: output.append(data), timeout=60)
    text = b"".join(output).decode()
    assert result.ok, text
    assert appliance.kernel_version in text
    assert "/opt/boinc-vm/vmcontroller/" in text, "the agent must run the image's copy"

    waiter = []
    rt.call(lambda: waiter.append(driver.when_stopped(spec.name)))
    # SIGTERM to the agent (the shell's parent) while it runs this very command.
    rt.call(lambda: qemu_session.host.run(
        vm_id, shell="kill -TERM $PPID").addErrback(
            lambda _: None) and None)
    try:
        assert rt.call(lambda: waiter[0], timeout=60) is VMState.STOPPED
    except TimeoutError:
        pytest.fail("the guest did not power off; console:\n"
                    + rt.call(driver.console_log, spec.name)[-3000:])
    assert "guest agent exited" in rt.call(driver.console_log, spec.name)


def test_wrapper_exit_kills_its_qemu(qemu_session, tmp_path):
    """A wrapper whose reactor stops (SIGTERM here) takes its QEMU with it."""
    from tests.integration.hypervisor.harness_qemu import ROOT

    spec = qemu_session.make_spec(tmp_path / "vm", _name())
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.hypervisor.orphan_run", "qemu",
         str(spec.base_image), str(spec.vm_dir), spec.name, str(spec.config_disk)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.startswith("running"), line + child.stderr.read()
        qemu_pid = int(line.split()[1])
        assert procinfo.is_running(qemu_pid)
        child.send_signal(signal.SIGTERM)
        child.wait(20)
        deadline = time.monotonic() + 5
        while procinfo.is_running(qemu_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not procinfo.is_running(qemu_pid), "QEMU outlived its wrapper"
        assert processes_in(spec.vm_dir) == []
    finally:
        child.kill()
        child.wait()
        for pid in processes_in(spec.vm_dir):
            os.kill(pid, signal.SIGKILL)


def test_create_adopts_its_own_overlay_but_not_another_images(qemu_session, appliance, tmp_path):
    """A restarted wrapper keeps its overlay and checkpoint; a new base image starts afresh."""
    rt = qemu_session.rt
    spec = qemu_session.make_spec(tmp_path / "vm", _name())
    first = qemu_session.new_driver()
    rt.call(first.create, spec)
    (spec.vm_dir / "disk.qcow2").touch()
    stamp = (spec.vm_dir / "disk.qcow2").stat().st_mtime_ns
    (spec.vm_dir / "checkpoint.json").write_text('{"tag": "boinc-1", "seq": 1}')
    second = qemu_session.new_driver()
    rt.call(second.create, spec)
    assert (spec.vm_dir / "disk.qcow2").stat().st_mtime_ns == stamp, "overlay was recreated"
    assert rt.call(second.has_checkpoint, spec.name)

    other_base = tmp_path / "other.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(appliance.qcow2),
                    "-F", "qcow2", str(other_base)], check=True)
    third = qemu_session.new_driver()
    rt.call(third.create, dataclasses.replace(spec, base_image=other_base))
    assert not rt.call(third.has_checkpoint, spec.name), "a checkpoint of another image"
    rt.call(third.destroy, spec.name)
    assert not spec.vm_dir.exists()


@pytest.fixture(scope="session")
def generic_appliance():
    """The appliance with Debian's generic kernel (9p, AHCI, e1000), built once and cached."""
    from tests.integration.hypervisor.harness_qemu import require_qemu
    from vmwrapper.appliance.builder import BuildOptions, build, default_output

    require_qemu()
    return build(BuildOptions(output=default_output(), kernel="generic", formats=("qcow2",)))


def test_shared_folder_is_the_named_directory_only(qemu_session, generic_appliance, tmp_path,
                                                   request):
    """The job's directory (and nothing above it) appears in the guest at /mnt/<tag>."""
    rt = qemu_session.rt
    shared = tmp_path / "job" / "shared"
    shared.mkdir(parents=True)
    (shared / "input.txt").write_text("from the host\n")
    (tmp_path / "job" / "secret.txt").write_text("must stay outside\n")
    driver = qemu_session.new_driver()
    spec = dataclasses.replace(qemu_session.make_spec(tmp_path / "vm", _name()),
                               base_image=generic_appliance.qcow2,
                               shared_folder=SharedFolder(shared, tag="shared"))
    request.addfinalizer(lambda: rt.call(driver.destroy, spec.name, timeout=60))
    rt.call(driver.create, spec)
    rt.call(driver.start, spec.name)
    rt.call(qemu_session.guests.hello, spec.name, 180, timeout=190)
    output: list[bytes] = []
    result = rt.call(qemu_session.host.run, qemu_session.vm_ids[spec.name], None,
                     "cat /mnt/shared/input.txt; ls -a /mnt/shared/..; "
                     "echo from the guest > /mnt/shared/output.txt",
                     on_output=lambda _stream, data: output.append(data), timeout=60)
    text = b"".join(output).decode()
    assert result.ok, text + rt.call(driver.console_log, spec.name)[-2000:]
    assert "from the host" in text and "secret.txt" not in text
    assert (shared / "output.txt").read_text() == "from the guest\n"

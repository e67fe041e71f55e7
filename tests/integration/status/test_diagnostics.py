"""Pre-boot diagnostics on real failures: the hypervisor removed from PATH, a full disk.

Each ends in a real ``BoincRuntime`` temporary exit in a slot directory: the
``boinc_temporary_exit`` file the client reads (delay, the volunteer's
message, ``notice``), and reason-code lines in the stderr log. The full disk
is a 2 MiB tmpfs this test mounts, fills and unmounts itself (root only).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest
from twisted.internet import task

from vmwrapper.boinc.runtime import TEMPORARY_EXIT_FILE, BoincRuntime
from vmwrapper.diagnostics.findings import Reason, Verdict
from vmwrapper.diagnostics.host import check_disk, check_host, disk_needed, parse_version

QEMU = "qemu-system-x86_64"


def run_diagnosis(slot, **checks):
    """check_host + act with a real runtime; returns (proceed, exits, log lines, diagnosis)."""
    exits: list[int] = []
    lines: list[str] = []
    runtime = BoincRuntime(slot, clock=task.Clock(), exit=exits.append)
    diagnosis = check_host(("qemu",), memory_mb=256, slot_dir=slot, **checks)
    return diagnosis.act(runtime, lines.append), exits, lines, diagnosis


def test_hypervisor_missing_from_path_means_temporary_exit(tmp_path):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    slot = tmp_path / "slot"
    slot.mkdir()
    proceed, exits, lines, diagnosis = run_diagnosis(slot, path=str(empty_bin))
    assert proceed is False and exits == [0]
    delay, message, notice = (slot / TEMPORARY_EXIT_FILE).read_text().splitlines()
    assert (delay, notice) == ("3600", "notice")
    assert "Install QEMU" in message and "qemu-system-x86" in message
    assert any(line.startswith("diagnostics: hypervisor_missing (hypervisor, temporary exit")
               for line in lines)


def test_real_hypervisor_found_with_its_version(tmp_path):
    real = shutil.which(QEMU)
    if real is None:
        pytest.skip(f"{QEMU} is not installed (scripts/bootstrap.sh installs it)")
    only_qemu = tmp_path / "bin"
    only_qemu.mkdir()
    (only_qemu / QEMU).symlink_to(real)
    slot = tmp_path / "slot"
    slot.mkdir()
    proceed, exits, lines, diagnosis = run_diagnosis(slot, path=str(only_qemu))
    assert proceed is True and exits == []
    version = parse_version(subprocess.run([real, "--version"], capture_output=True,
                                           text=True, check=True).stdout)
    hypervisor = next(f for f in diagnosis.findings if f.check == "hypervisor")
    assert hypervisor.detail.startswith(f"qemu {'.'.join(map(str, version))} ")
    assert not (slot / TEMPORARY_EXIT_FILE).exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs mounted by this test, unmounted even when the test fails."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "boinc-vm-test-disk",
                    str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory, leave: int = 0) -> None:
    """Write to *directory* until at most *leave* bytes are free."""
    with open(directory / "filler", "wb") as f:
        block = b"\0" * 4096
        try:
            while shutil.disk_usage(directory).free > leave:
                f.write(block)
                f.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_full_disk_means_temporary_exit(small_tmpfs):
    slot = small_tmpfs / "slot"
    slot.mkdir()
    fill(small_tmpfs, leave=64 * 1024)  # room for the exit file, not for a VM
    proceed, exits, lines, diagnosis = run_diagnosis(slot)
    disk = next(f for f in diagnosis.findings if f.check == "disk")
    assert (disk.verdict, disk.reason) == (Verdict.WAIT, Reason.DISK_LOW)
    assert proceed is False and exits == [0]
    delay, message, notice = (slot / TEMPORARY_EXIT_FILE).read_text().splitlines()
    assert delay == "3600" and "free" in message and "disk" in message
    assert any(line.startswith("diagnostics: disk_low (disk, temporary exit 3600 s): ")
               and str(slot) in line for line in lines)


def test_completely_full_disk_is_reported(small_tmpfs):
    fill(small_tmpfs)
    finding = check_disk(small_tmpfs, disk_needed(256))
    assert finding.reason is Reason.DISK_LOW
    assert finding.detail.startswith("0 bytes free")

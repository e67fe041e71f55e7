"""The host checks against prepared /proc-like files and paths (no real hardware needed)."""

from __future__ import annotations

import pytest

from vmwrapper.diagnostics.findings import VM_EXTENSIONS_DISABLED, Reason, Verdict
from vmwrapper.diagnostics.host import (
    available_memory_mb,
    check_hypervisor,
    check_memory,
    check_virtualization,
    cpu_virtualization_flag,
    disk_needed,
    parse_version,
)


def cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags} lm\n\nprocessor\t: 1\n")
    return path


@pytest.mark.parametrize("flags, expected", [("vmx", "vmx"), ("svm", "svm"), ("", "")])
def test_cpu_flag(tmp_path, flags, expected):
    assert cpu_virtualization_flag(cpuinfo(tmp_path, flags)) == expected


def test_cpu_flag_of_unreadable_file(tmp_path):
    assert cpu_virtualization_flag(tmp_path / "missing") == ""


def test_kvm_usable_is_enough_for_qemu_even_with_hidden_flag(tmp_path):
    kvm = tmp_path / "kvm"
    kvm.touch()
    finding = check_virtualization("qemu", cpuinfo=cpuinfo(tmp_path, ""), kvm=kvm)
    assert finding.verdict is Verdict.OK


def test_flag_without_kvm_costs_emulation(tmp_path):
    finding = check_virtualization("qemu", cpuinfo=cpuinfo(tmp_path, "vmx"), kvm=tmp_path / "no")
    assert (finding.verdict, finding.reason) == (Verdict.COST, Reason.KVM_UNUSABLE)
    assert "TCG" in finding.detail and "kvm" in finding.advice


def test_no_virtualization_costs_emulation_and_tells_the_client(tmp_path):
    finding = check_virtualization("qemu", cpuinfo=cpuinfo(tmp_path, ""), kvm=tmp_path / "no")
    assert (finding.verdict, finding.reason) == (Verdict.COST, Reason.VM_EXTENSIONS_DISABLED)
    assert VM_EXTENSIONS_DISABLED in finding.line()
    assert "firmware" in finding.advice


def test_required_acceleration_waits_a_day(tmp_path):
    finding = check_virtualization("qemu", required=True, cpuinfo=cpuinfo(tmp_path, ""),
                                   kvm=tmp_path / "no")
    assert (finding.verdict, finding.delay) == (Verdict.WAIT, 86400)


def test_virtualbox_needs_the_cpu_flag(tmp_path):
    assert check_virtualization("virtualbox", cpuinfo=cpuinfo(tmp_path, "svm"),
                                kvm=tmp_path / "no").verdict is Verdict.OK
    finding = check_virtualization("virtualbox", cpuinfo=cpuinfo(tmp_path, ""),
                                   kvm=tmp_path / "no")
    assert (finding.verdict, finding.reason) == (Verdict.WAIT, Reason.VM_EXTENSIONS_DISABLED)


@pytest.mark.parametrize("text, version", [
    ("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u16)", (7, 2, 22)),
    ("7.0.14_SUSEr161095", (7, 0, 14)),
    ("7.1r164728", (7, 1)),
    ("Unknown", None),
])
def test_parse_version(text, version):
    assert parse_version(text) == version


def fake_program(directory, name, script):
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def test_version_too_old_waits_a_day(tmp_path):
    fake_program(tmp_path, "VBoxManage", "echo 6.1.50r161033")
    finding = check_hypervisor(["virtualbox"], path=str(tmp_path),
                               min_versions={"virtualbox": (7, 0)})
    assert (finding.reason, finding.delay) == (Reason.HYPERVISOR_TOO_OLD, 86400)
    assert "6.1.50" in finding.detail and "7.0" in finding.advice


def test_unparsable_version_counts_as_new_enough(tmp_path):
    fake_program(tmp_path, "VBoxManage", "echo Unknown")
    finding = check_hypervisor(["virtualbox"], path=str(tmp_path),
                               min_versions={"virtualbox": (7, 0)})
    assert finding.verdict is Verdict.OK and "unknown" in finding.detail


@pytest.mark.parametrize("script, words", [
    ("echo 'VBoxManage: error: failed to create a session' >&2; exit 1", "exited with 1"),
    ("exec /bin/sleep 30", "did not answer"),
])
def test_broken_program(tmp_path, script, words):
    fake_program(tmp_path, "VBoxManage", script)
    finding = check_hypervisor(["virtualbox"], path=str(tmp_path), timeout=0.5)
    assert finding.reason is Reason.HYPERVISOR_BROKEN and words in finding.detail


def test_second_choice_is_used_when_first_is_missing(tmp_path):
    fake_program(tmp_path, "VBoxManage", "echo 7.0.14r161095")
    finding = check_hypervisor(["qemu", "virtualbox"], path=str(tmp_path))
    assert finding.verdict is Verdict.OK and finding.detail.startswith("virtualbox 7.0.14")


def test_none_installed_names_every_one(tmp_path):
    finding = check_hypervisor(["qemu", "virtualbox"], path=str(tmp_path))
    assert finding.reason is Reason.HYPERVISOR_MISSING
    assert "qemu-system-x86_64" in finding.detail and "VBoxManage" in finding.detail


@pytest.mark.parametrize("names, message", [([], "at least one"), (["xen"], "valid hypervisors")])
def test_bad_hypervisor_names(names, message):
    with pytest.raises(ValueError, match=message):
        check_hypervisor(names)


def meminfo(tmp_path, available_kb):
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal: 8000000 kB\nMemAvailable: {available_kb} kB\n")
    return path


def test_memory_enough_and_short(tmp_path):
    assert check_memory(512, meminfo(tmp_path, 4_000_000)).verdict is Verdict.OK
    short = check_memory(2048, meminfo(tmp_path, 1_000_000))
    assert (short.reason, short.delay) == (Reason.MEMORY_LOW, 300)
    assert "976 MiB available" in short.detail


def test_memory_unknown_does_not_block(tmp_path):
    path = tmp_path / "meminfo"
    path.write_text("MemTotal: 1 kB\n")
    assert available_memory_mb(path) is None
    assert check_memory(512, path).verdict is Verdict.OK


def test_disk_needed_counts_two_checkpoints():
    assert disk_needed(512, growth_mb=1024) == (1024 + 1024) * 1024 * 1024

"""Pre-boot host checks: virtualization, the hypervisor, free disk, free memory.

Each check returns a :class:`~.findings.Finding`; :func:`check_host` runs the
four for one job. They are quick (file reads, one ``--version`` run of at most
:data:`VERSION_TIMEOUT` seconds) and run once, before the VM boots, so they
are plain blocking functions. Every input (``/proc`` files, ``PATH``, the
slot) is a parameter, so tests point them at a PATH without the hypervisor or
at a full tmpfs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from vmwrapper.boinc.exitcodes import MAX_TEMPORARY_EXIT_DELAY, RESTART_DELAY
from vmwrapper.diagnostics.findings import (
    HOST_FIX_DELAY,
    VM_EXTENSIONS_DISABLED,
    Diagnosis,
    Finding,
    Reason,
)

#: The program whose ``--version`` each driver needs.
HYPERVISOR_PROGRAMS: dict[str, str] = {"qemu": "qemu-system-x86_64", "virtualbox": "VBoxManage"}
#: What a volunteer installs to get each hypervisor.
INSTALL_HINTS: dict[str, str] = {
    "qemu": "install QEMU (Debian/Ubuntu package qemu-system-x86)",
    "virtualbox": "install VirtualBox from virtualbox.org",
}
#: Seconds ``--version`` may take (VBoxManage starts its service the first time).
VERSION_TIMEOUT = 20.0
#: Memory the hypervisor itself needs besides the guest's RAM.
HYPERVISOR_OVERHEAD_MB = 128
#: Disk the guest's overlay may grow by during one job, unless the job says otherwise.
DEFAULT_DISK_GROWTH_MB = 1024
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_MIB = 1024 * 1024


def cpu_virtualization_flag(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """``"vmx"`` (Intel VT-x), ``"svm"`` (AMD-V) or ``""`` from the CPU's flags."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            for flag in ("vmx", "svm"):
                if flag in flags:
                    return flag
    return ""


def check_virtualization(hypervisor: str = "qemu", required: bool = False,
                         cpuinfo: Path = Path("/proc/cpuinfo"),
                         kvm: Path = Path("/dev/kvm")) -> Finding:
    """Hardware virtualization for *hypervisor*.

    QEMU uses KVM through ``/dev/kvm``; without it QEMU still runs the job by
    software emulation (TCG), several times slower: a COST unless the job
    *requires* acceleration (then WAIT, a day). VirtualBox needs VT-x/AMD-V
    itself. The CPU flag alone is not trusted either way: nested hosts may hide
    it while ``/dev/kvm`` works.
    """
    flag = cpu_virtualization_flag(cpuinfo)
    kvm_usable = kvm.exists() and os.access(kvm, os.R_OK | os.W_OK)
    if hypervisor == "qemu" and kvm_usable:
        return Finding.ok("virtualization", f"KVM usable ({kvm}; CPU flag {flag or 'hidden'})")
    if hypervisor != "qemu" and flag:
        return Finding.ok("virtualization", f"CPU flag {flag}")
    if flag and hypervisor == "qemu":
        reason = Reason.KVM_UNUSABLE
        why = (f"the CPU has {flag} but {kvm} is "
               + ("not writable by this user" if kvm.exists() else "missing"))
        fix = ("Load the kvm kernel module and let the BOINC user use /dev/kvm "
               "(add it to the 'kvm' group), then restart BOINC.")
    else:
        reason = Reason.VM_EXTENSIONS_DISABLED
        no_kvm = f" and no usable {kvm}" if hypervisor == "qemu" else ""
        why = f"no VT-x/AMD-V flag in {cpuinfo}{no_kvm} ({VM_EXTENSIONS_DISABLED})"
        fix = ("Enable hardware virtualization (VT-x/AMD-V, 'SVM mode') in the computer's "
               "firmware (BIOS/UEFI) settings, and make sure no other hypervisor holds it.")
    if required or hypervisor != "qemu":
        return Finding.wait("virtualization", reason, f"{why}; this job needs it",
                            f"This task needs hardware virtualization. {fix}",
                            delay=MAX_TEMPORARY_EXIT_DELAY)
    return Finding.cost("virtualization", reason,
                        f"{why}; running with software emulation (TCG), several times slower",
                        f"Tasks would run several times faster with it. {fix}")


def parse_version(text: str) -> tuple[int, ...] | None:
    """The first ``major.minor[.patch]`` in *text* (``7.0.14_SUSEr161095`` -> (7, 0, 14))."""
    match = _VERSION.search(text)
    if not match:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


def check_hypervisor(hypervisors: Sequence[str], path: str | None = None,
                     min_versions: dict[str, tuple[int, ...]] | None = None,
                     timeout: float = VERSION_TIMEOUT) -> Finding:
    """The first of *hypervisors* (driver names, in preference order) that is installed.

    Installed means: its program is on *path* (default ``$PATH``), runs
    ``--version`` within *timeout* and is at least ``min_versions[name]``. An
    unparsable version counts as new enough (odd builds must still run).
    """
    if not hypervisors:
        raise ValueError("no hypervisor to check; name at least one (e.g. 'qemu')")
    unknown = [h for h in hypervisors if h not in HYPERVISOR_PROGRAMS]
    if unknown:
        raise ValueError(f"unknown hypervisor {unknown[0]!r}; valid hypervisors: "
                         f"{', '.join(sorted(HYPERVISOR_PROGRAMS))}")
    problems: list[Finding] = []
    for name in hypervisors:
        finding = _check_one(name, path, (min_versions or {}).get(name), timeout)
        if finding.reason is Reason.OK:
            return finding
        problems.append(finding)
    if len(problems) == 1:
        return problems[0]
    worst = max(problems, key=lambda f: f.delay)
    return Finding.wait("hypervisor", worst.reason, "; ".join(p.detail for p in problems),
                        " Or: ".join(p.advice for p in problems), delay=worst.delay)


def _check_one(name: str, path: str | None, minimum: tuple[int, ...] | None,
               timeout: float) -> Finding:
    program = HYPERVISOR_PROGRAMS[name]
    found = shutil.which(program, path=path)
    if found is None:
        return Finding.wait("hypervisor", Reason.HYPERVISOR_MISSING,
                            f"{program} not found on PATH ({path if path is not None else os.environ.get('PATH', '')})",
                            f"{INSTALL_HINTS[name][0].upper()}{INSTALL_HINTS[name][1:]}; "
                            "the task will try again later.")
    env = dict(os.environ, PATH=path) if path is not None else None
    try:
        run = subprocess.run([found, "--version"], capture_output=True, text=True,
                             timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return _broken(name, found, f"'{found} --version' did not answer in {timeout:g} s")
    except OSError as error:
        return _broken(name, found, f"'{found} --version' cannot run: {error.strerror or error}")
    output = (run.stdout + run.stderr).strip()
    first_line = output.splitlines()[0] if output else ""
    if run.returncode != 0:
        return _broken(name, found, f"'{found} --version' exited with {run.returncode}: "
                                    f"{first_line or 'no output'}")
    version = parse_version(first_line)
    shown = ".".join(map(str, version)) if version else f"unknown ({first_line[:60]!r})"
    if minimum and version and version < minimum:
        need = ".".join(map(str, minimum))
        return Finding.wait("hypervisor", Reason.HYPERVISOR_TOO_OLD,
                            f"{found} is version {shown}; this job needs {need} or newer",
                            f"Update {name} to version {need} or newer.",
                            delay=MAX_TEMPORARY_EXIT_DELAY)
    return Finding.ok("hypervisor", f"{name} {shown} ({found})")


def _broken(name: str, program: str, detail: str) -> Finding:
    return Finding.wait("hypervisor", Reason.HYPERVISOR_BROKEN, detail,
                        f"The {name} installation at {program} does not work; "
                        f"reinstall it ({INSTALL_HINTS[name]}).")


def disk_needed(memory_mb: int, growth_mb: int = DEFAULT_DISK_GROWTH_MB) -> int:
    """Bytes a VM job may write to the slot: the overlay's growth plus two
    checkpoints of its memory (the new one is complete before the old goes)."""
    return (growth_mb + 2 * memory_mb) * _MIB


def check_disk(directory: Path, need_bytes: int) -> Finding:
    """Free space (for an unprivileged user) on the file system of *directory*."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError as error:
        return Finding.wait("disk", Reason.DISK_LOW,
                            f"cannot read free space of {directory}: {error.strerror or error}",
                            "BOINC's data directory is not accessible; check the disk.",
                            delay=RESTART_DELAY)
    detail = f"{_size(free)} free in {directory}, the VM needs up to {_size(need_bytes)}"
    if free >= need_bytes:
        return Finding.ok("disk", detail)
    return Finding.wait("disk", Reason.DISK_LOW, detail,
                        f"Not enough free disk space: free {_size(need_bytes - free)} more on "
                        "the disk holding BOINC's data, or let BOINC use more of it.",
                        delay=HOST_FIX_DELAY)


def available_memory_mb(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` in MiB, None when the kernel does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(memory_mb: int, meminfo: Path = Path("/proc/meminfo")) -> Finding:
    """Whether the VM's RAM plus the hypervisor's overhead is available now."""
    need = memory_mb + HYPERVISOR_OVERHEAD_MB
    available = available_memory_mb(meminfo)
    if available is None:
        return Finding.ok("memory", f"available memory unknown (no MemAvailable in {meminfo})")
    detail = f"{available} MiB available, the VM needs {need} MiB ({memory_mb} + overhead)"
    if available >= need:
        return Finding.ok("memory", detail)
    return Finding.wait("memory", Reason.MEMORY_LOW, detail,
                        f"Not enough free memory right now ({need} MiB needed); the task "
                        "will try again in a few minutes. Closing other programs helps.",
                        delay=RESTART_DELAY)


def check_host(hypervisors: Sequence[str], memory_mb: int, slot_dir: Path,
               accel_required: bool = False, path: str | None = None,
               disk_bytes: int | None = None) -> Diagnosis:
    """All four checks for a job; see :meth:`Diagnosis.act` for what to do next.

    :param hypervisors: the job's drivers in preference order (``candidate_drivers(job)``).
    :param memory_mb: the VM's RAM.
    :param slot_dir: where the VM's files go.
    :param accel_required: the job refuses software emulation.
    :param disk_bytes: disk the job needs (default :func:`disk_needed`).
    """
    hypervisor = check_hypervisor(hypervisors, path=path)
    chosen = next((h for h in hypervisors if hypervisor.detail.startswith(f"{h} ")),
                  hypervisors[0])
    return Diagnosis.of([
        check_virtualization(chosen, required=accel_required),
        hypervisor,
        check_disk(slot_dir, disk_needed(memory_mb) if disk_bytes is None else disk_bytes),
        check_memory(memory_mb),
    ])


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"

"""What the VirtualBox driver keeps in a slot, and how VirtualBox names map to ours.

In ``vm_dir``: the VM folder ``boinc_<md5 16 hex>/`` (settings, logs, snapshots),
the copy-on-write overlay ``overlay.vdi`` and the record ``virtualbox-vm.json``
(spec name, VirtualBox name and UUID, remote-desktop port) that lets a later run
find and clean up what an earlier, crashed one left.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from vmwrapper.hypervisor.base import VMState

RECORD_FILE = "virtualbox-vm.json"
OVERLAY_FILE = "overlay.vdi"
CONTROLLER = "Hard Disk Controller"

#: VirtualBox machine states (``showvminfo --machinereadable`` ``VMState``) -> ours.
#: Judgement calls: transient "busy" states count as what the VM will be in when
#: the operation ends; "saved" is STOPPED (no process; ``start`` resumes it);
#: "aborted"/"gurumeditation" are CRASHED as vboxwrapper treats them (poll()).
VBOX_STATES: dict[str, VMState] = {
    "poweroff": VMState.STOPPED,
    "saved": VMState.STOPPED,
    "teleported": VMState.STOPPED,
    "restoring": VMState.RUNNING,
    "starting": VMState.RUNNING,
    "running": VMState.RUNNING,
    "saving": VMState.RUNNING,
    "stopping": VMState.RUNNING,
    "teleporting": VMState.RUNNING,
    "livesnapshotting": VMState.RUNNING,
    "onlinesnapshotting": VMState.RUNNING,
    "deletingsnapshotlive": VMState.RUNNING,
    "paused": VMState.PAUSED,
    "deletingsnapshotlivepaused": VMState.PAUSED,
    "teleportingpausedvm": VMState.PAUSED,
    "aborted": VMState.CRASHED,
    "aborted-saved": VMState.CRASHED,
    "gurumeditation": VMState.CRASHED,
    "stuck": VMState.CRASHED,
}


def vbox_vm_name(name: str) -> str:
    """The VirtualBox VM name for a spec (result) name: ``boinc_`` + 16 hex of its md5."""
    return "boinc_" + hashlib.md5(name.encode()).hexdigest()[:16]


def write_record(vm_dir: Path, record: dict[str, Any]) -> None:
    """Write the record atomically (a crash leaves the old one or the new one)."""
    path = vm_dir / RECORD_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def is_iso9660(path: Path) -> bool:
    """True for an ISO 9660 image ("CD001" at byte 0x8001): attached as a DVD."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0x8001)
            return handle.read(5) == b"CD001"
    except OSError:
        return False


def tail_text(path: Path, max_bytes: int) -> str:
    """The last ``max_bytes`` of a log file, decoded leniently."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - max_bytes))
        return handle.read().decode("utf-8", "replace")


def read_record(vm_dir: Path) -> dict[str, Any] | None:
    """The record of ``vm_dir``, or None when missing or unreadable."""
    try:
        record = json.loads((vm_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "vbox_name" in record else None


def remove_driver_files(vm_dir: Path, vbox_name: str, console_log: Path | None) -> None:
    """Delete what the driver itself put in ``vm_dir`` (never the caller's files)."""
    shutil.rmtree(vm_dir / vbox_name, ignore_errors=True)
    for path in (vm_dir / RECORD_FILE, vm_dir / OVERLAY_FILE):
        path.unlink(missing_ok=True)
    if console_log is not None and vm_dir in console_log.parents:
        console_log.unlink(missing_ok=True)
    try:
        vm_dir.rmdir()
    except OSError:
        pass

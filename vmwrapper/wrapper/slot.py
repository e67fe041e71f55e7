"""Where the wrapper keeps its files in the BOINC slot, and how they go away.

Everything the wrapper creates lives under the slot, so the client's own slot
wipe is a last line of defence, never the only one:

* ``vmwrapper_state.json``: the checkpoint state (:mod:`.state`);
* ``vm/``: the driver's directory for the VM (overlay, checkpoint, sockets);
* ``vm_userdata.iso``: the user-data disk with the guest agent's settings;
* ``vmwrapper_tmp/``: scratch files (progress files fetched from the guest).

:meth:`SlotLayout.remove_all` deletes them on finish and abort;
:meth:`SlotLayout.remove_scratch` on every exit.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import shutil
from dataclasses import dataclass

STATE_FILE = "vmwrapper_state.json"
VM_DIR = "vm"
CONFIG_DISK = "vm_userdata.iso"
SCRATCH_DIR = "vmwrapper_tmp"


def vm_name_for(result_name: str, slot: int = 0) -> str:
    """A VM name unique to the task: readable prefix + hash of the result name.

    Also the guest agent's id on the broker, so only letters, digits, ``_`` and
    ``-`` (no dots). Standalone (no result name) the slot number stands in for it.
    """
    base = result_name or f"standalone-slot{slot}"
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", base)[:40].strip("_-") or "task"
    digest = hashlib.sha256(base.encode()).hexdigest()[:12]
    return f"boincvm-{readable}-{digest}"[:64]


@dataclass(frozen=True)
class SlotLayout:
    """The wrapper's paths in *slot_dir* (an absolute path)."""

    slot_dir: pathlib.Path

    @classmethod
    def at(cls, slot_dir: str | pathlib.Path) -> SlotLayout:
        return cls(pathlib.Path(slot_dir).resolve())

    @property
    def state_file(self) -> pathlib.Path:
        return self.slot_dir / STATE_FILE

    @property
    def vm_dir(self) -> pathlib.Path:
        return self.slot_dir / VM_DIR

    @property
    def config_disk(self) -> pathlib.Path:
        return self.slot_dir / CONFIG_DISK

    @property
    def scratch_dir(self) -> pathlib.Path:
        return self.slot_dir / SCRATCH_DIR

    def scratch_file(self, name: str) -> pathlib.Path:
        """A scratch file (its directory is created)."""
        self.scratch_dir.mkdir(exist_ok=True)
        return self.scratch_dir / name

    def remove_scratch(self) -> None:
        shutil.rmtree(self.scratch_dir, ignore_errors=True)

    def remove_vm_files(self) -> None:
        """Delete the VM directory, the user-data disk and scratch files (not the state)."""
        self.remove_scratch()
        shutil.rmtree(self.vm_dir, ignore_errors=True)
        for path in (self.config_disk, self.config_disk.with_name(self.config_disk.name + ".part")):
            path.unlink(missing_ok=True)

    def remove_all(self) -> None:
        """Delete every file the wrapper made (after the driver destroyed the VM)."""
        self.remove_vm_files()
        for path in (self.state_file, self.state_file.with_name(f".{STATE_FILE}.tmp")):
            path.unlink(missing_ok=True)

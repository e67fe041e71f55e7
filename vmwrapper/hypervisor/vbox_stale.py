"""Finding and removing the VirtualBox VMs a crashed earlier run left in a slot.

Candidates, all tied to the slot: the record file, ``boinc_*`` settings files in
``vm_dir``, and any ``boinc_*`` VM still holding our overlay disk (vboxwrapper:
``deregister_stale_vm`` reads ``showhdinfo``'s "In use by VMs"). A VM process
VBoxSVC lost track of is killed only when its command line names that VM.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer

from vmwrapper.hypervisor import procinfo
from vmwrapper.hypervisor.base import VMState
from vmwrapper.hypervisor.vbox_layout import (
    CONTROLLER,
    OVERLAY_FILE,
    RECORD_FILE,
    VBOX_STATES,
    read_record,
    remove_driver_files,
)
from vmwrapper.hypervisor.vboxmanage import parse_in_use_by, parse_machine_readable, parse_vm_pid


class StaleCleanup:
    """``cleanup_stale`` of the VirtualBox driver.

    :param vbm: the driver's ``VBoxManage`` caller (``*args, doing=, check=, timeout=``).
    :param long_timeout: seconds for power-off and unregister calls.
    """

    def __init__(self, vbm: Callable[..., defer.Deferred[Any]], long_timeout: float) -> None:
        self.vbm = vbm
        self.long_timeout = long_timeout

    @defer.inlineCallbacks
    def clean(self, vm_dir: Path, keep_checkpoint: bool, live: set[str]) -> Any:
        """Clean ``vm_dir``; ``live`` are VirtualBox names in use by this driver (kept).

        :returns: Deferred firing with the spec names of the VMs cleaned up.
        """
        vm_dir = Path(vm_dir)
        if not vm_dir.is_dir():
            return []
        candidates: dict[str, str] = {}  # vbox name -> spec name
        record = read_record(vm_dir)
        if record:
            candidates[record["vbox_name"]] = record.get("name", record["vbox_name"])
        for settings in vm_dir.glob("boinc_*/boinc_*.vbox"):
            if settings.stem == settings.parent.name:
                candidates.setdefault(settings.stem, settings.stem)
        overlay = vm_dir / OVERLAY_FILE
        if overlay.exists():
            result = yield self.vbm("showmediuminfo", "disk", str(overlay),
                                     doing="find VMs holding our overlay", check=False)
            for holder, _uuid in parse_in_use_by(result.output):
                if holder.strip().startswith("boinc_"):
                    candidates.setdefault(holder.strip(), holder.strip())
        cleaned = []
        for vbox_name, spec_name in candidates.items():
            if vbox_name in live:
                continue  # live in this driver: not stale
            done = yield self._clean_one(vm_dir, vbox_name, keep_checkpoint)
            if done:
                cleaned.append(spec_name)
        if not keep_checkpoint:
            yield self.vbm("closemedium", "disk", str(overlay), "--delete",
                            doing="delete a stale overlay", check=False)
            overlay.unlink(missing_ok=True)
            (vm_dir / RECORD_FILE).unlink(missing_ok=True)
        return cleaned

    @defer.inlineCallbacks
    def _clean_one(self, vm_dir: Path, vbox_name: str, keep_checkpoint: bool) -> Any:
        """Power off (and unless keeping, unregister and delete) one stale VM."""
        result = yield self.vbm("showvminfo", vbox_name, "--machinereadable",
                                 doing=f"query stale VM {vbox_name}", check=False)
        folder = vm_dir / vbox_name
        info = parse_machine_readable(result.stdout) if not result.failed else None
        acted = False
        if info is not None:
            state = VBOX_STATES.get(info.get("VMState", ""))
            if state in (VMState.RUNNING, VMState.PAUSED):
                yield self.vbm("controlvm", vbox_name, "poweroff",
                                doing=f"power off stale VM {vbox_name}", timeout=self.long_timeout)
                acted = True
        # A VM process VBoxSVC lost track of: kill it if it is really that VM's.
        try:
            pid = parse_vm_pid((folder / "Logs" / "VBox.log").read_text(errors="replace"))
        except OSError:
            pid = None
        command = " ".join(procinfo.command_line(pid)) if pid and procinfo.is_running(pid) else ""
        if command and (str(folder) in command or vbox_name in command):
            os.kill(pid, signal.SIGKILL)
            acted = True
        if keep_checkpoint:
            return acted
        if info is not None:
            if f"{CONTROLLER}-1-0" in info:
                yield self.vbm("storageattach", vbox_name, "--storagectl", CONTROLLER,
                                "--port", "1", "--device", "0", "--medium", "none",
                                doing="detach the config disk", check=False)
            yield self.vbm("unregistervm", vbox_name, "--delete",
                            doing=f"unregister stale VM {vbox_name}", timeout=self.long_timeout)
        console = Path(info["uartmode1"].split(",", 1)[-1]) if info and "uartmode1" in (
            info or {}) else None
        remove_driver_files(vm_dir, vbox_name, console)
        return True

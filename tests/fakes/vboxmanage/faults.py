"""Failures the fake injects on request: the ones vboxwrapper's users hit.

Tests write ``fake-faults.json`` in ``$VBOX_USER_HOME`` (or name another file
in ``$FAKE_VBOX_FAULTS``); see ``take_fault`` for the format.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from tests.fakes.vboxmanage.store import (
    VBOX_E_INVALID_VM_STATE,
    VBoxError,
    _read_json,
    session_locked,
)

#: Power-up failures a host can produce, as VirtualBox words them in the startvm
#: error and in VBox.log (vboxwrapper: is_logged_failure_vm_extensions_* and
#: is_logged_failure_host_out_of_memory look for these VERR_ names).
START_ERRORS = {
    "VERR_VMX_MSR_ALL_VMX_DISABLED": "VT-x is disabled in the BIOS for all CPU modes",
    "VERR_VMX_MSR_LOCKED_OR_DISABLED": "VT-x is disabled in the BIOS",
    "VERR_SVM_DISABLED": "AMD-V is disabled in the BIOS (or by the host OS)",
    "VERR_VMX_NO_VMX": "VT-x is not available",
    "VERR_SVM_NO_SVM": "AMD-V is not available",
    "VERR_VMX_IN_VMX_ROOT_MODE": "VT-x is being used by another hypervisor",
    "VERR_SVM_IN_USE": "AMD-V is being used by another hypervisor",
    "VERR_NO_MEMORY": "Failed to allocate memory for the guest",
    "VERR_EM_NO_MEMORY": "Unable to allocate and lock memory. The virtual machine will be paused",
}


def take_fault(home: Path, env: dict[str, str], argv: list[str]) -> dict[str, Any] | None:
    """Pop the first matching rule from the faults file, if any.

    The file is a JSON list of rules ``{"command": "controlvm", "contains": "pause",
    "fault": "session_locked", "times": 2}``; ``contains`` is matched against the
    space-joined arguments, ``times`` counts down (absent = every call). Faults:
    ``session_locked``, ``vboxsvc_unreachable``, ``invalid_vm_state``, ``hang``
    (``seconds``, default 3600), ``start_error`` (``verr``, one of START_ERRORS),
    ``crash_after_start`` (the VM process is killed right after startvm).
    """
    path = Path(env.get("FAKE_VBOX_FAULTS") or home / "fake-faults.json")
    rules = _read_json(path) if path.exists() else None
    if not rules:
        return None
    command = argv[0] if argv else ""
    joined = " ".join(argv)
    for index, rule in enumerate(rules):
        if rule.get("command", command) != command or rule.get("contains", "") not in joined:
            continue
        if "times" in rule:
            rule["times"] -= 1
            if rule["times"] <= 0:
                rules.pop(index)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(rules))
            os.replace(tmp, path)
        return rule
    return None


def raise_fault(rule: dict[str, Any], argv: list[str]) -> None:
    fault = rule["fault"]
    target = argv[1] if len(argv) > 1 else "?"
    if fault == "session_locked":
        raise session_locked(target)
    if fault == "vboxsvc_unreachable":
        # What VBoxManage prints when VBoxSVC cannot be started or reached
        # (vboxwrapper: vbm_popen retries CO_E_SERVER_EXEC_FAILURE).
        raise VBoxError("Failed to create the VirtualBox object!\n"
                        "Code CO_E_SERVER_EXEC_FAILURE (0x80080005) - Server execution failed "
                        "(extended info not available)\n"
                        "Most likely, the VirtualBox COM server is not running or failed to start.")
    if fault == "invalid_vm_state":
        raise VBoxError("Invalid machine state: Stuck (must be Running, Paused or Stuck)",
                        VBOX_E_INVALID_VM_STATE, "ConsoleWrap", "IConsole")
    if fault == "vboxdrv_missing":
        raise VBoxError("WARNING: The vboxdrv kernel module is not loaded. Either there is no "
                        "module\n         available for the current kernel or it failed to load.")


def take_fault_locked(home: Path, env: dict[str, str], args: list[str]) -> dict | None:
    """``take_fault`` under a lock of its own, so concurrent calls each take one hit."""
    with open(home / "fake-faults.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return take_fault(home, env, args)

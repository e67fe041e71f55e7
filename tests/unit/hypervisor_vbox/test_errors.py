"""VBoxManage failures -> typed driver errors, with messages a volunteer can act on."""

from __future__ import annotations

import pytest

from vmwrapper.hypervisor import errors
from vmwrapper.hypervisor.vboxmanage import (
    SessionLocked,
    VBoxManageFailed,
    VBoxResult,
    VBoxServiceUnreachable,
    VirtualizationInUse,
    classify,
)


def failed(stderr: str, status: int = 1) -> VBoxResult:
    return VBoxResult(("startvm", "boinc_x"), status, "", stderr)


def details(name: str, code: int, component: str = "ConsoleWrap") -> str:
    return (f"VBoxManage: error: Details: code {name} (0x{code:08x}), component {component}, "
            "interface IConsole\n")


@pytest.mark.parametrize("verr", ["VERR_VMX_MSR_ALL_VMX_DISABLED", "VERR_VMX_MSR_LOCKED_OR_DISABLED",
                                  "VERR_VMX_MSR_VMXON_DISABLED", "VERR_VMX_MSR_SMX_VMXON_DISABLED",
                                  "VERR_SVM_DISABLED"])
def test_vm_extensions_disabled_says_so_for_the_boinc_client(verr):
    error = classify(failed(f"VBoxManage: error: VT-x is disabled in the BIOS ({verr})\n"
                            + details("NS_ERROR_FAILURE", 0x80004005)), "start VM boinc_x")
    assert type(error) is errors.NoVirtualization
    # The client greps stderr for this to set vm_extensions_disabled (vboxwrapper.md 1.11).
    assert "ERR_CPU_VM_EXTENSIONS_DISABLED" in str(error)
    assert "start VM boinc_x" in str(error) and verr in str(error)
    assert not error.transient


@pytest.mark.parametrize(("text", "error_class", "transient"), [
    ("VT-x is not available (VERR_VMX_NO_VMX)", errors.NoVirtualization, False),
    ("AMD-V is not available (VERR_SVM_NO_SVM)", errors.NoVirtualization, False),
    ("VT-x is being used by another hypervisor (VERR_VMX_IN_VMX_ROOT_MODE)",
     VirtualizationInUse, True),
    ("AMD-V is being used by another hypervisor (VERR_SVM_IN_USE)", VirtualizationInUse, True),
    ("Failed to allocate memory for the guest (VERR_NO_MEMORY)", errors.HypervisorFailure, True),
    ("NAT#0: configuration error: failed to set up redirection of 8080 to 10.0.2.15:80. "
     "Probably a conflict with existing services or other rules (VERR_NAT_REDIR_SETUP).",
     errors.PortInUse, True),
    ("VD: error VERR_DISK_FULL writing image file '/s/overlay.vdi' (VERR_DISK_FULL)",
     errors.OutOfDisk, True),
    ("Could not find file for the medium '/p/vm.qcow2' (VERR_FILE_NOT_FOUND)",
     errors.ImageMissing, False),
    ("Could not get the storage format of the medium '/p/vm.qcow2' (VERR_NOT_SUPPORTED)",
     errors.ImageCorrupt, False),
])
def test_verr_names_map_to_typed_errors(text, error_class, transient):
    error = classify(failed(f"VBoxManage: error: {text}\n"), "start VM boinc_x")
    assert type(error) is error_class
    assert error.transient is transient
    # Only disabled or missing extensions may reach the client as ERR_CPU_VM_EXTENSIONS_...
    assert isinstance(error, errors.NoVirtualization) == ("NO_VMX" in text or "NO_SVM" in text)
    assert text.split(" (")[0][:30] in str(error)


def test_session_lock_after_retries_names_the_cause():
    error = classify(failed(
        "VBoxManage: error: The machine 'boinc_x' is already locked for a session\n"
        + details("VBOX_E_INVALID_OBJECT_STATE", 0x80BB0007, "MachineWrap")), "pause VM")
    assert isinstance(error, SessionLocked) and error.transient
    assert "Another VirtualBox management application" in str(error)


def test_vboxsvc_unreachable():
    error = classify(failed(
        "VBoxManage: error: Failed to create the VirtualBox object!\n"
        "VBoxManage: error: Code CO_E_SERVER_EXEC_FAILURE (0x80080005) - Server execution "
        "failed (extended info not available)\n"), "list hostinfo")
    assert isinstance(error, VBoxServiceUnreachable)
    assert "reinstalled" in str(error)


def test_unknown_vm_and_wrong_state():
    missing = classify(failed(
        "VBoxManage: error: Could not find a registered machine named 'boinc_x'\n"
        + details("VBOX_E_OBJECT_NOT_FOUND", 0x80BB0001, "VirtualBoxWrap")), "query")
    assert isinstance(missing, errors.VMNotFound)
    not_running = classify(failed("VBoxManage: error: Machine 'boinc_x' is not currently "
                                  "running\n"), "pause")
    assert isinstance(not_running, errors.VMStateError)
    paused = classify(failed("VBoxManage: error: Invalid machine state: Paused\n"
                             + details("VBOX_E_INVALID_VM_STATE", 0x80BB0002)), "pause")
    assert isinstance(paused, errors.VMStateError)


def test_vboxdrv_missing_means_not_installed():
    error = classify(failed("WARNING: The vboxdrv kernel module is not loaded.\n"), "start")
    assert isinstance(error, errors.HypervisorNotInstalled)
    assert "kernel" in str(error)


def test_syntax_error_is_not_transient_and_keeps_the_result():
    result = failed("VBoxManage: error: Unknown option: --lpt1\n", status=2)
    error = classify(result, "configure VM boinc_x")
    assert isinstance(error, VBoxManageFailed) and not error.transient
    assert error.result is result
    assert "--lpt1" in str(error)


@pytest.mark.parametrize(("text", "temporary", "marker"), [
    ("VT-x is disabled in the BIOS for all CPU modes (VERR_VMX_MSR_ALL_VMX_DISABLED)", False,
     True),
    ("VT-x is being used by another hypervisor (VERR_VMX_IN_VMX_ROOT_MODE)", True, False),
    ("NAT#0: configuration error (VERR_NAT_REDIR_SETUP)", True, False),
])
def test_the_wrapper_turns_them_into_the_right_boinc_ending(text, temporary, marker):
    # vboxwrapper.md 1.11: disabled extensions finish and tell the client; another
    # hypervisor holding VT-x, or a taken port, is a temporary exit.
    from vmwrapper.wrapper.outcome import Ending, outcome_for_error

    outcome = outcome_for_error(classify(failed(f"VBoxManage: error: {text}\n"), "start VM"))
    assert (outcome.ending is Ending.TEMPORARY) is temporary
    assert ("ERR_CPU_VM_EXTENSIONS_DISABLED" in outcome.message) is marker

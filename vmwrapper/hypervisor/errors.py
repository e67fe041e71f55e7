"""Typed errors raised by hypervisor drivers.

Every driver raises these and only these for expected failures, so the wrapper
can map them onto BOINC outcomes without knowing which hypervisor is in use:

* ``transient = True`` means "try again later" (the wrapper makes a temporary
  exit: the host may be busy, a port may be free in a minute);
* ``transient = False`` means the task cannot run on this host as it is set up
  (the wrapper finishes with an error and shows the message to the volunteer).

Each error has a stable ``code`` string (for logs and trickles) and a message
that says what is wrong and what the volunteer can do about it.
"""

from __future__ import annotations


class HypervisorError(Exception):
    """Base class of every driver error.

    :param detail: what happened, in words (paths, names, the hypervisor's own text).
    """

    #: Stable machine-readable identifier; subclasses override it.
    code: str = "hypervisor_error"
    #: True when trying again later may succeed.
    transient: bool = False
    #: What the volunteer can do; appended to the message.
    hint: str = ""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        message = detail if not self.hint else f"{detail}. {self.hint}"
        super().__init__(message)


class HypervisorNotInstalled(HypervisorError):
    """The hypervisor's program (qemu-system-x86_64, VBoxManage) is missing or unusable."""

    code = "hypervisor_not_installed"
    hint = "Install the hypervisor (QEMU or VirtualBox) or ask the project which one it needs"


class NoVirtualization(HypervisorError):
    """The job needs hardware virtualization and the host cannot provide it."""

    code = "no_virtualization"
    hint = ("Enable VT-x/AMD-V in the computer's firmware settings and make sure no other "
            "hypervisor (Hyper-V, WSL2) holds it")


class ImageMissing(HypervisorError):
    """The VM's disk image (or another file the spec names) does not exist."""

    code = "image_missing"
    hint = "Reset the project in BOINC so the image is downloaded again"


class ImageCorrupt(HypervisorError):
    """The disk image exists but the hypervisor cannot read it as a disk image."""

    code = "image_corrupt"
    hint = "Reset the project in BOINC so the image is downloaded again"


class OutOfDisk(HypervisorError):
    """There is no room for the VM's overlay, checkpoint or other files."""

    code = "out_of_disk"
    transient = True
    hint = "Free some disk space or allow BOINC to use more of it"


class PortInUse(HypervisorError):
    """A host port the VM should forward to is already taken by another program."""

    code = "port_in_use"
    transient = True
    hint = "Another program uses this port; the task will try again later"


class VMNotFound(HypervisorError):
    """The driver knows no VM by this name (never created, or destroyed)."""

    code = "vm_not_found"


class VMExists(HypervisorError):
    """A VM by this name already exists in this driver."""

    code = "vm_exists"


class VMStateError(HypervisorError):
    """The operation is not possible in the VM's current state (e.g. pausing a stopped VM)."""

    code = "vm_state"


class CheckpointMissing(HypervisorError):
    """A restore was asked for but the VM has no checkpoint."""

    code = "checkpoint_missing"


class CheckpointFailed(HypervisorError):
    """Saving or restoring a checkpoint failed; the previous checkpoint (if any) is intact."""

    code = "checkpoint_failed"
    transient = True


class OperationTimeout(HypervisorError):
    """The hypervisor did not finish an operation within its deadline."""

    code = "operation_timeout"
    transient = True
    hint = "The computer may be very busy; the task will try again later"


class VMCrashed(HypervisorError):
    """The VM's process ended while an operation was waiting for it."""

    code = "vm_crashed"
    transient = True


class InvalidSpec(HypervisorError):
    """A VMSpec value is unusable (bad name, zero memory, relative path...)."""

    code = "invalid_spec"
    hint = "This is a problem with the project's job description; please tell the project"


class HypervisorFailure(HypervisorError):
    """The hypervisor reported an error that fits no other class; the detail has its text."""

    code = "hypervisor_failure"
    transient = True

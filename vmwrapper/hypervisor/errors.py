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

    A subclass states its traits in its class line, so each kind of error reads
    as one row: ``class OutOfDisk(HypervisorError, code="out_of_disk",
    transient=True, hint="...")``; a trait not given is inherited.

    :param detail: what happened, in words (paths, names, the hypervisor's own text).
    """

    #: Stable machine-readable identifier; subclasses override it.
    code: str = "hypervisor_error"
    #: True when trying again later may succeed.
    transient: bool = False
    #: What the volunteer can do; appended to the message.
    hint: str = ""

    def __init_subclass__(cls, *, code: str | None = None, transient: bool | None = None,
                          hint: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        if transient is not None:
            cls.transient = transient
        if hint is not None:
            cls.hint = hint

    def __init__(self, detail: str) -> None:
        self.detail = detail
        message = detail if not self.hint else f"{detail}. {self.hint}"
        super().__init__(message)


_REDOWNLOAD = "Reset the project in BOINC so the image is downloaded again"


class HypervisorNotInstalled(
        HypervisorError, code="hypervisor_not_installed",
        hint="Install the hypervisor (QEMU or VirtualBox) or ask the project which one it needs"):
    """The hypervisor's program (qemu-system-x86_64, VBoxManage) is missing or unusable."""


class NoVirtualization(
        HypervisorError, code="no_virtualization",
        hint="Enable VT-x/AMD-V in the computer's firmware settings and make sure no other "
             "hypervisor (Hyper-V, WSL2) holds it"):
    """The job needs hardware virtualization and the host cannot provide it."""


class ImageMissing(HypervisorError, code="image_missing", hint=_REDOWNLOAD):
    """The VM's disk image (or another file the spec names) does not exist."""


class ImageCorrupt(HypervisorError, code="image_corrupt", hint=_REDOWNLOAD):
    """The disk image exists but the hypervisor cannot read it as a disk image."""


class OutOfDisk(HypervisorError, code="out_of_disk", transient=True,
                hint="Free some disk space or allow BOINC to use more of it"):
    """There is no room for the VM's overlay, checkpoint or other files."""


class PortInUse(HypervisorError, code="port_in_use", transient=True,
                hint="Another program uses this port; the task will try again later"):
    """A host port the VM should forward to is already taken by another program."""


class VMNotFound(HypervisorError, code="vm_not_found"):
    """The driver knows no VM by this name (never created, or destroyed)."""


class VMExists(HypervisorError, code="vm_exists"):
    """A VM by this name already exists in this driver."""


class VMStateError(HypervisorError, code="vm_state"):
    """The operation is not possible in the VM's current state (e.g. pausing a stopped VM)."""


class CheckpointMissing(HypervisorError, code="checkpoint_missing"):
    """A restore was asked for but the VM has no checkpoint."""


class CheckpointFailed(HypervisorError, code="checkpoint_failed", transient=True):
    """Saving or restoring a checkpoint failed; the previous checkpoint (if any) is intact."""


class OperationTimeout(HypervisorError, code="operation_timeout", transient=True,
                       hint="The computer may be very busy; the task will try again later"):
    """The hypervisor did not finish an operation within its deadline."""


class VMCrashed(HypervisorError, code="vm_crashed", transient=True):
    """The VM's process ended while an operation was waiting for it."""


class InvalidSpec(
        HypervisorError, code="invalid_spec",
        hint="This is a problem with the project's job description; please tell the project"):
    """A VMSpec value is unusable (bad name, zero memory, relative path...)."""


class HypervisorFailure(HypervisorError, code="hypervisor_failure", transient=True):
    """The hypervisor reported an error that fits no other class; the detail has its text."""

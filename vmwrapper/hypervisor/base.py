"""The hypervisor driver interface: what the wrapper may ask of any hypervisor.

This module is the specification every driver (``qemu.QemuDriver``,
``virtualbox.VirtualBoxDriver``, test fakes) implements, and the vocabulary the
wrapper uses. Hypervisor-specific ids (QEMU pids and sockets, VirtualBox UUIDs)
never leave a driver: callers name a VM by ``VMSpec.name`` only.

Conventions
-----------
* A driver is constructed with a Twisted reactor (``IReactorTime`` +
  ``IReactorProcess``; tests pass a ``task.Clock`` where no process is spawned).
  No driver method blocks: every operation returns a ``Deferred`` that fires
  with the documented result or fails with an error from ``errors.py``.
  Drivers never call ``time.sleep``; every wait has a deadline taken from the
  driver's clock and fails with ``OperationTimeout`` when it passes.
* One driver instance may hold several VMs, each named uniquely. The wrapper
  uses one VM per BOINC slot, named after the slot's result.
* Every file a driver creates for a VM lives in ``VMSpec.vm_dir`` (the overlay
  disk, checkpoints, sockets, pid files, the console log unless the spec puts it
  elsewhere). ``destroy`` removes all of them and the VM's processes; the base
  image, the config disk and the shared folder are the caller's and are never
  written or removed.
* The base image is never modified: the VM writes to a copy-on-write overlay.
* State changes the VM makes on its own (guest power-off, hypervisor crash) are
  reported through ``when_stopped`` as soon as the driver learns of them.

Lifecycle::

    create ──> STOPPED ──start──> RUNNING <──pause/resume──> PAUSED
                  ^                  │  │                       │
                  └────power_off─────┘  └──(process died)──> CRASHED
    save_checkpoint: RUNNING/PAUSED -> same state; restore_checkpoint: any created state -> RUNNING
    destroy: any state -> ABSENT (no file, no process left)

Adding a driver: subclass ``HypervisorDriver``, implement every abstract
method, set ``capabilities``, and register a factory in the contract suite
(``tests/integration/hypervisor/conftest.py`` explains how).
"""

from __future__ import annotations

import abc
import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmwrapper.hypervisor.errors import InvalidSpec

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

#: VM names: safe as file names and as hypervisor object names.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class VMState(enum.Enum):
    """Where a VM is in its lifecycle, the same for every hypervisor.

    Drivers map their own states onto these in a commented table; when a backend
    state fits two members, the driver picks the one that tells the wrapper what
    it may do next.
    """

    #: Unknown to the driver: never created, or destroyed.
    ABSENT = "absent"
    #: Created (files in place) and not running: before the first start, after
    #: ``power_off``, or after the guest powered itself off cleanly.
    STOPPED = "stopped"
    #: The guest executes.
    RUNNING = "running"
    #: The guest is frozen in memory (``pause``); its clock does not advance.
    PAUSED = "paused"
    #: The VM's process ended without being asked to (killed, hypervisor abort,
    #: guest panic). Its disk and checkpoints are still there: ``restore_checkpoint``
    #: or ``start`` may bring it back, ``destroy`` removes it.
    CRASHED = "crashed"

    @property
    def is_alive(self) -> bool:
        """True for the states in which the VM has a live process (RUNNING, PAUSED)."""
        return self in (VMState.RUNNING, VMState.PAUSED)


@dataclass(frozen=True)
class PortForward:
    """A NAT port forward from the host's loopback into the guest.

    :param host_port: port on ``host_address`` (1-65535). The driver raises
        ``PortInUse`` from ``start`` when another program holds it.
    :param guest_port: port inside the guest.
    :param protocol: ``"tcp"`` or ``"udp"``.
    :param host_address: the host address to listen on. Loopback by default;
        anything else exposes the guest to the network and must be asked for.
    """

    host_port: int
    guest_port: int
    protocol: str = "tcp"
    host_address: str = "127.0.0.1"

    def __post_init__(self) -> None:
        for label, port in (("host_port", self.host_port), ("guest_port", self.guest_port)):
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise InvalidSpec(f"port forward {label}={port!r} is not a port number 1-65535")
        if self.protocol not in ("tcp", "udp"):
            raise InvalidSpec(f"port forward protocol {self.protocol!r} is not 'tcp' or 'udp'")


@dataclass(frozen=True)
class SharedFolder:
    """One host directory made visible inside the guest.

    Only the directory the job names is shared, never a parent of it.

    :param host_path: absolute path of an existing host directory.
    :param tag: the name the guest mounts it by (virtio-9p mount tag, VirtualBox
        shared-folder name).
    :param read_only: when True the guest cannot write to it.
    """

    host_path: Path
    tag: str = "shared"
    read_only: bool = False

    def __post_init__(self) -> None:
        if not Path(self.host_path).is_absolute():
            raise InvalidSpec(f"shared folder {self.host_path} is not an absolute path")
        if Path(self.host_path) == Path("/"):
            raise InvalidSpec("sharing the host's root directory is not allowed")
        if not _NAME_RE.match(self.tag):
            raise InvalidSpec(f"shared folder tag {self.tag!r} must be letters, digits, '_.-'")


@dataclass(frozen=True)
class VMSpec:
    """Everything a driver needs to create one VM. Immutable; validated on construction.

    :param name: unique VM name: letters, digits, ``_.-``, at most 64 characters.
    :param base_image: the read-only disk image the VM boots from (qcow2, raw,
        VDI or VMDK, whatever the driver supports). Never modified.
    :param vm_dir: directory (inside the BOINC slot) that holds every file the
        driver creates for this VM. Created if missing.
    :param memory_mb: guest RAM in MiB (at least 64).
    :param cpus: number of virtual CPUs (1-64).
    :param config_disk: optional read-only contextualization disk (an ISO9660
        image labelled ``cidata``, see ``vmwrapper.appliance.userdata``); the
        guest sees it as an extra disk or CD-ROM.
    :param shared_folder: optional host directory shared into the guest.
    :param port_forwards: NAT forwards host -> guest; only used when ``network`` is on.
    :param network: when False the guest has no network device at all.
    :param console_log: where the guest's serial console is written; default
        ``vm_dir / "console.log"``.
    :param extra: driver-specific knobs by name (documented by each driver);
        unknown keys are rejected by the driver, never ignored.
    """

    name: str
    base_image: Path
    vm_dir: Path
    memory_mb: int = 512
    cpus: int = 1
    config_disk: Path | None = None
    shared_folder: SharedFolder | None = None
    port_forwards: tuple[PortForward, ...] = ()
    network: bool = True
    console_log: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise InvalidSpec(
                f"VM name {self.name!r} must be 1-64 letters, digits or '_.-', "
                "starting with a letter or digit")
        for label in ("base_image", "vm_dir"):
            value = Path(getattr(self, label))
            if not value.is_absolute():
                raise InvalidSpec(f"{label} {value} is not an absolute path")
            object.__setattr__(self, label, value)
        for label in ("config_disk", "console_log"):
            value = getattr(self, label)
            if value is not None:
                value = Path(value)
                if not value.is_absolute():
                    raise InvalidSpec(f"{label} {value} is not an absolute path")
                object.__setattr__(self, label, value)
        if not isinstance(self.memory_mb, int) or self.memory_mb < 64:
            raise InvalidSpec(f"memory_mb={self.memory_mb!r}: a VM needs at least 64 MiB")
        if not isinstance(self.cpus, int) or not 1 <= self.cpus <= 64:
            raise InvalidSpec(f"cpus={self.cpus!r}: must be 1-64")
        object.__setattr__(self, "port_forwards", tuple(self.port_forwards))
        host_ports = [(f.protocol, f.host_port) for f in self.port_forwards]
        if len(set(host_ports)) != len(host_ports):
            raise InvalidSpec("two port forwards use the same host port")

    @property
    def console_log_path(self) -> Path:
        """The console log file: ``console_log`` or ``vm_dir/console.log``."""
        return self.console_log or self.vm_dir / "console.log"


@dataclass(frozen=True)
class Capabilities:
    """What a driver can do. Callers check these flags instead of catching
    ``NotImplementedError``; the contract suite skips a test whose flag is False.
    Every flag defaults to False so that a new flag never claims too much.
    """

    #: ``pause``/``resume`` freeze the guest in memory.
    pause: bool = False
    #: ``save_checkpoint``/``restore_checkpoint`` work.
    checkpoint: bool = False
    #: A checkpoint survives the VM's process being killed and the wrapper restarting.
    checkpoint_survives_crash: bool = False
    #: ``shared_folder`` in the spec is honoured.
    shared_folder: bool = False
    #: ``port_forwards`` in the spec are honoured.
    port_forward: bool = False
    #: ``config_disk`` in the spec is attached.
    config_disk: bool = False
    #: ``cpu_time`` reports the VM's own CPU time (not 0).
    cpu_time: bool = False
    #: ``memory_use`` reports the VM's resident memory (not 0).
    memory_use: bool = False
    #: ``console_log`` returns the guest's serial console.
    console_log: bool = False
    #: ``power_off(grace > 0)`` asks the guest to shut down (ACPI power button) first.
    graceful_shutdown: bool = False


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint that ``save_checkpoint`` wrote.

    :param name: the driver's name for it (a snapshot tag or file name).
    :param created: the driver clock's time (``reactor.seconds()``) when it completed.
    :param size_bytes: how much disk it takes, when known (0 otherwise).
    """

    name: str
    created: float
    size_bytes: int = 0


@dataclass(frozen=True)
class HostInfo:
    """What ``probe_host`` found out about the hypervisor on this host.

    :param hypervisor: ``"qemu"``, ``"virtualbox"``...
    :param version: the hypervisor's version string as it reports it.
    :param accelerated: True when hardware virtualization will be used.
    :param detail: one human line (e.g. "KVM probe boot hung; using TCG").
    """

    hypervisor: str
    version: str
    accelerated: bool
    detail: str = ""


class HypervisorDriver(abc.ABC):
    """A hypervisor the wrapper can run VMs with. See the module docstring for conventions.

    :param reactor: the Twisted reactor (or a ``MemoryReactorClock`` in unit tests)
        used for every process, socket and timer.
    """

    #: What this driver can do; subclasses replace it.
    capabilities: Capabilities = Capabilities()
    #: Short lowercase name used in logs, config and the contract suite ids.
    name: str = "abstract"

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    # -- host ---------------------------------------------------------------

    @abc.abstractmethod
    def probe_host(self) -> Deferred[HostInfo]:
        """Check the hypervisor is installed and usable; choose the accelerator.

        May take a few seconds the first time (QEMU boots a probe VM to test KVM);
        the result is cached by the driver.

        :returns: Deferred firing with a ``HostInfo``.
        :raises HypervisorNotInstalled: the program is missing or does not run.
        :raises NoVirtualization: the driver needs hardware support that is absent.
        """

    # -- lifecycle ----------------------------------------------------------

    @abc.abstractmethod
    def create(self, spec: VMSpec) -> Deferred[None]:
        """Create (register) the VM described by ``spec``, in state STOPPED.

        Creates ``spec.vm_dir`` and the copy-on-write overlay over
        ``spec.base_image``. If ``vm_dir`` already holds this VM's overlay from an
        earlier run (the wrapper was restarted), it is adopted as it is, with its
        checkpoints, so ``restore_checkpoint`` can continue the work; call
        ``cleanup_stale`` first so that no earlier process still holds it. An
        overlay made from a different base image is replaced, checkpoint and all.

        :raises VMExists: this driver instance already has a VM by that name.
        :raises ImageMissing: ``base_image`` or ``config_disk`` does not exist.
        :raises ImageCorrupt: the base image is not a disk image the driver can read.
        :raises OutOfDisk: no room for the overlay.
        :raises HypervisorNotInstalled: see ``probe_host``.
        """

    @abc.abstractmethod
    def start(self, name: str) -> Deferred[None]:
        """Boot the VM from its disk (STOPPED or CRASHED -> RUNNING).

        Fires once the hypervisor runs the VM and the driver controls it; it does
        not wait for the guest's OS (the wrapper waits for the agent's hello).

        :raises VMStateError: the VM is already RUNNING or PAUSED.
        :raises PortInUse: a forwarded host port is taken.
        :raises OperationTimeout: the hypervisor did not come up in time (its
            process is killed before this error is raised).
        """

    @abc.abstractmethod
    def pause(self, name: str) -> Deferred[None]:
        """Freeze the guest (RUNNING -> PAUSED). Pausing a PAUSED VM is a no-op.

        The guest's clock stops; no guest CPU time is used while paused.

        :raises VMStateError: the VM is not RUNNING or PAUSED.
        """

    @abc.abstractmethod
    def resume(self, name: str) -> Deferred[None]:
        """Unfreeze the guest (PAUSED -> RUNNING). Resuming a RUNNING VM is a no-op.

        :raises VMStateError: the VM is not RUNNING or PAUSED.
        """

    @abc.abstractmethod
    def save_checkpoint(self, name: str) -> Deferred[Checkpoint]:
        """Save the whole VM (memory, devices, disk) so it can continue from here later.

        The VM is left in the state it was in (RUNNING or PAUSED). The new
        checkpoint is written completely before the previous one is removed, so
        a crash at any moment leaves at least one usable checkpoint. Only the
        newest checkpoint is kept (volunteers' disks must not fill up).

        :returns: Deferred firing with the new ``Checkpoint``.
        :raises VMStateError: the VM is not RUNNING or PAUSED.
        :raises CheckpointFailed: writing failed; the previous checkpoint is intact.
        :raises OutOfDisk: no room for it; the previous checkpoint is intact.
        """

    @abc.abstractmethod
    def restore_checkpoint(self, name: str) -> Deferred[None]:
        """Continue the VM from its newest checkpoint, in state RUNNING.

        Works from STOPPED, CRASHED, RUNNING or PAUSED (a live VM is replaced).
        Guest network connections are rolled back with the guest, so the guest
        agent must reconnect.

        :raises CheckpointMissing: there is no checkpoint.
        :raises CheckpointFailed: the checkpoint could not be loaded.
        """

    @abc.abstractmethod
    def has_checkpoint(self, name: str) -> Deferred[bool]:
        """Tell whether ``restore_checkpoint`` has something to restore."""

    @abc.abstractmethod
    def power_off(self, name: str, grace: float = 0.0) -> Deferred[None]:
        """Stop the VM (any state -> STOPPED); a STOPPED or CRASHED VM is left as it is.

        :param grace: seconds to let the guest shut down after an ACPI power-button
            press (only with ``capabilities.graceful_shutdown``); 0 pulls the plug.
            After the grace period the VM is stopped hard.
        """

    @abc.abstractmethod
    def destroy(self, name: str) -> Deferred[None]:
        """Power the VM off and remove every process and file the driver made for it.

        Afterwards the state is ABSENT and ``vm_dir`` holds nothing the driver
        created (the directory itself is removed when empty). Destroying an
        ABSENT VM is a no-op, so cleanup paths may call it unconditionally.
        """

    # -- observation ----------------------------------------------------------

    @abc.abstractmethod
    def state(self, name: str) -> Deferred[VMState]:
        """The VM's current state; ``VMState.ABSENT`` for an unknown name."""

    @abc.abstractmethod
    def when_stopped(self, name: str) -> Deferred[VMState]:
        """A Deferred that fires when the VM's process ends, for whatever reason.

        Fires with STOPPED (clean power-off, by ``power_off`` or by the guest) or
        CRASHED, at once if the VM is not alive. Each call returns a new Deferred;
        cancelling it has no effect on the VM.
        """

    @abc.abstractmethod
    def cpu_time(self, name: str) -> Deferred[float]:
        """CPU seconds the VM's process(es) used since the last ``start``/restore.

        The wrapper adds the time saved with its checkpoint.
        0.0 when the driver cannot tell (``capabilities.cpu_time`` is False).
        """

    @abc.abstractmethod
    def memory_use(self, name: str) -> Deferred[int]:
        """Resident memory of the VM's process(es) in bytes; 0 when unknown."""

    @abc.abstractmethod
    def console_log(self, name: str, max_bytes: int = 65536) -> Deferred[str]:
        """The last ``max_bytes`` of the guest's serial console, decoded leniently.

        Used to show why a boot failed (kernel panic, missing root disk).
        Empty when there is no log.
        """

    # -- recovery -----------------------------------------------------------

    @abc.abstractmethod
    def cleanup_stale(self, vm_dir: Path, keep_checkpoint: bool = True) -> Deferred[list[str]]:
        """Remove what a crashed earlier run left in ``vm_dir``.

        Kills the hypervisor processes a previous wrapper started for a VM in
        ``vm_dir`` (found from a record the driver keeps there, and checked to be
        really that process before it is killed) and removes their runtime files.
        Never touches anything outside ``vm_dir`` or VMs it did not create.

        :param keep_checkpoint: when True the overlay disk and its checkpoint stay
            (the wrapper will resume); when False every driver file goes.
        :returns: Deferred firing with the names of the VMs cleaned up (empty
            when there was nothing to do).
        """

"""The job description as typed, immutable data.

One dataclass field per XML element, named exactly like the element, so the
file, this model, ``check-job --json`` and the docs all use one vocabulary.
Each field's metadata holds the element's *kind* (how to read its text, see
:mod:`vmwrapper.job.values`) and a one-line meaning: the parser and the
settings printer are driven by these fields, so adding an option is one line.

Three root elements are accepted and mean the same vocabulary:

* ``<vbox_job>``: vboxwrapper's ``vbox_job.xml``, reused unchanged (no tasks: the
  appliance runs its own payload until ``job_duration``, a completion trigger
  file, or power-off);
* ``<job_desc>``: the BOINC wrapper's ``job.xml`` with ``<task>``\\ s;
* ``<vm_job>``: ours, which may mix both plus our own elements.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vmwrapper.job.broker import Broker
from vmwrapper.job.values import (
    BrokerUrl,
    Choice,
    EnvSetting,
    FileName,
    Flag,
    GuestPath,
    HypervisorList,
    Integer,
    Kind,
    LogicalName,
    Number,
    Pattern,
    Text,
)

#: Accepted root elements (see the module docstring).
ROOT_ELEMENTS = ("vm_job", "vbox_job", "job_desc")

#: Elements vboxwrapper once read and has dropped: old files still load, with a warning.
RETIRED_ELEMENTS = {"enable_gbac": "vboxwrapper removed GBAC support in 2025"}

#: BOINC's process priorities for ``<task><priority>`` (``lib/common_defs.h``).
PRIORITY_NAMES = {1: "lowest", 2: "low", 3: "normal", 4: "high", 5: "highest"}

#: vboxwrapper never gives a VM less memory than this (MB).
MIN_MEMORY_SIZE_MB = 512.0
#: vboxwrapper clamps ``vram_size_mb`` into this range.
VRAM_RANGE_MB = (16.0, 128.0)


def option(default: Any, kind: Kind, doc: str, *, required: bool = False) -> Any:
    """A field read from one element of the given kind."""
    meta = {"kind": kind, "doc": doc, "required": required}
    return field(default=default, metadata=meta)


def repeated(kind: Kind, doc: str) -> Any:
    """A field read from an element that may appear any number of times."""
    return field(default=(), metadata={"kind": kind, "doc": doc, "repeated": True})


def blocks(cls: type, doc: str) -> Any:
    """A field read from repeated elements that have child elements of their own."""
    return field(default=(), metadata={"block": cls, "doc": doc, "repeated": True})


def xml_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of *cls* that are read from XML elements."""
    return [f for f in dataclasses.fields(cls) if "doc" in f.metadata]


_SECONDS = Number("seconds")
_SHARED_FILE = FileName("the shared directory", "progress")
_SLOT_FILE = FileName("the slot directory", "input.dat")
_PORT = Integer("a TCP port", 1, 65535, "8080")
_OPTIONAL_PORT = Integer("a TCP port, 0 for none", 0, 65535, "80")


@dataclass(frozen=True)
class PortForward:
    """``<port_forward>``: forward host TCP port(s) to the guest (vboxwrapper semantics)."""

    host_port: int = option(0, _PORT, "port on the host", required=True)
    guest_port: int = option(0, _PORT, "port in the guest", required=True)
    is_remote: bool = option(False, Flag(), "listen on all host addresses, not only 127.0.0.1")
    nports: int = option(0, Integer("a number of ports", 0, 65535, "4"),
                         "forward this many consecutive ports (0 = just one)")
    line: int = field(default=0, compare=False)

    def ports(self) -> list[tuple[int, int]]:
        """Every (host port, guest port) pair this block forwards."""
        return [(self.host_port + i, self.guest_port + i) for i in range(max(self.nports, 1))]


@dataclass(frozen=True)
class GuestFile:
    """A file copied into (``<copy_to_guest>``) or out of (``<copy_from_guest>``) the guest.

    The short form ``<copy_to_guest>NAME</copy_to_guest>`` means the same name on
    both sides. Logical names are resolved through BOINC's soft links at run time.
    """

    logical_name: str = option("", LogicalName("input.dat"), "BOINC logical name in the slot")
    guest_path: str = option("", GuestPath(), "path in the guest (default: the logical name)")
    optional: bool = option(False, Flag(), "a missing file is skipped instead of failing the job")
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Task:
    """``<task>``: one program, run in order (BOINC wrapper semantics) in the guest or on the host.

    ``application`` is, for a host task, the logical name of an app-version file
    (as in BOINC's wrapper); for a guest task, a program in the guest (a path,
    or a name on the guest's PATH). File names are relative to the slot (host)
    or to the guest's work directory (guest). Daemons may run in either place.
    """

    application: str = option("", Text("a program name", "worker", nonempty=True),
                              "logical name of the program to run", required=True)
    where: str = option("guest", Choice(("guest", "host")), "run it in the guest VM or on the host")
    command_line: str = option("", Text("arguments", "--events 1000"),
                               "arguments ($PROJECT_DIR, $NTHREADS, $PWD are substituted)")
    setenv: tuple[tuple[str, str], ...] = repeated(EnvSetting(), "environment variable NAME=value")
    exec_dir: str = option("", Text("a directory", "work"), "working directory")
    stdin_filename: str = option("", _SLOT_FILE, "file fed to standard input")
    stdout_filename: str = option("", _SLOT_FILE, "file receiving standard output")
    stderr_filename: str = option("", _SLOT_FILE, "file receiving standard error")
    checkpoint_filename: str = option("", _SLOT_FILE, "a change of its mtime = task checkpointed")
    fraction_done_filename: str = option("", _SLOT_FILE,
                                         "last number in its last 32 bytes = task progress")
    weight: float = option(1.0, Number("units of work", example="1"),
                           "share of the job's overall fraction done")
    time_limit: float = option(0.0, _SECONDS, "stop the task after this elapsed time (0 = none)")
    daemon: bool = option(False, Flag(), "start first, run beside the others, kill at the end")
    multi_process: bool = option(False, Flag(), "suspend and resume the whole process tree")
    append_cmdline_args: bool = option(False, Flag(),
                                       "append the arguments after --passthrough_child")
    forward_slashes: bool = option(False, Flag(), "use / in paths on Windows hosts")
    priority: int = option(1, Integer("a BOINC priority (1 lowest .. 5 highest)", 1, 5),
                           "process priority, 1 lowest .. 5 highest")
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ZipOutput:
    """``<zip_output>``: zip output files matching ``filename`` patterns into ``zipfilename``."""

    zipfilename: str = option("", LogicalName("results.zip"), "logical name of the zip file",
                              required=True)
    filename: tuple[str, ...] = repeated(Pattern(), "regular expression of files to include")
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class UnzipInput:
    """``<unzip_input>``: zip files unpacked into the slot before the first task."""

    zipfilename: tuple[str, ...] = repeated(LogicalName("inputs.zip"), "logical name of a zip")
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class AppFlags:
    """The application's command-line flags (app version or work unit), as given.

    ``None`` means "not given". See :mod:`vmwrapper.job.flags`.
    """

    trickle: float | None = None
    nthreads: float | None = None
    memory_size_mb: float | None = None
    vmimage: int | None = None
    register_only: bool = False
    sporadic: bool = False
    device: int | None = None
    use_tstp: bool = False
    passthrough_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobDescription:
    """Everything a job file says, with defaults for what it leaves out."""

    # --- vboxwrapper's vbox_job.xml (complete; defaults as in vboxwrapper) ---
    os_name: str = option("", Text("a VirtualBox OS type", "Linux26_64"), "VirtualBox OS type")
    memory_size_mb: float = option(0.0, Number("megabytes", example="2048"),
                                   f"VM memory (raised to {MIN_MEMORY_SIZE_MB:.0f})")
    vram_size_mb: float = option(16.0, Number("megabytes", example="16"),
                                 "video memory, clamped to 16..128")
    vm_disk_controller_type: str = option(
        "sata", Choice(("sata", "ide", "scsi", "sas", "pcie", "virtio", "usb", "floppy")),
        "disk controller bus")
    vm_disk_controller_model: str = option(
        "IntelAHCI", Choice(("IntelAHCI", "PIIX3", "PIIX4", "ICH6", "LSILogic", "LSILogicSAS",
                             "BusLogic", "NVMe", "VirtIO", "USB", "I82078")),
        "disk controller chip")
    vm_graphics_controller_type: str = option(
        "VBoxVGA", Choice(("VBoxVGA", "VMSVGA", "VBoxSVGA", "QXL", "none")), "graphics adapter")
    job_duration: float = option(0.0, _SECONDS, "elapsed time that ends the job (0 = none)")
    minimum_checkpoint_interval: float = option(600.0, _SECONDS, "least time between checkpoints")
    minimum_heartbeat_interval: float = option(600.0, Number("seconds", minimum=None, above=0.0),
                                               "the heartbeat file must change this often")
    fraction_done_filename: str = option("", _SHARED_FILE, "guest-written progress file")
    heartbeat_filename: str = option("", _SHARED_FILE, "guest-touched heartbeat file")
    completion_trigger_file: str = option("", _SHARED_FILE, "guest writes it to end the job")
    temporary_exit_trigger_file: str = option("", _SHARED_FILE,
                                              "guest writes it to ask for a temporary exit")
    multiattach_vdi_file: str = option("", FileName("the project directory", "base.vdi"),
                                       "shared parent image in the project directory")
    enable_cern_dataformat: bool = option(False, Flag(), "CERN-format NAME=value context floppy")
    enable_network: bool = option(False, Flag(), "connect the VM's network (and port forwards)")
    network_bridged_mode: bool = option(False, Flag(), "bridged networking instead of NAT")
    enable_nat_dns_host_resolver: bool = option(False, Flag(), "NAT resolves DNS through the host")
    vm_network_driver: str = option("", Text("a NIC type", "virtio"), "network adapter type")
    enable_shared_directory: bool = option(False, Flag(), "share slot/shared as 'shared'")
    share_slot_dir: bool = option(False, Flag(), "share the slot directory as 'shared'")
    enable_scratch_directory: bool = option(False, Flag(), "share project/scratch as 'scratch'")
    share_project_dir: bool = option(False, Flag(), "share the project directory as 'project'")
    copy_to_shared: tuple[str, ...] = repeated(_SLOT_FILE, "slot file copied into shared/")
    copy_cmdline_to_shared: bool = option(False, Flag(), "write the arguments to shared/cmdline")
    enable_floppyio: bool = option(False, Flag(), "attach a FloppyIO context floppy")
    enable_isocontextualization: bool = option(False, Flag(), "attach vm_isocontext.iso as a DVD")
    enable_cache_disk: bool = option(False, Flag(), "attach vm_cache.vdi as a second disk")
    boot_iso: bool = option(False, Flag(), "boot from the DVD before the disk")
    enable_remotedesktop: bool = option(False, Flag(), "VirtualBox remote desktop (VRDE)")
    enable_screenshots_on_error: bool = option(False, Flag(), "screenshot the VM on fatal errors")
    enable_graphics_support: bool = option(False, Flag(), "report BOINC graphics status")
    enable_vm_savestate_usage: bool = option(False, Flag(), "save the VM state on quit")
    disable_automatic_checkpoints: bool = option(False, Flag(), "never snapshot the VM")
    pf_guest_port: int = option(0, _OPTIONAL_PORT, "guest port of the web-graphics forward")
    pf_host_port: int = option(0, _OPTIONAL_PORT, "host port of it (0 = any free port)")
    port_forward: tuple[PortForward, ...] = blocks(PortForward, "forward host ports to the guest")
    trickle_trigger_file: tuple[str, ...] = repeated(_SHARED_FILE,
                                                     "guest file sent as a trickle-up")
    intermediate_upload_file: tuple[str, ...] = repeated(_SHARED_FILE,
                                                         "guest file uploaded mid-job")
    # --- BOINC wrapper's job.xml, outside tasks ---
    unzip_input: tuple[UnzipInput, ...] = blocks(UnzipInput, "zip files to unpack first")
    zip_output: tuple[ZipOutput, ...] = blocks(ZipOutput, "zip files to build from outputs")
    # --- ours ---
    hypervisor: tuple[str, ...] = option(("auto",), HypervisorList(),
                                         "auto, or drivers in order of preference")
    image: str = option("vm_image.vdi", LogicalName(), "logical name of the appliance image")
    broker: Broker = option(Broker(), BrokerUrl(), "embedded, or an external STOMP URL")
    boot_timeout: float = option(300.0, Number("seconds", minimum=None, above=0.0, example="300"),
                                 "how long the guest agent has to say hello")
    trickle_period: float = option(3600.0, Number("seconds", example="3600"),
                                   "seconds between CPU-time trickles (0 = none)")
    copy_to_guest: tuple[GuestFile, ...] = blocks(GuestFile, "slot file copied into the guest")
    copy_from_guest: tuple[GuestFile, ...] = blocks(GuestFile, "guest file copied out to the slot")
    task: tuple[Task, ...] = blocks(Task, "programs run in order")
    # --- where it came from ---
    root: str = "vm_job"
    source: str = "job.xml"
    #: element name -> line of its first occurrence (absent = default)
    lines: dict[str, int] = field(default_factory=dict, compare=False)
    flags: AppFlags = AppFlags()

    @property
    def needs_vm(self) -> bool:
        """False only for a job whose tasks all run on the host (no hypervisor, no broker)."""
        return not self.task or any(task.where == "guest" for task in self.task)

    @property
    def vm_memory_mb(self) -> float:
        """The memory the VM gets: ``memory_size_mb`` raised to vboxwrapper's minimum."""
        return max(self.memory_size_mb, MIN_MEMORY_SIZE_MB)

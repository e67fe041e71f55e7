"""The fake VBoxManage's state: registry, machines, media, images, VM processes, logs.

Everything lives under ``$VBOX_USER_HOME`` and the machines' folders (see
``fake_vboxmanage.py`` for the layout); this module reads and writes it and
defines how failures are printed (``VBoxError``).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

DEFAULT_VERSION = "7.0.14r161095"
PROGRESS = "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%"

# COM/XPCOM result codes VBoxManage prints as "(0x...)"; vboxwrapper's vbm_popen_raw
# parses the first "(0x" in the output as the error (vboxwrapper: vbm_popen_raw).
VBOX_E_OBJECT_NOT_FOUND = ("VBOX_E_OBJECT_NOT_FOUND", 0x80BB0001)
VBOX_E_INVALID_VM_STATE = ("VBOX_E_INVALID_VM_STATE", 0x80BB0002)
VBOX_E_FILE_ERROR = ("VBOX_E_FILE_ERROR", 0x80BB0004)
VBOX_E_IPRT_ERROR = ("VBOX_E_IPRT_ERROR", 0x80BB0005)
VBOX_E_INVALID_OBJECT_STATE = ("VBOX_E_INVALID_OBJECT_STATE", 0x80BB0007)
VBOX_E_OBJECT_IN_USE = ("VBOX_E_OBJECT_IN_USE", 0x80BB000C)
NS_ERROR_FAILURE = ("NS_ERROR_FAILURE", 0x80004005)
E_INVALIDARG = ("E_INVALIDARG", 0x80070057)
CO_E_SERVER_EXEC_FAILURE = ("CO_E_SERVER_EXEC_FAILURE", 0x80080005)


ONLINE = ("running", "paused")


class VBoxError(Exception):
    """A VBoxManage failure: the lines it prints on stderr and its exit status.

    The layout ("VBoxManage: error: <text>", then "Details: code NAME (0x...),
    component ..., interface ...", then "Context: ...") is the one users paste
    in forum posts and vboxwrapper logs (vboxwrapper: vbm_popen_raw parses it).
    """

    def __init__(self, message: str, code: tuple[str, int] | None = None,
                 component: str = "MachineWrap", interface: str = "IMachine",
                 context: str | None = None, status: int = 1) -> None:
        super().__init__(message)
        lines = [f"VBoxManage: error: {line}" for line in message.splitlines()]
        if code is not None:
            lines.append(f"VBoxManage: error: Details: code {code[0]} (0x{code[1]:08x}), "
                         f"component {component}, interface {interface}, callee nsISupports")
        if context:
            lines.append(f'VBoxManage: error: Context: "{context}"')
        self.text = "\n".join(lines) + "\n"
        self.status = status


def syntax_error(message: str) -> VBoxError:
    """Bad arguments: exit status 2 (RTEXITCODE_SYNTAX), e.g. "Unknown option: --lpt1"
    (the top failure in BOINC/boinc#1501)."""
    return VBoxError(message, status=2)


def not_found(name: str) -> VBoxError:
    # manual: showvminfo; vboxwrapper: is_registered looks for VBOX_E_OBJECT_NOT_FOUND.
    return VBoxError(f"Could not find a registered machine named '{name}'",
                     VBOX_E_OBJECT_NOT_FOUND, "VirtualBoxWrap", "IVirtualBox",
                     "FindMachine(Bstr(a->argv[0]).raw(), machine.asOutParam())")


def session_locked(name: str) -> VBoxError:
    # The error every "another VirtualBox program holds the session" case shows
    # (vboxwrapper: vbm_popen retries VBOX_E_INVALID_OBJECT_STATE with doubling sleep).
    return VBoxError(f"The machine '{name}' is already locked for a session (or being unlocked)",
                     VBOX_E_INVALID_OBJECT_STATE, context="LockMachine(a->session, LockType_Write)")


def parse_version(text: str) -> tuple[int, int, int]:
    """``7.0.14_SUSEr161095`` -> (7, 0, 14); anything unparsable counts as newest
    (BOINC PR #5587: an "Unknown" version must not select pre-4.3 options)."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(g) for g in match.groups()) if match else (99, 0, 0)  # type: ignore[return-value]


# -- processes --------------------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None if the
    process is gone or a zombie: together with the pid it identifies a process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_alive(pid: int | None, start: int | None) -> bool:
    return bool(pid) and start is not None and process_start_time(pid) == start


def _process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def freeze(pid: int, frozen: bool) -> None:
    """SIGSTOP/SIGCONT the VM process and wait until it is so, as ``controlvm
    pause``/``resume`` return only once the VM is paused/running."""
    os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        state = _process_state(pid)
        if state in ("Z", "X") or (state in ("T", "t")) == frozen:
            return
        time.sleep(0.001)


def kill_process(pid: int, start: int | None) -> None:
    """SIGKILL the VM process if it is still the one we started, and wait for it."""
    if not process_alive(pid, start):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while process_alive(pid, start) and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.005)


# -- the store ----------------------------------------------------------------------


class Store:
    """The registry and machine settings files under one VBOX_USER_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.registry_path = home / "fake-VirtualBox.json"
        if self.registry_path.exists():
            self.registry = json.loads(self.registry_path.read_text())
        else:
            self.registry = {"machines": {}, "media": {}}
        self._machines: dict[str, dict[str, Any]] = {}

    def save(self) -> None:
        _atomic_write(self.registry_path, self.registry)
        for machine in self._machines.values():
            if machine.get("_deleted"):
                continue
            path = Path(machine["settings_file"])
            if path.parent.exists():
                _atomic_write(path, machine)

    # machines
    def load_machine(self, settings_file: Path) -> dict[str, Any]:
        key = str(settings_file)
        if key not in self._machines:
            self._machines[key] = json.loads(settings_file.read_text())
        return self._machines[key]

    def machines(self) -> list[dict[str, Any]]:
        found = []
        for settings in list(self.registry["machines"].values()):
            path = Path(settings)
            if path.exists():
                found.append(self.refresh(self.load_machine(path)))
        return found

    def find_machine(self, name_or_uuid: str) -> dict[str, Any]:
        for machine in self.machines():
            if name_or_uuid in (machine["name"], machine["uuid"]):
                return machine
        raise not_found(name_or_uuid)

    def add_machine(self, machine: dict[str, Any]) -> None:
        self._machines[machine["settings_file"]] = machine

    def refresh(self, machine: dict[str, Any]) -> dict[str, Any]:
        """A VM whose process ended unasked is 'aborted', or 'poweroff' if the guest
        shut down cleanly (ACPI power button), as VBoxSVC would notice."""
        if machine["state"] in ONLINE and not process_alive(machine.get("pid"),
                                                             machine.get("pid_start")):
            ram = _read_json(Path(machine["folder"]) / "fake-vm-ram.json")
            clean = bool(ram and ram.get("clean_shutdown"))
            set_state(machine, "poweroff" if clean else "aborted",
                      "PoweredOff" if clean else "Aborted")
            machine["pid"] = machine["pid_start"] = None
        return machine

    # media
    def find_medium(self, ref: str, kind: str | None = None) -> dict[str, Any] | None:
        path = str(Path(ref).resolve()) if ("/" in ref or ref.endswith(
            (".vdi", ".vmdk", ".iso", ".img", ".qcow2", ".vhd", ".raw"))) else None
        for medium in self.registry["media"].values():
            if medium["uuid"] == ref or (path and medium["location"] == path):
                if kind is None or medium["kind"] == kind:
                    return medium
        return None

    def open_medium(self, ref: str, kind: str) -> dict[str, Any]:
        """Find a registered medium, or open (register) an image file by path
        (manual: storageattach --medium; VirtualBox opens unknown files implicitly)."""
        medium = self.find_medium(ref, kind)
        if medium is not None:
            if not Path(medium["location"]).exists():
                raise VBoxError(
                    f"Could not open the medium '{medium['location']}'.\n"
                    f"VD: error VERR_FILE_NOT_FOUND opening image file "
                    f"'{medium['location']}' (VERR_FILE_NOT_FOUND)",
                    VBOX_E_FILE_ERROR, "MediumWrap", "IMedium")
            return medium
        if "/" not in ref and not Path(ref).exists():
            raise VBoxError(f"Could not find a registered medium with UUID {{{ref}}}",
                            VBOX_E_OBJECT_NOT_FOUND, "VirtualBoxWrap", "IVirtualBox")
        path = Path(ref).resolve()
        if not path.exists():
            raise VBoxError(
                f"Could not find file for the medium '{path}' (VERR_FILE_NOT_FOUND)",
                VBOX_E_FILE_ERROR, "MediumWrap", "IMedium",
                "OpenMedium(Bstr(pszFilenameOrUuid).raw(), enmDevType, enmAccessMode, "
                "fForceNewUuidOnOpen, pMedium.asOutParam())")
        fmt, size = sniff_image(path, kind)
        medium = {"uuid": str(uuidlib.uuid4()), "location": str(path), "kind": kind,
                  "format": fmt, "parent": None, "logical_size": size, "type": "normal"}
        self.registry["media"][medium["uuid"]] = medium
        return medium

    def media_users(self, medium_uuid: str) -> list[dict[str, Any]]:
        return [m for m in self.machines()
                if any(a.get("medium") == medium_uuid for a in m["attachments"].values())]

    def children(self, medium_uuid: str) -> list[dict[str, Any]]:
        return [m for m in self.registry["media"].values() if m["parent"] == medium_uuid]


def _atomic_write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({k: v for k, v in data.items() if not k.startswith("_")},
                              indent=1))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sniff_image(path: Path, kind: str) -> tuple[str, int]:
    """Format and logical size of a disk image, from its header like VirtualBox's
    VD backends do; an unknown header fails as VirtualBox reports it."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    size = path.stat().st_size
    if kind == "dvd":
        return "RAW", size
    if head.startswith(b"<<< Oracle VM VirtualBox Disk Image >>>") or head[64:68] == bytes.fromhex(
            "7f10dabe"):
        return "VDI", int.from_bytes(head[368:376], "little") or size
    if head.startswith(b"QFI\xfb"):
        check_qcow2(path, head, size)
        return "QCOW2", int.from_bytes(head[24:32], "big")
    if head.startswith(b"KDMV") or head.startswith(b"# Disk DescriptorFile"):
        return "VMDK", size
    if path.suffix in (".img", ".raw") and kind in ("hdd", "floppy"):
        return "RAW", size
    raise VBoxError(
        f"Could not get the storage format of the medium '{path}' (VERR_NOT_SUPPORTED)",
        VBOX_E_IPRT_ERROR, "MediumWrap", "IMedium")


def check_qcow2(path: Path, head: bytes, size: int) -> None:
    """The header checks VirtualBox's QCOW backend makes before using an image: a
    known version and cluster size, and tables that lie inside the file (an image
    cut short by an interrupted download fails here)."""
    version = int.from_bytes(head[4:8], "big")
    cluster_bits = int.from_bytes(head[20:24], "big")
    l1_size = int.from_bytes(head[36:40], "big")
    l1_offset = int.from_bytes(head[40:48], "big")
    refcount_offset = int.from_bytes(head[48:56], "big")
    refcount_clusters = int.from_bytes(head[56:60], "big")
    valid = (version in (2, 3) and 9 <= cluster_bits <= 21
             and 0 < l1_offset and l1_offset + 8 * l1_size <= size
             and 0 < refcount_offset
             and refcount_offset + (refcount_clusters << cluster_bits) <= size)
    if not valid:
        raise VBoxError(
            f"Could not open the medium '{path}'.\nVD: error VERR_VD_GEN_INVALID_HEADER "
            f"opening image file '{path}' (VERR_VD_GEN_INVALID_HEADER)",
            VBOX_E_FILE_ERROR, "MediumWrap", "IMedium")


def write_vdi(path: Path, logical_size: int) -> None:
    """Create a (dynamic) VDI file: the text banner, the signature, and a block map
    sized like the real one (4 bytes per 1 MiB block), so a full disk fails here."""
    header = bytearray(512)
    banner = b"<<< Oracle VM VirtualBox Disk Image >>>\n"
    header[:len(banner)] = banner
    header[64:68] = bytes.fromhex("7f10dabe")
    header[368:376] = logical_size.to_bytes(8, "little")
    block_map = 4 * max(1, logical_size // (1 << 20))
    try:
        with open(path, "xb") as handle:
            handle.write(header)
            handle.write(b"\xff" * block_map)
            handle.flush()
            os.fsync(handle.fileno())
    except FileExistsError:
        raise VBoxError(
            f"Failed to create medium\nCould not create the medium storage unit '{path}'.\n"
            f"VD: error VERR_ALREADY_EXISTS creating image file '{path}' (VERR_ALREADY_EXISTS)",
            VBOX_E_FILE_ERROR, "MediumWrap", "IMedium") from None
    except OSError as error:
        path.unlink(missing_ok=True)
        verr = "VERR_DISK_FULL" if error.errno == 28 else "VERR_WRITE_ERROR"
        raise VBoxError(
            f"Failed to create medium\nCould not create the medium storage unit '{path}'.\n"
            f"VD: error {verr} writing image file '{path}' ({verr})",
            VBOX_E_FILE_ERROR, "MediumWrap", "IMedium") from None


# -- logs and states ----------------------------------------------------------------


def vm_log_path(machine: dict[str, Any]) -> Path:
    return Path(machine["folder"]) / "Logs" / "VBox.log"


def vm_log(machine: dict[str, Any], text: str) -> None:
    path = vm_log_path(machine)
    if path.parent.exists():
        stamp = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S.%f")
        with open(path, "a") as handle:
            handle.write(f"{stamp} {text}\n")


def set_state(machine: dict[str, Any], state: str, console_name: str | None = None) -> None:
    """Change the state and log it the way vboxwrapper's poll() tails VBox.log for:
    "Console: Machine state changed to '<X>'"."""
    machine["state"] = state
    machine["state_change"] = datetime.datetime.now(datetime.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
    if console_name:
        vm_log(machine, f"Console: Machine state changed to '{console_name}'")

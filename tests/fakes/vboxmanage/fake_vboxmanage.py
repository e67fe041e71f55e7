"""A fake ``VBoxManage`` that keeps real state on disk and answers like the real one.

VirtualBox cannot run on the test machines, so the VirtualBox driver is tested
against this program. It is written from VirtualBox's manual (chapter
"VBoxManage", one section per command; cited below as ``manual: <command>``)
and from the exact invocations and output parsing of BOINC's vboxwrapper
(``samples/vboxwrapper/vbox_vboxmanage.cpp`` and ``vbox_common.cpp``, cited as
``vboxwrapper: <function>``). Each answer says which one it mirrors.

State (all under ``$VBOX_USER_HOME``, which must be set: the fake never touches
a real VirtualBox home):

* ``fake-VirtualBox.json``: the global registry (stands for ``VirtualBox.xml``):
  registered machines (uuid -> settings file) and media (uuid -> location,
  kind, format, parent, logical size);
* each machine's settings file ``<basefolder>/<name>/<name>.vbox`` (JSON here,
  XML in VirtualBox) with its hardware, attachments, shared folders, NAT rules,
  snapshots and the runtime record (state, VM process pid and start time);
* ``<name>/Logs/VBox.log`` written like VirtualBox's (``Process ID:``,
  ``Console: Machine state changed to '...'``), rotated on every start;
* ``<name>/Snapshots/``: differencing images and saved-state files, one set
  per snapshot, so leftovers show up as files;
* ``fake-calls.jsonl``: one line per invocation (argv, exit code), the fake's
  ``vbox_trace.txt``;
* ``fake-faults.json`` (or ``$FAKE_VBOX_FAULTS``): failures to inject, see
  ``faults.take_fault``.

Modules: ``store`` (the state above, error printing), ``faults`` (injected
failures), ``args`` (option parsing), ``media`` and ``snapshots`` (command
groups mixed into ``FakeVBoxManage``), this one (the other commands, ``main``).

A running VM is a real process (``fake_vm_process.py``): pause is SIGSTOP,
power-off kills it, and a VM whose process died unasked reads as ``aborted``.

Environment: ``FAKE_VBOX_VERSION`` selects the version string ``--version``
prints (default ``7.0.14r161095``; e.g. ``6.1.50r161033``,
``7.0.14_SUSEr161095``); version-dependent options follow it.

Every invocation holds an exclusive lock on the home for its whole run, as the
VBoxSVC session lock serialises real calls.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from tests.fakes.vboxmanage.args import Options
from tests.fakes.vboxmanage.faults import START_ERRORS, raise_fault, take_fault_locked
from tests.fakes.vboxmanage.media import MediaCommands
from tests.fakes.vboxmanage.snapshots import SnapshotCommands
from tests.fakes.vboxmanage.store import (
    DEFAULT_VERSION,
    E_INVALIDARG,
    NS_ERROR_FAILURE,
    ONLINE,
    PROGRESS,
    VBOX_E_FILE_ERROR,
    VBOX_E_INVALID_OBJECT_STATE,
    VBOX_E_INVALID_VM_STATE,
    VBOX_E_OBJECT_IN_USE,
    VBOX_E_OBJECT_NOT_FOUND,
    Store,
    VBoxError,
    _atomic_write,
    _read_json,
    freeze,
    kill_process,
    parse_version,
    process_start_time,
    session_locked,
    set_state,
    syntax_error,
    vm_log,
    vm_log_path,
)

HERE = Path(__file__).resolve().parent


class FakeVBoxManage(MediaCommands, SnapshotCommands):
    """One invocation: dispatch ``argv`` to a command, write its output."""

    def __init__(self, home: Path, env: dict[str, str], out: TextIO) -> None:
        self.home = home
        self.env = env
        self.out = out
        self.version_text = env.get("FAKE_VBOX_VERSION", DEFAULT_VERSION)
        self.version = parse_version(self.version_text)
        self.store = Store(home)
        self.crash_after_start = False

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def run(self, argv: list[str]) -> None:
        command, args = argv[0], argv[1:]
        handler: Callable[[list[str]], None] | None = getattr(
            self, "cmd_" + command.replace("-", "_"), None)
        if handler is None:
            raise syntax_error(f"Invalid command '{command}'")
        handler(args)
        self.store.save()

    # ---- list (manual: list) ----
    def cmd_list(self, args: list[str]) -> None:
        what = [a for a in args if not a.startswith("-")]
        if not what:
            raise syntax_error("Missing subcommand for 'list' command.")
        kind = what[0]
        if kind == "vms":
            for m in self.store.machines():
                self.print(f'"{m["name"]}" {{{m["uuid"]}}}')
        elif kind == "runningvms":
            for m in self.store.machines():
                if m["state"] in ONLINE:
                    self.print(f'"{m["name"]}" {{{m["uuid"]}}}')
        elif kind == "hostinfo":
            self._hostinfo()
        elif kind in ("hdds", "dvds", "floppies"):
            kind_name = {"hdds": "hdd", "dvds": "dvd", "floppies": "floppy"}[kind]
            for medium in self.store.registry["media"].values():
                if medium["kind"] != kind_name:
                    continue
                users = self.store.media_users(medium["uuid"])
                self.print(f"UUID:           {medium['uuid']}")
                if kind_name == "hdd":
                    self.print(f"Parent UUID:    {medium['parent'] or 'base'}")
                self.print("State:          " + ("created" if Path(
                    medium["location"]).exists() else "inaccessible"))
                if kind_name == "hdd":
                    self.print("Type:           normal " + ("(differencing)" if medium[
                        "parent"] else "(base)"))
                self.print(f"Location:       {medium['location']}")
                if kind_name == "hdd":
                    self.print(f"Storage format: {medium['format']}")
                    self.print(f"Capacity:       {medium['logical_size'] >> 20} MBytes")
                self.print("In use by VMs:  " + ", ".join(
                    f"{u['name']} (UUID: {u['uuid']})" for u in users) if users else "")
        elif kind == "systemproperties":
            # vboxwrapper: get_guest_additions parses "Default Guest Additions ISO:".
            self.print(f"API version:                     {self.version[0]}_{self.version[1]}")
            self.print("Minimum guest RAM size:          4 Megabytes")
            self.print(f"Default machine folder:          {self.home / 'VirtualBox VMs'}")
            self.print("Default Guest Additions ISO:     "
                       "/usr/share/virtualbox/VBoxGuestAdditions.iso")
        elif kind == "extpacks":
            # vboxwrapper: is_extpack_installed looks for these two names.
            if self.env.get("FAKE_VBOX_EXTPACK"):
                self.print("Extension Packs: 1")
                self.print("Pack no. 0:   Oracle VM VirtualBox Extension Pack")
                self.print(f"Version:      {'.'.join(map(str, self.version))}")
                self.print("Usable:       true")
                self.print("VRDE Module:  VBoxVRDP")
            else:
                self.print("Extension Packs: 0")
        elif kind == "bridgedifs":
            # vboxwrapper: get_default_network_interface takes the first "Name:".
            for net in sorted(Path("/sys/class/net").iterdir()):
                if net.name == "lo":
                    continue
                self.print(f"Name:            {net.name}")
                self.print("DHCP:            Disabled")
                self.print("MediumType:      Ethernet")
                self.print("Status:          Up")
                self.print(f"VBoxNetworkName: HostInterfaceNetworking-{net.name}\n")
        else:
            raise syntax_error(f"Unknown subcommand '{kind}' for 'list' command.")

    def _hostinfo(self) -> None:
        # vboxwrapper: is_system_ready requires "Processor count:" in this output.
        meminfo = Path("/proc/meminfo").read_text()
        total = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1)) // 1024
        avail = int(re.search(r"MemAvailable:\s+(\d+)", meminfo).group(1)) // 1024
        cpus = os.cpu_count() or 1
        cpuinfo = Path("/proc/cpuinfo").read_text()
        hw = "yes" if re.search(r"\b(vmx|svm)\b", cpuinfo) else "no"
        self.print("Host Information:\n")
        self.print(f"Host time: {datetime.datetime.now(datetime.UTC).isoformat()}")
        self.print(f"Processor online count: {cpus}")
        self.print(f"Processor count: {cpus}")
        self.print(f"Processor online core count: {cpus}")
        self.print(f"Processor core count: {cpus}")
        self.print(f"Processor supports HW virtualization: {hw}")
        self.print("Processor supports PAE: yes")
        self.print("Processor supports long mode: yes")
        self.print(f"Memory size: {total} MByte")
        self.print(f"Memory available: {avail} MByte")
        self.print("Operating system: Linux")
        self.print(f"Operating system version: {os.uname().release}")

    # ---- createvm (manual: createvm; vboxwrapper: create_vm) ----
    def cmd_createvm(self, args: list[str]) -> None:
        opts = Options(args)
        name = basefolder = None
        ostype = "Other"
        register = False
        vm_uuid = str(uuidlib.uuid4())
        for opt in opts:
            if opt == "--name":
                name = opts.value(opt)
            elif opt == "--basefolder":
                basefolder = opts.value(opt)
            elif opt == "--ostype":
                ostype = opts.value(opt)
            elif opt == "--register":
                register = True
            elif opt == "--uuid":
                vm_uuid = opts.value(opt)
            elif opt == "--default":
                pass
            else:
                raise syntax_error(f"Unknown option: {opt}")
        if not name:
            raise syntax_error("Parameter --name is required")
        base = Path(basefolder) if basefolder else self.home / "VirtualBox VMs"
        folder = base / name
        settings = folder / f"{name}.vbox"
        if settings.exists():
            # The real message for a leftover settings file (seen in user reports).
            raise VBoxError(f"Machine settings file '{settings}' already exists",
                            VBOX_E_FILE_ERROR, "MachineWrap", "IMachine",
                            "CreateMachine(bstrSettingsFile.raw(), bstrName.raw(), ...)")
        if register and any(m["name"] == name for m in self.store.machines()):
            raise VBoxError(f"A machine named '{name}' is already registered",
                            VBOX_E_OBJECT_IN_USE, "VirtualBoxWrap", "IVirtualBox")
        (folder / "Logs").mkdir(parents=True, exist_ok=True)
        machine: dict[str, Any] = {
            "name": name, "uuid": vm_uuid, "ostype": ostype, "settings_file": str(settings),
            "folder": str(folder), "memory": 128, "cpus": 1, "description": "",
            "state": "poweroff", "state_change": "", "pid": None, "pid_start": None,
            "settings": {"nic1": "nat", "cableconnected1": "on", "acpi": "on", "ioapic": "on"},
            "storagectl": {}, "attachments": {}, "sharedfolders": {}, "natpf1": {},
            "bandwidth": {}, "guestproperties": {}, "snapshots": [], "current_snapshot": None,
            "saved_state": None,
        }
        self.store.add_machine(machine)
        _atomic_write(settings, machine)
        if register:
            self.store.registry["machines"][vm_uuid] = str(settings)
            self.print(f"Virtual machine '{name}' is created and registered.")
        else:
            self.print(f"Virtual machine '{name}' is created.")
        self.print(f"UUID: {vm_uuid}")
        self.print(f"Settings file: '{settings}'")

    # ---- registervm / unregistervm (manual; vboxwrapper: register_vm, deregister_vm) ----
    def cmd_registervm(self, args: list[str]) -> None:
        path = Path(Options(args).take_positional("settings file")).resolve()
        if not path.exists():
            raise VBoxError(f"Runtime error opening '{path}' for reading: -102 "
                            "(File not found.).", VBOX_E_FILE_ERROR, "MachineWrap", "IMachine")
        machine = self.store.load_machine(path)
        if machine["uuid"] in self.store.registry["machines"]:
            raise VBoxError(f"Registering machine '{machine['name']}' with UUID "
                            f"{{{machine['uuid']}}} failed: it is already registered",
                            VBOX_E_OBJECT_IN_USE, "VirtualBoxWrap", "IVirtualBox")
        self.store.registry["machines"][machine["uuid"]] = str(path)
        # A process recorded by an earlier VBoxSVC is not ours any more.
        self.store.refresh(machine)

    def cmd_unregistervm(self, args: list[str]) -> None:
        opts = Options(args)
        machine = self.store.find_machine(opts.take_positional("VM name"))
        delete = delete_all = False
        for opt in opts:
            if opt == "--delete":
                delete = True
            elif opt == "--delete-all" and self.version >= (7, 0, 0):
                # manual (7.0+): --delete-all also removes DVD/floppy images attached only here.
                delete = delete_all = True
            else:
                raise syntax_error(f"Unknown option: {opt}")
        if machine["state"] in ONLINE:
            raise VBoxError(f"Cannot unregister the machine '{machine['name']}' while it is "
                            "locked", VBOX_E_INVALID_OBJECT_STATE, "MachineWrap", "IMachine",
                            "Unregister(CleanupMode_DetachAllReturnHardDisksOnly, ...)")
        del self.store.registry["machines"][machine["uuid"]]
        if not delete:
            # Only forgotten: the settings file keeps its attachments and snapshots, so
            # "registervm" brings the VM back as it was (vboxwrapper: register_vm). The
            # fake keeps its media in the global list meanwhile.
            return
        attached = [a for a in machine["attachments"].values() if a.get("medium")]
        chain = self._chain_media(machine)
        machine["attachments"] = {}
        self._delete_machine_files(machine, attached, delete_all)
        # Media opened through this VM live in its media registry (VirtualBox 4.0+):
        # they leave the global list with it unless another VM still uses them.
        for medium_uuid in chain:
            medium = self.store.registry["media"].get(medium_uuid)
            if medium and not self._used_elsewhere(medium_uuid):
                del self.store.registry["media"][medium_uuid]

    def _chain_media(self, machine: dict[str, Any]) -> set[str]:
        media = self.store.registry["media"]
        found = {a["medium"] for a in machine["attachments"].values() if a.get("medium")}
        for snap in machine["snapshots"]:
            found.update(snap["frozen"].values())
            found.update(snap["diffs"].values())
        for medium_uuid in list(found):
            parent = media.get(medium_uuid, {}).get("parent")
            while parent:
                found.add(parent)
                parent = media.get(parent, {}).get("parent")
        return found

    def _used_elsewhere(self, medium_uuid: str) -> bool:
        if self.store.media_users(medium_uuid):
            return True
        return any(self._used_elsewhere(child["uuid"])
                   for child in self.store.children(medium_uuid))

    def _delete_machine_files(self, machine: dict[str, Any], attached: list[dict[str, Any]],
                              delete_all: bool) -> None:
        # manual: --delete removes the hard disk images (and differencing images) used by
        # the VM, saved states, logs and the settings file.
        doomed = {a["medium"] for a in attached if a["type"] == "hdd" or delete_all}
        for snap in machine["snapshots"]:
            doomed.update(snap.get("diffs", {}).values())
            doomed.update(snap.get("frozen", {}).values())
            if snap.get("saved_state"):
                Path(snap["saved_state"]).unlink(missing_ok=True)
        media = self.store.registry["media"]
        progress = True
        while progress:  # children before parents; a medium others still use stays
            progress = False
            for medium_uuid in sorted(doomed):
                medium = media.get(medium_uuid)
                if medium is None or self.store.media_users(medium_uuid) or \
                        self.store.children(medium_uuid):
                    continue
                Path(medium["location"]).unlink(missing_ok=True)
                del media[medium_uuid]
                doomed.discard(medium_uuid)
                progress = True
        if machine.get("saved_state"):
            Path(machine["saved_state"]).unlink(missing_ok=True)
        folder = Path(machine["folder"])
        for leftover in ("Logs", "Snapshots"):
            shutil.rmtree(folder / leftover, ignore_errors=True)
        for path in (Path(machine["settings_file"]), folder / "fake-vm-ram.json"):
            path.unlink(missing_ok=True)
        for path in folder.glob("*.vbox-prev"):
            path.unlink()
        machine["_deleted"] = True
        try:
            folder.rmdir()
        except OSError:
            pass

    # ---- modifyvm (manual: modifyvm; vboxwrapper: create_vm) ----
    #: options taking one value, stored as given. 7.0 renamed many to dashed
    #: spellings and keeps the old ones as aliases (manual 7.0: modifyvm).
    _MODIFY_OPTIONS = {
        "--ostype", "--acpi", "--ioapic", "--boot1", "--boot2", "--boot3", "--boot4",
        "--nic1", "--natdnsproxy1", "--natdnshostresolver1", "--cableconnected1", "--usb",
        "--uart1", "--uart2", "--lpt1", "--lpt2", "--audio", "--clipboard", "--clipboard-mode",
        "--draganddrop", "--hwvirtex", "--vram", "--graphicscontroller", "--cpuexecutioncap",
        "--paravirtprovider", "--rtcuseutc", "--nestedpaging", "--largepages", "--pae",
        "--longmode", "--vrde", "--vrdeport", "--vrdeextpack", "--vrdeauthlibrary",
        "--vrdeauthtype", "--vrdeaddress", "--nictype1", "--bridgeadapter1", "--firmware",
    }
    _MODIFY_OPTIONS_7 = {
        "--cable-connected1", "--nat-dns-proxy1", "--nat-dns-host-resolver1", "--audio-driver",
        "--audio-enabled", "--nic-type1", "--bridge-adapter1", "--graphics-controller",
        "--cpu-execution-cap", "--paravirt-provider", "--rtc-use-utc", "--nested-paging",
        "--large-pages", "--hwvirtex", "--usb-ohci", "--drag-and-drop", "--vrde-property",
    }

    def cmd_modifyvm(self, args: list[str]) -> None:
        opts = Options(args)
        machine = self.store.find_machine(opts.take_positional("VM name"))
        if machine["state"] in ONLINE:
            # modifyvm needs a write lock on the machine, which a running VM holds.
            raise session_locked(machine["name"])
        allowed = self._MODIFY_OPTIONS | (self._MODIFY_OPTIONS_7 if self.version >= (7, 0, 0)
                                          else set())
        for opt in opts:
            if opt == "--memory":
                machine["memory"] = int(opts.value(opt))
            elif opt == "--cpus":
                machine["cpus"] = int(opts.value(opt))
            elif opt == "--description":
                machine["description"] = opts.value(opt)
            elif opt in ("--uart1", "--uart-1"):
                # manual: --uart<N> off | <I/O base> <IRQ>
                first = opts.value(opt)
                machine["settings"]["uart1"] = first if first == "off" else \
                    f"{first.lower()},{opts.value(opt)}"
            elif opt in ("--uartmode1", "--uart-mode1"):
                # manual: --uartmode<N> disconnected | server <pipe> | client <pipe> |
                # tcpserver <port> | tcpclient <host:port> | file <file> | <devicename>
                mode = opts.value(opt)
                machine["settings"]["uartmode1"] = mode if mode == "disconnected" else \
                    f"{mode},{opts.value(opt)}"
            elif opt in ("--natpf1", "--nat-pf1") and (opt == "--natpf1" or self.version >= (
                    7, 0, 0)):
                self._natpf(machine, opts.value(opt))
            elif opt in allowed:
                machine["settings"][opt.lstrip("-").replace("-", "")] = opts.value(opt)
            else:
                raise syntax_error(f"Unknown option: {opt}")

    def _natpf(self, machine: dict[str, Any], rule: str) -> None:
        # manual: modifyvm --natpf<N> [<name>],tcp|udp,[<hostip>],<hostport>,[<guestip>],<port>
        # (vboxwrapper: create_vm builds ",tcp,127.0.0.1,<host>,,<guest>").
        rules = machine["natpf1"]
        if rule.startswith("delete"):
            name = rule.split(None, 1)[1] if " " in rule else ""
            if name not in rules:
                raise VBoxError(f"Could not find a NAT rule named '{name}'", E_INVALIDARG,
                                "NATEngineWrap", "INATEngine")
            del rules[name]
            return
        parts = rule.split(",")
        if len(parts) != 6 or parts[1] not in ("tcp", "udp") or not parts[3].isdigit():
            raise syntax_error(f"Invalid NAT rule '{rule}'")
        name = parts[0] or f"{parts[1]}_{parts[3]}_{parts[5]}"
        if name in rules:
            raise VBoxError("A NAT rule of this name already exists", E_INVALIDARG,
                            "NATEngineWrap", "INATEngine")
        for other in rules.values():
            if other["proto"] == parts[1] and other["hostport"] == int(parts[3]):
                raise VBoxError("A NAT rule for this host port and this host IP already exists",
                                E_INVALIDARG, "NATEngineWrap", "INATEngine")
        rules[name] = {"proto": parts[1], "hostip": parts[2], "hostport": int(parts[3]),
                       "guestip": parts[4], "guestport": int(parts[5])}

    # ---- storagectl / storageattach (manual; vboxwrapper: create_vm) ----
    def cmd_storagectl(self, args: list[str]) -> None:
        opts = Options(args)
        machine = self.store.find_machine(opts.take_positional("VM name"))
        if machine["state"] in ONLINE:
            raise session_locked(machine["name"])
        name = add = None
        settings: dict[str, str] = {}
        remove = False
        for opt in opts:
            if opt == "--name":
                name = opts.value(opt)
            elif opt == "--add":
                add = opts.value(opt)
            elif opt == "--remove":
                remove = True
            elif opt in ("--controller", "--portcount", "--hostiocache", "--bootable"):
                settings[opt[2:]] = opts.value(opt)
            elif opt == "--sataportcount" and self.version < (4, 3, 0):
                # vboxwrapper: create_vm uses --sataportcount before 4.3.0 only.
                settings["portcount"] = opts.value(opt)
            else:
                raise syntax_error(f"Unknown option: {opt}")
        if not name:
            raise syntax_error("Storage controller name not specified")
        controllers = machine["storagectl"]
        if remove:
            if name not in controllers:
                raise VBoxError(f"Could not find a storage controller named '{name}'",
                                VBOX_E_OBJECT_NOT_FOUND)
            del controllers[name]
            for key in [k for k, a in machine["attachments"].items() if a["controller"] == name]:
                del machine["attachments"][key]
            return
        if add:
            if add not in ("ide", "sata", "scsi", "floppy", "sas", "usb", "pcie", "virtio"):
                raise syntax_error(f"Invalid --add argument '{add}'")
            if name in controllers:
                raise VBoxError(f"Storage controller named '{name}' already exists",
                                VBOX_E_OBJECT_IN_USE)
            controllers[name] = {"bus": add, **settings}
        elif name in controllers:
            controllers[name].update(settings)
        else:
            raise VBoxError(f"Could not find a storage controller named '{name}'",
                            VBOX_E_OBJECT_NOT_FOUND)

    def cmd_storageattach(self, args: list[str]) -> None:
        opts = Options(args)
        machine = self.store.find_machine(opts.take_positional("VM name"))
        if machine["state"] in ONLINE:
            raise session_locked(machine["name"])
        values: dict[str, str] = {}
        for opt in opts:
            if opt in ("--storagectl", "--port", "--device", "--type", "--medium", "--mtype",
                       "--setuuid", "--nonrotational", "--discard", "--comment"):
                values[opt[2:]] = opts.value(opt)
            else:
                raise syntax_error(f"Unknown option: {opt}")
        controller = values.get("storagectl")
        if controller not in machine["storagectl"]:
            raise VBoxError(f"Could not find a controller named '{controller}'",
                            VBOX_E_OBJECT_NOT_FOUND)
        key = f"{controller}-{values.get('port', '0')}-{values.get('device', '0')}"
        medium_ref = values.get("medium")
        if medium_ref is None:
            raise syntax_error("Parameter --medium is required")
        if medium_ref in ("none", "emptydrive"):
            machine["attachments"].pop(key, None)
            return
        kind = {"hdd": "hdd", "dvddrive": "dvd", "fdd": "floppy"}.get(values.get("type", "hdd"))
        if machine["storagectl"][controller]["bus"] == "floppy":
            kind = "floppy"
        if kind is None:
            raise syntax_error(f"Invalid --type argument '{values.get('type')}'")
        if medium_ref == "additions":
            machine["attachments"][key] = {"controller": controller, "type": kind,
                                           "medium": None, "location": "additions"}
            return
        medium = self.store.open_medium(medium_ref, kind)
        if kind == "hdd" and values.get("mtype") not in ("multiattach", "shareable",
                                                         "immutable", "readonly"):
            for user in self.store.media_users(medium["uuid"]):
                if user["uuid"] != machine["uuid"]:
                    raise VBoxError(
                        f"Cannot attach medium '{medium['location']}' {{{medium['uuid']}}}: "
                        f"medium is already associated with the current state of machine "
                        f"uuid {{{user['uuid']}}}!", VBOX_E_OBJECT_IN_USE, "SessionMachine",
                        "IMachine")
        if values.get("mtype"):
            medium["type"] = values["mtype"]
        machine["attachments"][key] = {"controller": controller, "type": kind,
                                       "medium": medium["uuid"], "location": medium["location"]}

    # ---- sharedfolder (manual: sharedfolder; vboxwrapper: create_vm) ----
    def cmd_sharedfolder(self, args: list[str]) -> None:
        opts = Options(args)
        action = opts.take_positional("add|remove")
        machine = self.store.find_machine(opts.take_positional("VM name"))
        values: dict[str, str] = {}
        flags: set[str] = set()
        for opt in opts:
            if opt in ("--name", "--hostpath", "--auto-mount-point"):
                values[opt[2:]] = opts.value(opt)
            elif opt in ("--readonly", "--automount", "--transient"):
                flags.add(opt[2:])
            else:
                raise syntax_error(f"Unknown option: {opt}")
        name = values.get("name")
        if not name:
            raise syntax_error("Shared folder name (--name) is required")
        if action == "add":
            if machine["state"] in ONLINE and "transient" not in flags:
                raise session_locked(machine["name"])
            host_path = values.get("hostpath", "")
            if not Path(host_path).is_absolute() or not Path(host_path).is_dir():
                raise VBoxError(f"Shared folder path '{host_path}' is not absolute or does "
                                "not exist", VBOX_E_FILE_ERROR, "SharedFolderWrap",
                                "ISharedFolder")
            if name in machine["sharedfolders"]:
                raise VBoxError(f"Shared folder named '{name}' already exists",
                                VBOX_E_OBJECT_IN_USE)
            machine["sharedfolders"][name] = {"hostpath": host_path,
                                              "readonly": "readonly" in flags}
        elif action == "remove":
            if name not in machine["sharedfolders"]:
                raise VBoxError(f"Could not find a shared folder named '{name}'",
                                VBOX_E_OBJECT_NOT_FOUND)
            del machine["sharedfolders"][name]
        else:
            raise syntax_error(f"Invalid parameter '{action}'")

    # ---- bandwidthctl (vboxwrapper: create_vm, set_network_usage) ----
    def cmd_bandwidthctl(self, args: list[str]) -> None:
        opts = Options(args)
        machine = self.store.find_machine(opts.take_positional("VM name"))
        action = opts.take_positional("add|set|remove")
        group = opts.take_positional("group name")
        values = {}
        for opt in opts:
            if opt in ("--type", "--limit"):
                values[opt[2:]] = opts.value(opt)
            else:
                raise syntax_error(f"Unknown option: {opt}")
        if action == "remove":
            machine["bandwidth"].pop(group, None)
        else:
            machine["bandwidth"].setdefault(group, {}).update(values)

    # ---- startvm (manual: startvm; vboxwrapper: start) ----
    def cmd_startvm(self, args: list[str]) -> None:
        opts = Options(args)
        machine = self.store.find_machine(opts.take_positional("VM name"))
        for opt in opts:
            if opt == "--type":
                if opts.value(opt) not in ("gui", "headless", "separate", "sdl"):
                    raise syntax_error("Invalid session type")
            else:
                raise syntax_error(f"Unknown option: {opt}")
        if machine["state"] in ONLINE:
            raise VBoxError(f"The machine '{machine['name']}' is already locked by a session "
                            "(or being locked or unlocked)", VBOX_E_INVALID_OBJECT_STATE,
                            context="LaunchVMProcess(a->session, sessionType.raw(), ...)")
        self.print(f'Waiting for VM "{machine["name"]}" to power on...')
        self._rotate_log(machine)
        fault = getattr(self, "_start_fault", None)
        if fault is not None:
            self._power_up_failure(machine, fault.get("verr", "VERR_VMX_MSR_ALL_VMX_DISABLED"))
        for attachment in machine["attachments"].values():
            medium = self.store.registry["media"].get(attachment.get("medium") or "")
            if medium and not Path(medium["location"]).exists():
                vm_log(machine, f"VD: error VERR_FILE_NOT_FOUND opening image file "
                                f"'{medium['location']}'")
                set_state(machine, "poweroff", "PoweredOff")
                raise VBoxError(f"Could not open the medium '{medium['location']}'.\n"
                                f"VD: error VERR_FILE_NOT_FOUND opening image file "
                                f"'{medium['location']}' (VERR_FILE_NOT_FOUND).",
                                VBOX_E_FILE_ERROR, "ConsoleWrap", "IConsole")
        sockets = self._bind_forwards(machine)
        ram = {"ticks": 0, "guest_clock": 0.0}
        restoring = machine["state"] == "saved" and machine.get("saved_state")
        if restoring:
            ram = _read_json(Path(machine["saved_state"])) or ram
        set_state(machine, machine["state"], "Restoring" if restoring else "PoweringOn")
        command = [sys.executable, "-S", str(HERE / "fake_vm_process.py"), "--vm-folder",
                   machine["folder"], "--log", str(vm_log_path(machine)),
                   "--ticks", str(int(ram.get("ticks", 0))),
                   "--guest-clock", str(float(ram.get("guest_clock", 0.0))),
                   "--max-lifetime", self.env.get("FAKE_VBOX_VM_MAX_LIFETIME", "900")]
        uart_mode = machine["settings"].get("uartmode1", "")
        if machine["settings"].get("uart1", "off") != "off" and uart_mode.startswith("file,"):
            command += ["--serial", uart_mode.split(",", 1)[1]]
        try:
            launcher = subprocess.run(command, capture_output=True, text=True, timeout=30,
                                      pass_fds=[s.fileno() for s in sockets], check=True)
        finally:
            for sock in sockets:
                sock.close()
        pid = int(launcher.stdout.strip())
        machine["pid"] = pid
        machine["pid_start"] = process_start_time(pid)
        # vboxwrapper: get_vm_process_id reads "Process ID: " from VBox.log.
        vm_log(machine, f"Process ID: {pid}")
        if restoring:
            Path(machine["saved_state"]).unlink(missing_ok=True)
            machine["saved_state"] = None
        set_state(machine, "running", "Running")
        if self.crash_after_start:
            kill_process(pid, machine["pid_start"])
        self.print(f'VM "{machine["name"]}" has been successfully started.')

    def _rotate_log(self, machine: dict[str, Any]) -> None:
        """VirtualBox keeps VBox.log, VBox.log.1 ... of earlier runs, newest first."""
        log = vm_log_path(machine)
        log.parent.mkdir(parents=True, exist_ok=True)
        for index in (2, 1):
            older = log.with_name(f"VBox.log.{index}")
            if older.exists():
                older.rename(log.with_name(f"VBox.log.{index + 1}"))
        if log.exists():
            log.rename(log.with_name("VBox.log.1"))
        major, minor, build = self.version
        revision = self.version_text.rsplit("r", 1)[-1] if "r" in self.version_text else "0"
        log.write_text(
            f"00:00:00.000000 VirtualBox VM {major}.{minor}.{build} r{revision} linux.amd64 "
            "release log\n"
            f"00:00:00.000000 Log opened {datetime.datetime.now(datetime.UTC).isoformat()}\n"
            "00:00:00.000000 Build Type: release\n00:00:00.000000 OS Product: Linux\n")

    def _power_up_failure(self, machine: dict[str, Any], verr: str) -> None:
        text = START_ERRORS.get(verr, verr)
        vm_log(machine, f"VMSetError: {text} ({verr}).")
        vm_log(machine, f"Power up failed (vrc={verr}, rc=NS_ERROR_FAILURE (0X80004005))")
        set_state(machine, "poweroff", "PoweredOff")
        raise VBoxError(f"{text} ({verr})", NS_ERROR_FAILURE, "ConsoleWrap", "IConsole")

    def _bind_forwards(self, machine: dict[str, Any]) -> list[socket.socket]:
        """Take the NAT forwards' host ports, as VirtualBox's NAT engine does at power-up.
        A taken port fails the start with VERR_NAT_REDIR_SETUP."""
        sockets = []
        for rule in machine["natpf1"].values():
            kind = socket.SOCK_STREAM if rule["proto"] == "tcp" else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_INET, kind)
            try:
                sock.bind((rule["hostip"] or "127.0.0.1", rule["hostport"]))
                if kind == socket.SOCK_STREAM:
                    sock.listen(8)
            except OSError:
                sock.close()
                for other in sockets:
                    other.close()
                message = (f"NAT#0: configuration error: failed to set up redirection of "
                           f"{rule['hostport']} to 10.0.2.15:{rule['guestport']}. Probably a "
                           f"conflict with existing services or other rules "
                           f"(VERR_NAT_REDIR_SETUP).")
                vm_log(machine, message)
                set_state(machine, "poweroff", "PoweredOff")
                raise VBoxError(message, NS_ERROR_FAILURE, "ConsoleWrap", "IConsole") from None
            sockets.append(sock)
        return sockets

    # ---- controlvm (manual: controlvm; vboxwrapper: pause, resume, poweroff, stop) ----
    def cmd_controlvm(self, args: list[str]) -> None:
        opts = Options(args)
        machine = self.store.find_machine(opts.take_positional("VM name"))
        action = opts.take_positional("action")
        if machine["state"] not in ONLINE:
            raise VBoxError(f"Machine '{machine['name']}' is not currently running")
        pid, start = machine["pid"], machine["pid_start"]
        if action == "pause":
            if machine["state"] == "paused":
                raise VBoxError("Invalid machine state: Paused", VBOX_E_INVALID_VM_STATE,
                                "ConsoleWrap", "IConsole", "Pause()")
            freeze(pid, True)
            set_state(machine, "paused", "Paused")
        elif action == "resume":
            if machine["state"] != "paused":
                raise VBoxError(f"Invalid machine state: {machine['state'].capitalize()}",
                                VBOX_E_INVALID_VM_STATE, "ConsoleWrap", "IConsole", "Resume()")
            freeze(pid, False)
            set_state(machine, "running", "Running")
        elif action == "poweroff":
            set_state(machine, machine["state"], "Stopping")
            kill_process(pid, start)
            machine["pid"] = machine["pid_start"] = None
            set_state(machine, "poweroff", "PoweredOff")
            self.print(PROGRESS)
        elif action == "savestate":
            set_state(machine, machine["state"], "Saving")
            state_file = self._save_ram(machine)
            kill_process(pid, start)
            machine["pid"] = machine["pid_start"] = None
            machine["saved_state"] = str(state_file)
            set_state(machine, "saved", "Saved")
            self.print(PROGRESS)
        elif action == "acpipowerbutton":
            if machine["state"] == "paused":
                raise VBoxError("Invalid machine state: Paused", VBOX_E_INVALID_VM_STATE,
                                "ConsoleWrap", "IConsole", "PowerButton()")
            os.kill(pid, signal.SIGUSR1)
        elif action == "setlinkstate1":
            state = opts.take_positional("on|off")
            if state not in ("on", "off"):
                raise syntax_error(f"Invalid link state '{state}'")
            machine["settings"]["cableconnected1"] = state
        elif action == "cpuexecutioncap":
            value = int(opts.take_positional("percentage"))
            if not 1 <= value <= 100:
                raise VBoxError(f"Invalid CPU hot-plug argument '{value}'", E_INVALIDARG)
            machine["settings"]["cpuexecutioncap"] = str(value)
        elif action == "natpf1":
            rule = opts.take_positional("rule")
            if rule == "delete":
                rule = "delete " + opts.take_positional("rule name")
            self._natpf(machine, rule)
        else:
            raise syntax_error(f"Invalid parameter '{action}'")

    # ---- showvminfo (manual: showvminfo; vboxwrapper: poll, is_registered) ----
    def cmd_showvminfo(self, args: list[str]) -> None:
        opts = Options(args)
        machine = self.store.find_machine(opts.take_positional("VM name"))
        log_index = None
        for opt in opts:
            if opt == "--log":
                log_index = int(opts.value(opt))
            elif opt not in ("--machinereadable", "--details"):
                raise syntax_error(f"Unknown option: {opt}")
        if log_index is not None:
            path = vm_log_path(machine)
            if log_index:
                path = path.with_name(f"VBox.log.{log_index}")
            if not path.exists():
                raise VBoxError(f"Log file {log_index} does not exist", VBOX_E_FILE_ERROR)
            self.out.write(path.read_text(errors="replace"))
            return
        print_ = self.print
        print_(f'name="{machine["name"]}"')
        print_(f'description="{machine["description"]}"')
        print_(f'ostype="{machine["ostype"]}"')
        print_(f'UUID="{machine["uuid"]}"')
        print_(f'CfgFile="{machine["settings_file"]}"')
        print_(f'LogFldr="{vm_log_path(machine).parent}"')
        print_(f"memory={machine['memory']}")
        print_(f"cpus={machine['cpus']}")
        for key, value in sorted(machine["settings"].items()):
            print_(f'{key}="{value}"')
        print_(f'VMState="{machine["state"]}"')
        print_(f'VMStateChangeTime="{machine["state_change"]}"')
        for name, ctl in machine["storagectl"].items():
            index = list(machine["storagectl"]).index(name)
            print_(f'storagecontrollername{index}="{name}"')
            print_(f'storagecontrollertype{index}="{ctl.get("controller", ctl["bus"])}"')
        for key, attachment in sorted(machine["attachments"].items()):
            print_(f'"{key}"="{attachment["location"]}"')
            if attachment.get("medium"):
                controller, port, device = key.rsplit("-", 2)
                print_(f'"{controller}-ImageUUID-{port}-{device}"="{attachment["medium"]}"')
        for index, (name, rule) in enumerate(machine["natpf1"].items()):
            print_(f'Forwarding({index})="{name},{rule["proto"]},{rule["hostip"]},'
                   f'{rule["hostport"]},{rule["guestip"]},{rule["guestport"]}"')
        for index, (name, folder) in enumerate(machine["sharedfolders"].items(), 1):
            print_(f'SharedFolderNameMachineMapping{index}="{name}"')
            print_(f'SharedFolderPathMachineMapping{index}="{folder["hostpath"]}"')
        if machine["current_snapshot"]:
            snap = self._find_snapshot(machine, machine["current_snapshot"])
            print_(f'CurrentSnapshotName="{snap["name"]}"')
            print_(f'CurrentSnapshotUUID="{snap["uuid"]}"')
        if machine.get("saved_state"):
            print_(f'SnapFldr="{Path(machine["folder"]) / "Snapshots"}"')

    # ---- guestproperty (manual: guestproperty) ----
    def cmd_guestproperty(self, args: list[str]) -> None:
        opts = Options(args)
        action = opts.take_positional("get|set|enumerate|delete")
        machine = self.store.find_machine(opts.take_positional("VM name"))
        props = machine["guestproperties"]
        if action == "get":
            value = props.get(opts.take_positional("property"))
            self.print("No value set!" if value is None else f"Value: {value}")
        elif action == "set":
            prop = opts.take_positional("property")
            if opts.args:
                props[prop] = opts.args.pop(0)
            else:
                props.pop(prop, None)
        elif action in ("unset", "delete"):
            props.pop(opts.take_positional("property"), None)
        elif action == "enumerate":
            for key, value in sorted(props.items()):
                self.print(f"Name: {key}, value: {value}, timestamp: 0, flags: ")
        else:
            raise syntax_error(f"Invalid parameter '{action}'")


def main(argv: list[str], env: dict[str, str], out: TextIO, err: TextIO) -> int:
    """Run one fake VBoxManage invocation; returns the exit status."""
    args = list(argv)
    while args and args[0] in ("-q", "--nologo"):
        args.pop(0)
    home_text = env.get("VBOX_USER_HOME")
    if not home_text:
        err.write("fake VBoxManage: VBOX_USER_HOME must be set (the fake never uses a real "
                  "VirtualBox home)\n")
        return 1
    home = Path(home_text)
    home.mkdir(parents=True, exist_ok=True)
    if args[:1] in (["--version"], ["-v"], ["-V"]):
        # vboxwrapper: get_version_information takes the whole line (e.g. 7.0.14r161095).
        out.write(env.get("FAKE_VBOX_VERSION", DEFAULT_VERSION) + "\n")
        return 0
    if not args:
        err.write("Usage:\n\nVBoxManage [<general option>] <command>\n")
        return 2
    status = 0
    fault = take_fault_locked(home, env, args)
    if fault and fault["fault"] == "hang":
        time.sleep(float(fault.get("seconds", 3600)))
    try:
        with open(home / "fake-VirtualBox.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if fault and fault["fault"] not in ("hang", "start_error", "crash_after_start"):
                raise_fault(fault, args)
            fake = FakeVBoxManage(home, env, out)
            if fault and fault["fault"] == "start_error":
                fake._start_fault = fault
            fake.crash_after_start = bool(fault and fault["fault"] == "crash_after_start")
            fake.run(args)
    except VBoxError as error:
        out.flush()
        err.write(error.text)
        status = error.status
    with open(home / "fake-calls.jsonl", "a") as calls:
        calls.write(json.dumps({"argv": argv, "status": status, "time": time.time()}) + "\n")
    return status


"""The fake's medium commands: createmedium, clonemedium, closemedium, showmediuminfo."""

from __future__ import annotations

import shutil
import uuid as uuidlib
from pathlib import Path
from typing import Any

from tests.fakes.vboxmanage.args import Options
from tests.fakes.vboxmanage.store import (
    PROGRESS,
    VBOX_E_FILE_ERROR,
    VBOX_E_OBJECT_IN_USE,
    VBOX_E_OBJECT_NOT_FOUND,
    VBoxError,
    syntax_error,
    write_vdi,
)


class MediaCommands:
    """Mixin of ``FakeVBoxManage``: uses ``self.store`` and ``self.print``."""

    store: Any
    print: Any

    # ---- media (manual: createmedium, clonemedium, closemedium, showmediuminfo) ----
    def cmd_createmedium(self, args: list[str]) -> None:
        opts = Options(args)
        kind = "hdd"
        if opts.args and opts.args[0] in ("disk", "dvd", "floppy"):
            kind = {"disk": "hdd"}.get(opts.args[0], opts.args[0])
            opts.args.pop(0)
        filename = parent_ref = None
        size_mb = 0
        fmt = "VDI"
        for opt in opts:
            if opt == "--filename":
                filename = opts.value(opt)
            elif opt == "--size":
                size_mb = int(opts.value(opt))
            elif opt == "--sizebyte":
                size_mb = int(opts.value(opt)) >> 20
            elif opt == "--format":
                fmt = opts.value(opt).upper()
            elif opt == "--diffparent":
                parent_ref = opts.value(opt)
            elif opt == "--variant":
                opts.value(opt)
            else:
                raise syntax_error(f"Unknown option: {opt}")
        if not filename:
            raise syntax_error("Parameters --filename is required")
        if fmt != "VDI":
            raise VBoxError(f"Medium format '{fmt}' is not supported by the fake",
                            VBOX_E_OBJECT_NOT_FOUND, "VirtualBoxWrap", "IVirtualBox")
        path = Path(filename).resolve()
        parent = None
        if parent_ref:
            parent = self.store.open_medium(parent_ref, "hdd")
            size = parent["logical_size"]
        elif size_mb:
            size = size_mb << 20
        else:
            raise syntax_error("Parameters --size is required")
        write_vdi(path, size)
        medium = {"uuid": str(uuidlib.uuid4()), "location": str(path), "kind": kind,
                  "format": "VDI", "parent": parent["uuid"] if parent else None,
                  "logical_size": size, "type": "normal"}
        self.store.registry["media"][medium["uuid"]] = medium
        self.print(PROGRESS)
        self.print(f"Medium created. UUID: {medium['uuid']}")

    cmd_createhd = cmd_createmedium

    def cmd_clonemedium(self, args: list[str]) -> None:
        opts = Options(args)
        kind = "hdd"
        if opts.args and opts.args[0] in ("disk", "dvd", "floppy"):
            kind = {"disk": "hdd"}.get(opts.args[0], opts.args[0])
            opts.args.pop(0)
        source = self.store.open_medium(opts.take_positional("source medium"), kind)
        target = Path(opts.take_positional("target file")).resolve()
        fmt = "VDI"
        for opt in opts:
            if opt == "--format":
                fmt = opts.value(opt).upper()
            elif opt in ("--variant", "--existing"):
                if opt == "--variant":
                    opts.value(opt)
            else:
                raise syntax_error(f"Unknown option: {opt}")
        if target.exists():
            raise VBoxError(f"Cannot create the medium storage unit '{target}' because it "
                            "already exists", VBOX_E_FILE_ERROR, "MediumWrap", "IMedium")
        try:
            shutil.copyfile(source["location"], target)
        except OSError as error:
            target.unlink(missing_ok=True)
            raise VBoxError(f"Failed to clone medium\nVD: error VERR_DISK_FULL writing image "
                            f"file '{target}' ({error.strerror})", VBOX_E_FILE_ERROR,
                            "MediumWrap", "IMedium") from None
        medium = {"uuid": str(uuidlib.uuid4()), "location": str(target), "kind": kind,
                  "format": fmt, "parent": None, "logical_size": source["logical_size"],
                  "type": "normal"}
        self.store.registry["media"][medium["uuid"]] = medium
        self.print(PROGRESS)
        self.print(f"Clone medium created in format '{fmt}'. UUID: {medium['uuid']}")

    def cmd_closemedium(self, args: list[str]) -> None:
        opts = Options(args)
        kind = "hdd"
        if opts.args and opts.args[0] in ("disk", "dvd", "floppy"):
            kind = {"disk": "hdd"}.get(opts.args[0], opts.args[0])
            opts.args.pop(0)
        ref = opts.take_positional("medium")
        delete = False
        for opt in opts:
            if opt == "--delete":
                delete = True
            else:
                raise syntax_error(f"Unknown option: {opt}")
        medium = self.store.open_medium(ref, kind)
        users = self.store.media_users(medium["uuid"])
        if users:
            raise VBoxError(f"Cannot close medium '{medium['location']}' because it is still "
                            f"attached to {len(users)} virtual machines", VBOX_E_OBJECT_IN_USE,
                            "MediumWrap", "IMedium")
        children = self.store.children(medium["uuid"])
        if children:
            raise VBoxError(f"Cannot close medium '{medium['location']}' because it has "
                            f"{len(children)} child media", VBOX_E_OBJECT_IN_USE,
                            "MediumWrap", "IMedium")
        if delete:
            Path(medium["location"]).unlink(missing_ok=True)
            self.print(PROGRESS)
        del self.store.registry["media"][medium["uuid"]]

    def cmd_showmediuminfo(self, args: list[str]) -> None:
        # vboxwrapper: deregister_stale_vm reads "In use by VMs: <name> (UUID: <uuid>)".
        opts = Options(args)
        kind = "hdd"
        if opts.args and opts.args[0] in ("disk", "dvd", "floppy"):
            kind = {"disk": "hdd"}.get(opts.args[0], opts.args[0])
            opts.args.pop(0)
        medium = self.store.open_medium(opts.take_positional("medium"), kind)
        users = self.store.media_users(medium["uuid"])
        self.print(f"UUID:           {medium['uuid']}")
        self.print(f"Parent UUID:    {medium['parent'] or 'base'}")
        self.print("Accessible:     yes")
        self.print(f"Logical size:   {medium['logical_size'] >> 20} MBytes")
        self.print(f"Current size on disk: {Path(medium['location']).stat().st_size >> 20} MBytes")
        self.print("Type:           normal " + ("(differencing)" if medium["parent"] else "(base)"))
        self.print(f"Storage format: {medium['format']}")
        if users:
            self.print("In use by VMs:  " + ", ".join(
                f"{u['name']} (UUID: {u['uuid']})" for u in users))
        self.print(f"Location:       {medium['location']}")
        self.store.save()

    cmd_showhdinfo = cmd_showmediuminfo

"""The fake's snapshots and saved states: take, delete (merging images), restore, list.

A snapshot freezes the attached disks (new differencing images in
``Snapshots/`` take the writes) and, for an online VM, copies its guest memory
to a ``.sav`` file, so leftovers and the "one snapshot kept" rule show up as files.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import uuid as uuidlib
from pathlib import Path
from typing import Any

from tests.fakes.vboxmanage.args import Options
from tests.fakes.vboxmanage.store import (
    ONLINE,
    PROGRESS,
    VBOX_E_FILE_ERROR,
    VBOX_E_INVALID_OBJECT_STATE,
    VBOX_E_INVALID_VM_STATE,
    VBOX_E_OBJECT_NOT_FOUND,
    VBoxError,
    _read_json,
    freeze,
    set_state,
    syntax_error,
    write_vdi,
)


class SnapshotCommands:
    """Mixin of ``FakeVBoxManage``: uses ``self.store`` and ``self.print``."""

    store: Any
    print: Any

    def _save_ram(self, machine: dict[str, Any]) -> Path:
        """Copy the VM's guest memory to a saved-state file, as VirtualBox writes
        ``Snapshots/<timestamp>.sav``; a paused process has a stable copy."""
        snapshots = Path(machine["folder"]) / "Snapshots"
        snapshots.mkdir(exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H-%M-%S-%fZ")
        target = snapshots / f"{stamp}.sav"
        was_running = machine["state"] == "running"
        if was_running:
            freeze(machine["pid"], True)
        try:
            ram = _read_json(Path(machine["folder"]) / "fake-vm-ram.json") or {
                "ticks": 0, "guest_clock": 0.0}
            try:
                with open(target, "w") as handle:
                    json.dump(ram, handle)
                    handle.write(" " * 4096)  # saved states are never tiny
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError:
                target.unlink(missing_ok=True)
                raise VBoxError(f"Failed to save the machine state to '{target}' "
                                "(VERR_DISK_FULL)", VBOX_E_FILE_ERROR, "ConsoleWrap",
                                "IConsole") from None
        finally:
            if was_running:
                freeze(machine["pid"], False)
        return target

    # ---- snapshot (manual: snapshot; vboxwrapper: create_snapshot, cleanup_snapshots,
    # restore_snapshot) ----
    def cmd_snapshot(self, args: list[str]) -> None:
        opts = Options(args)
        machine = self.store.find_machine(opts.take_positional("VM name"))
        action = opts.take_positional("take|delete|restore|restorecurrent|list")
        if action == "take":
            name = opts.take_positional("snapshot name")
            for opt in opts:
                if opt == "--description":
                    opts.value(opt)
                elif opt not in ("--live", "--pause"):
                    raise syntax_error(f"Unknown option: {opt}")
            self._snapshot_take(machine, name)
        elif action == "delete":
            self._snapshot_delete(machine, opts.take_positional("snapshot name or UUID"))
        elif action == "restorecurrent":
            self._snapshot_restore(machine)
        elif action == "list":
            machine_readable = "--machinereadable" in opts.args
            self._snapshot_list(machine, machine_readable)
        else:
            raise syntax_error(f"Invalid parameter '{action}'")

    def _snapshot_take(self, machine: dict[str, Any], name: str) -> None:
        """Take a snapshot: the current disks are frozen and new differencing images
        in Snapshots/ take the writes; an online VM's memory goes to a .sav file."""
        snap_uuid = str(uuidlib.uuid4())
        snapshots_dir = Path(machine["folder"]) / "Snapshots"
        snapshots_dir.mkdir(exist_ok=True)
        created: list[Path] = []
        new_media: dict[str, dict[str, Any]] = {}
        try:
            saved = self._save_ram(machine) if machine["state"] in ONLINE else None
            if saved:
                created.append(saved)
            for key, attachment in machine["attachments"].items():
                if attachment["type"] != "hdd" or not attachment.get("medium"):
                    continue
                parent = self.store.registry["media"][attachment["medium"]]
                diff_uuid = str(uuidlib.uuid4())
                path = snapshots_dir / f"{{{diff_uuid}}}.vdi"
                write_vdi(path, parent["logical_size"])
                created.append(path)
                new_media[key] = {"uuid": diff_uuid, "location": str(path), "kind": "hdd",
                                  "format": "VDI", "parent": parent["uuid"],
                                  "logical_size": parent["logical_size"], "type": "normal"}
        except VBoxError:
            for path in created:
                path.unlink(missing_ok=True)
            raise
        frozen = {key: a["medium"] for key, a in machine["attachments"].items()
                  if key in new_media}
        for key, medium in new_media.items():
            self.store.registry["media"][medium["uuid"]] = medium
            machine["attachments"][key]["medium"] = medium["uuid"]
            machine["attachments"][key]["location"] = medium["location"]
        machine["snapshots"].append({
            "uuid": snap_uuid, "name": name, "parent": machine["current_snapshot"],
            "saved_state": str(saved) if saved else None, "frozen": frozen,
            "diffs": {key: m["uuid"] for key, m in new_media.items()},
            "online": saved is not None})
        machine["current_snapshot"] = snap_uuid
        self.print(PROGRESS)
        self.print(f"Snapshot taken. UUID: {snap_uuid}")

    def _find_snapshot(self, machine: dict[str, Any], ref: str) -> dict[str, Any]:
        for snap in machine["snapshots"]:
            if ref in (snap["uuid"], snap["name"]):
                return snap
        raise VBoxError(f"Could not find a snapshot named '{ref}'", VBOX_E_OBJECT_NOT_FOUND,
                        "MachineWrap", "IMachine", "FindSnapshot(Bstr(pszSnapshotName).raw(), "
                        "pSnapshot.asOutParam())")

    def _snapshot_delete(self, machine: dict[str, Any], ref: str) -> None:
        """Delete a snapshot by merging its frozen disk into the image that follows it
        (the images and .sav of that snapshot disappear from Snapshots/)."""
        snap = self._find_snapshot(machine, ref)
        children = [s for s in machine["snapshots"] if s["parent"] == snap["uuid"]]
        if len(children) > 1:
            raise VBoxError(f"Snapshot '{snap['name']}' of the machine '{machine['name']}' has "
                            "more than one child snapshot", VBOX_E_INVALID_OBJECT_STATE)
        for key, frozen_uuid in snap["frozen"].items():
            diff_uuid = snap["diffs"][key]
            if frozen_uuid in self._machine_diffs(machine):
                # The frozen image is one of this VM's differencing images: merge it
                # into the image that follows it.
                self._merge_medium(machine, frozen_uuid, into=diff_uuid)
            else:
                # The frozen image came from outside (the VM's own disk): merge the
                # snapshot's differencing image back into it.
                self._merge_medium(machine, diff_uuid, into=frozen_uuid)
        if snap.get("saved_state"):
            Path(snap["saved_state"]).unlink(missing_ok=True)
        for child in children:
            child["parent"] = snap["parent"]
        machine["snapshots"].remove(snap)
        if machine["current_snapshot"] == snap["uuid"]:
            machine["current_snapshot"] = snap["parent"]
        self.print(PROGRESS)

    def _merge_medium(self, machine: dict[str, Any], gone: str, into: str) -> None:
        """Fold medium ``gone`` into its neighbour ``into`` in the chain: its file is
        deleted and every reference to it (parent links, attachments, snapshots)
        moves to ``into``."""
        media = self.store.registry["media"]
        if media[into]["parent"] == gone:
            media[into]["parent"] = media[gone]["parent"]
        for medium in media.values():
            if medium["parent"] == gone and medium["uuid"] != into:
                medium["parent"] = into
        for attachment in machine["attachments"].values():
            if attachment.get("medium") == gone:
                attachment["medium"] = into
                attachment["location"] = media[into]["location"]
        for snap in machine["snapshots"]:
            for table in (snap["frozen"], snap["diffs"]):
                for key, value in table.items():
                    if value == gone:
                        table[key] = into
        Path(media[gone]["location"]).unlink(missing_ok=True)
        del media[gone]

    @staticmethod
    def _machine_diffs(machine: dict[str, Any]) -> set[str]:
        return {uuid for snap in machine["snapshots"] for uuid in snap["diffs"].values()}

    def _snapshot_restore(self, machine: dict[str, Any]) -> None:
        if machine["state"] in ONLINE:
            raise VBoxError("Cannot delete the current state of the running machine (machine "
                            f"state: {machine['state'].capitalize()})", VBOX_E_INVALID_VM_STATE,
                            "SessionMachine", "IMachine")
        if not machine["current_snapshot"]:
            raise VBoxError("This machine does not have any snapshots")
        snap = self._find_snapshot(machine, machine["current_snapshot"])
        self.print(f"Restoring snapshot '{snap['name']}' ({snap['uuid']})")
        media = self.store.registry["media"]
        snapshots_dir = Path(machine["folder"]) / "Snapshots"
        for key, frozen_uuid in snap["frozen"].items():
            # Throw away the current differencing image and start a fresh one.
            current = machine["attachments"][key]["medium"]
            if current != frozen_uuid and not self.store.children(current):
                Path(media[current]["location"]).unlink(missing_ok=True)
                del media[current]
            diff_uuid = str(uuidlib.uuid4())
            path = snapshots_dir / f"{{{diff_uuid}}}.vdi"
            write_vdi(path, media[frozen_uuid]["logical_size"])
            media[diff_uuid] = {"uuid": diff_uuid, "location": str(path), "kind": "hdd",
                                "format": "VDI", "parent": frozen_uuid,
                                "logical_size": media[frozen_uuid]["logical_size"],
                                "type": "normal"}
            machine["attachments"][key]["medium"] = diff_uuid
            machine["attachments"][key]["location"] = str(path)
            snap["diffs"][key] = diff_uuid
        if machine.get("saved_state"):
            Path(machine["saved_state"]).unlink(missing_ok=True)
            machine["saved_state"] = None
        if snap.get("saved_state") and Path(snap["saved_state"]).exists():
            copy = snapshots_dir / (Path(snap["saved_state"]).stem + "-current.sav")
            shutil.copyfile(snap["saved_state"], copy)
            machine["saved_state"] = str(copy)
            set_state(machine, "saved")
        else:
            set_state(machine, "poweroff")
        self.print(PROGRESS)

    def _snapshot_list(self, machine: dict[str, Any], machine_readable: bool) -> None:
        if not machine["snapshots"]:
            # vboxwrapper: cleanup_snapshots stops on "does not have any snapshots".
            raise VBoxError("This machine does not have any snapshots")
        by_parent: dict[str | None, list[dict[str, Any]]] = {}
        for snap in machine["snapshots"]:
            by_parent.setdefault(snap["parent"], []).append(snap)
        order: list[tuple[int, dict[str, Any]]] = []

        def walk(parent: str | None, depth: int) -> None:
            for snap in by_parent.get(parent, []):
                order.append((depth, snap))
                walk(snap["uuid"], depth + 1)

        walk(None, 0)
        if machine_readable:
            for index, (_, snap) in enumerate(order):
                suffix = "" if index == 0 else f"-{index}"
                self.print(f'SnapshotName{suffix}="{snap["name"]}"')
                self.print(f'SnapshotUUID{suffix}="{snap["uuid"]}"')
                if snap["uuid"] == machine["current_snapshot"]:
                    current = snap
                    node = f"SnapshotName{suffix}"
            self.print(f'CurrentSnapshotName="{current["name"]}"')
            self.print(f'CurrentSnapshotUUID="{current["uuid"]}"')
            self.print(f'CurrentSnapshotNode="{node}"')
            return
        # The indented form vboxwrapper's cleanup_snapshots parses ("(UUID: ...)", "*").
        for depth, snap in order:
            mark = " *" if snap["uuid"] == machine["current_snapshot"] else ""
            self.print(f"{'   ' * (depth + 1)}Name: {snap['name']} (UUID: {snap['uuid']}){mark}")

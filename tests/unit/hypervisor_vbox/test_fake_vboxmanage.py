"""The fake VBoxManage's state machine: what it answers, what it keeps on disk.

Calls run in-process (``fake_vboxmanage.main``); a started VM is still a real
process, killed by the fixture whatever happens.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.fakes.vboxmanage import FAKE_VBOXMANAGE, fake_vm_pids, kill_fake_vms, write_qcow2
from tests.fakes.vboxmanage import fake_vboxmanage as fake


class Fake:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {"VBOX_USER_HOME": str(root / "home")}

    def __call__(self, *args: str, **env: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = fake.main(["-q", *args], {**self.env, **env}, out, err)
        return status, out.getvalue(), err.getvalue()

    def ok(self, *args: str, **env: str) -> str:
        status, out, err = self(*args, **env)
        assert status == 0, err
        return out

    def info(self, vm: str) -> dict[str, str]:
        lines = self.ok("showvminfo", vm, "--machinereadable").splitlines()
        return {k.strip('"'): v.strip('"') for k, _, v in (line.partition("=") for line in lines)}

    def faults(self, *rules: dict) -> None:
        (self.root / "home").mkdir(exist_ok=True)
        (self.root / "home" / "fake-faults.json").write_text(json.dumps(list(rules)))


def wait_for_ticks(ram_file: Path, at_least: int) -> int:
    """Wait until the fake guest's counter reaches ``at_least``; return its value."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ticks = json.loads(ram_file.read_text())["ticks"]
        if ticks >= at_least:
            return ticks
        time.sleep(0.02)
    raise AssertionError(f"the fake guest did not reach {at_least} ticks")


@pytest.fixture
def vbm(tmp_path):
    helper = Fake(tmp_path)
    yield helper
    kill_fake_vms(tmp_path)


@pytest.fixture
def vm(vbm, tmp_path):
    """A registered VM with a SATA controller and a differencing disk over a base."""
    base = write_qcow2(tmp_path / "base.qcow2")
    vbm.ok("createvm", "--name", "boinc_t", "--basefolder", str(tmp_path / "slot"), "--register")
    vbm.ok("storagectl", "boinc_t", "--name", "SATA", "--add", "sata", "--portcount", "3")
    vbm.ok("createmedium", "disk", "--filename", str(tmp_path / "slot" / "overlay.vdi"),
           "--diffparent", str(base))
    vbm.ok("storageattach", "boinc_t", "--storagectl", "SATA", "--port", "0", "--device", "0",
           "--type", "hdd", "--medium", str(tmp_path / "slot" / "overlay.vdi"))
    return "boinc_t"


def test_version_string_is_selectable():
    env = {**os.environ, "VBOX_USER_HOME": "/tmp/unused-fake-home",
           "FAKE_VBOX_VERSION": "7.0.14_SUSEr161095"}
    out = subprocess.run([str(FAKE_VBOXMANAGE), "--version"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out == "7.0.14_SUSEr161095\n"


def test_refuses_to_run_without_vbox_user_home():
    err = io.StringIO()
    assert fake.main(["list", "vms"], {}, io.StringIO(), err) == 1
    assert "VBOX_USER_HOME" in err.getvalue()


def test_create_register_list_and_settings_file(vbm, vm, tmp_path):
    settings = tmp_path / "slot" / vm / f"{vm}.vbox"
    assert settings.exists()
    assert vbm.ok("list", "vms").startswith(f'"{vm}" {{')
    info = vbm.info(vm)
    assert info["VMState"] == "poweroff"
    assert info["CfgFile"] == str(settings)
    assert info["SATA-0-0"] == str(tmp_path / "slot" / "overlay.vdi")
    status, _, err = vbm("createvm", "--name", vm, "--basefolder", str(tmp_path / "slot"))
    assert status == 1 and "already exists" in err and "VBOX_E_FILE_ERROR (0x80bb0004)" in err
    vbm.ok("unregistervm", vm)
    assert vbm.ok("list", "vms") == ""
    assert settings.exists()  # without --delete the files stay
    vbm.ok("registervm", str(settings))
    assert vbm.info(vm)["name"] == vm


def test_unknown_vm_and_unknown_option(vbm):
    status, _, err = vbm("showvminfo", "nope", "--machinereadable")
    assert status == 1 and "VBOX_E_OBJECT_NOT_FOUND (0x80bb0001)" in err
    status, _, err = vbm("list", "vms", "--frobnicate")
    assert status == 0
    status, _, err = vbm("frobnicate")
    assert status == 2 and "Invalid command" in err


def test_run_pause_resume_poweroff_with_a_real_process(vbm, vm, tmp_path):
    out = vbm.ok("startvm", vm, "--type", "headless")
    assert "has been successfully started" in out
    (pid,) = fake_vm_pids(tmp_path)
    log = (tmp_path / "slot" / vm / "Logs" / "VBox.log").read_text()
    assert f"Process ID: {pid}" in log
    assert "Console: Machine state changed to 'Running'" in log
    assert vbm.ok("list", "runningvms").startswith(f'"{vm}"')
    status, _, err = vbm("startvm", vm)
    assert status == 1 and "already locked by a session" in err
    status, _, err = vbm("modifyvm", vm, "--memory", "512")
    assert status == 1 and "VBOX_E_INVALID_OBJECT_STATE (0x80bb0007)" in err
    vbm.ok("controlvm", vm, "pause")
    assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    status, _, err = vbm("controlvm", vm, "pause")
    assert "VBOX_E_INVALID_VM_STATE" in err
    vbm.ok("controlvm", vm, "resume")
    vbm.ok("controlvm", vm, "poweroff")
    assert fake_vm_pids(tmp_path) == []
    assert vbm.info(vm)["VMState"] == "poweroff"
    status, _, err = vbm("controlvm", vm, "pause")
    assert status == 1 and "is not currently running" in err


def test_killed_process_reads_as_aborted_and_power_button_as_poweroff(vbm, vm, tmp_path):
    vbm.ok("startvm", vm)
    (pid,) = fake_vm_pids(tmp_path)
    os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while fake_vm_pids(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert vbm.info(vm)["VMState"] == "aborted"
    vbm.ok("startvm", vm)
    vbm.ok("controlvm", vm, "acpipowerbutton")
    deadline = time.monotonic() + 5
    while fake_vm_pids(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert vbm.info(vm)["VMState"] == "poweroff"


def test_snapshots_keep_files_until_deleted_and_restore_brings_memory_back(vbm, vm, tmp_path):
    snapshots = tmp_path / "slot" / vm / "Snapshots"
    vbm.ok("startvm", vm)
    time.sleep(0.3)
    vbm.ok("controlvm", vm, "pause")
    out = vbm.ok("snapshot", vm, "take", "boinc_1")
    assert "Snapshot taken. UUID:" in out
    vbm.ok("controlvm", vm, "resume")
    vbm.ok("snapshot", vm, "take", "boinc_2")
    assert len(list(snapshots.glob("*.sav"))) == 2
    assert len(list(snapshots.glob("*.vdi"))) == 2
    listing = vbm.ok("snapshot", vm, "list")
    assert "   Name: boinc_1 (UUID: " in listing
    assert listing.splitlines()[1].startswith("      Name: boinc_2") and listing.endswith("*\n")
    first = listing.split("(UUID: ")[1].split(")")[0]
    vbm.ok("snapshot", vm, "delete", first)
    assert len(list(snapshots.glob("*.sav"))) == 1
    assert len(list(snapshots.glob("*.vdi"))) == 1
    status, _, err = vbm("snapshot", vm, "restorecurrent")
    assert status == 1 and "running machine" in err
    vbm.ok("controlvm", vm, "poweroff")
    vbm.ok("snapshot", vm, "delete", "boinc_2")
    status, _, err = vbm("snapshot", vm, "list")
    assert "does not have any snapshots" in err
    # restore a snapshot taken while paused: the memory counter comes back
    ram_file = tmp_path / "slot" / vm / "fake-vm-ram.json"
    vbm.ok("startvm", vm)
    vbm.ok("controlvm", vm, "pause")
    vbm.ok("snapshot", vm, "take", "boinc_3")
    snap = json.loads(ram_file.read_text())["ticks"]
    vbm.ok("controlvm", vm, "resume")
    later = wait_for_ticks(ram_file, snap + 10)
    vbm.ok("controlvm", vm, "poweroff")
    assert "Restoring snapshot 'boinc_3'" in vbm.ok("snapshot", vm, "restorecurrent")
    assert vbm.info(vm)["VMState"] == "saved"
    vbm.ok("startvm", vm)
    (pid,) = fake_vm_pids(tmp_path)
    deadline = time.monotonic() + 5
    while json.loads(ram_file.read_text()).get("pid") != pid and time.monotonic() < deadline:
        time.sleep(0.005)
    restored = json.loads(ram_file.read_text())["ticks"]
    assert snap <= restored < later  # from the snapshot, not from where it stopped


def test_unregister_delete_removes_vm_files_but_not_the_base(vbm, vm, tmp_path):
    vbm.ok("startvm", vm)
    vbm.ok("snapshot", vm, "take", "boinc_1")
    status, _, err = vbm("unregistervm", vm, "--delete")
    assert status == 1 and "while it is locked" in err
    status, _, err = vbm("closemedium", "disk", str(tmp_path / "slot" / "overlay.vdi"))
    assert "1 child media" in err and "VBOX_E_OBJECT_IN_USE" in err  # frozen by the snapshot
    vbm.ok("controlvm", vm, "poweroff")
    vbm.ok("unregistervm", vm, "--delete")
    assert sorted(p.name for p in tmp_path.rglob("*") if "home" not in p.parts) == [
        "base.qcow2", "slot"]
    assert vbm.ok("list", "hdds") == ""


def test_version_gates_options(vbm, vm):
    status, _, err = vbm("storagectl", vm, "--name", "X", "--add", "sata",
                         "--sataportcount", "3")
    assert status == 2 and "Unknown option: --sataportcount" in err
    status, _, err = vbm("modifyvm", vm, "--audio-enabled", "off",
                         FAKE_VBOX_VERSION="6.1.50r161033")
    assert status == 2 and "Unknown option: --audio-enabled" in err
    vbm.ok("modifyvm", vm, "--audio", "none", FAKE_VBOX_VERSION="6.1.50r161033")
    vbm.ok("modifyvm", vm, "--audio-enabled", "off")
    vbm.ok("modifyvm", vm, "--uart1", "0x3F8", "4", "--uartmode1", "file", "/tmp/x.log")
    assert vbm.info(vm)["uartmode1"] == "file,/tmp/x.log"


def test_nat_forward_on_a_taken_port_fails_the_start(vbm, vm, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        vbm.ok("modifyvm", vm, "--natpf1", f"web,tcp,127.0.0.1,{port},,80")
        status, _, err = vbm("modifyvm", vm, "--natpf1", f"web,tcp,127.0.0.1,{port + 1},,80")
        assert "already exists" in err
        status, _, err = vbm("startvm", vm)
        assert status == 1 and "VERR_NAT_REDIR_SETUP" in err
        assert fake_vm_pids(tmp_path) == []
    vbm.ok("startvm", vm)
    with socket.socket() as probe:  # the VM process now holds the forwarded port
        with pytest.raises(OSError):
            probe.bind(("127.0.0.1", port))


def test_injected_faults(vbm, vm, tmp_path):
    vbm.faults({"command": "controlvm", "contains": "pause", "fault": "session_locked",
                "times": 2},
               {"command": "startvm", "fault": "start_error",
                "verr": "VERR_VMX_MSR_ALL_VMX_DISABLED", "times": 1},
               {"command": "list", "fault": "vboxsvc_unreachable", "times": 1})
    status, _, err = vbm("list", "vms")
    assert "CO_E_SERVER_EXEC_FAILURE (0x80080005)" in err
    assert vbm("list", "vms")[0] == 0
    status, _, err = vbm("startvm", vm)
    assert status == 1 and "VT-x is disabled in the BIOS for all CPU modes" in err
    assert "VERR_VMX_MSR_ALL_VMX_DISABLED" in (tmp_path / "slot" / vm / "Logs" / "VBox.log"
                                               ).read_text()
    assert vbm.info(vm)["VMState"] == "poweroff" and fake_vm_pids(tmp_path) == []
    vbm.ok("startvm", vm)
    for _ in range(2):
        status, _, err = vbm("controlvm", vm, "pause")
        assert "already locked for a session" in err and "(0x80bb0007)" in err
    vbm.ok("controlvm", vm, "pause")
    calls = [json.loads(line) for line in
             (tmp_path / "home" / "fake-calls.jsonl").read_text().splitlines()]
    assert [c["status"] for c in calls if "pause" in c["argv"]] == [1, 1, 0]


def test_corrupt_and_missing_images(vbm, tmp_path):
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(os.urandom(4096))
    status, _, err = vbm("createmedium", "disk", "--filename", str(tmp_path / "o.vdi"),
                         "--diffparent", str(junk))
    assert status == 1 and "VERR_NOT_SUPPORTED" in err
    status, _, err = vbm("createmedium", "disk", "--filename", str(tmp_path / "o.vdi"),
                         "--diffparent", str(tmp_path / "missing.qcow2"))
    assert status == 1 and "VERR_FILE_NOT_FOUND" in err
    truncated = tmp_path / "cut.qcow2"
    truncated.write_bytes(write_qcow2(tmp_path / "whole.qcow2").read_bytes()[:65536])
    status, _, err = vbm("createmedium", "disk", "--filename", str(tmp_path / "o.vdi"),
                         "--diffparent", str(truncated))
    assert status == 1 and "VERR_VD_GEN_INVALID_HEADER" in err
    assert not (tmp_path / "o.vdi").exists()


def test_savestate_then_start_continues_the_guest(vbm, vm, tmp_path):
    ram_file = tmp_path / "slot" / vm / "fake-vm-ram.json"
    vbm.ok("startvm", vm)
    time.sleep(0.3)
    vbm.ok("controlvm", vm, "savestate")
    assert vbm.info(vm)["VMState"] == "saved" and fake_vm_pids(tmp_path) == []
    saved = json.loads(ram_file.read_text())["ticks"]
    assert saved > 0
    assert len(list((tmp_path / "slot" / vm / "Snapshots").glob("*.sav"))) == 1
    vbm.ok("startvm", vm)
    assert "Console: Machine state changed to 'Restoring'" in (
        tmp_path / "slot" / vm / "Logs" / "VBox.log").read_text()
    time.sleep(0.15)
    assert json.loads(ram_file.read_text())["ticks"] >= saved
    assert list((tmp_path / "slot" / vm / "Snapshots").glob("*.sav")) == []  # consumed
    assert (tmp_path / "slot" / vm / "Logs" / "VBox.log.1").exists()  # rotated per start


def test_guest_properties_clone_shared_folders_bandwidth(vbm, vm, tmp_path):
    assert vbm.ok("guestproperty", "get", vm, "/VirtualBox/GuestInfo/OS/Product") == \
        "No value set!\n"
    vbm.ok("guestproperty", "set", vm, "/boinc/state", "ready")
    assert vbm.ok("guestproperty", "get", vm, "/boinc/state") == "Value: ready\n"
    assert "Name: /boinc/state, value: ready" in vbm.ok("guestproperty", "enumerate", vm)
    out = vbm.ok("clonemedium", "disk", str(tmp_path / "slot" / "overlay.vdi"),
                 str(tmp_path / "copy.vdi"), "--format", "VDI")
    assert "Clone medium created in format 'VDI'. UUID:" in out
    assert (tmp_path / "copy.vdi").exists()
    status, _, err = vbm("sharedfolder", "add", vm, "--name", "shared", "--hostpath",
                         str(tmp_path / "nope"))
    assert status == 1 and "does not exist" in err
    (tmp_path / "shared").mkdir()
    vbm.ok("sharedfolder", "add", vm, "--name", "shared", "--hostpath", str(tmp_path / "shared"))
    status, _, err = vbm("sharedfolder", "add", vm, "--name", "shared", "--hostpath",
                         str(tmp_path / "shared"))
    assert "already exists" in err
    info = vbm.info(vm)
    assert info["SharedFolderNameMachineMapping1"] == "shared"
    assert info["SharedFolderPathMachineMapping1"] == str(tmp_path / "shared")
    vbm.ok("bandwidthctl", vm, "add", f"{vm}_net", "--type", "network", "--limit", "1024G")
    vbm.ok("sharedfolder", "remove", vm, "--name", "shared")
    assert "SharedFolderNameMachineMapping1" not in vbm.info(vm)

"""Parsing VBoxManage output the way the driver relies on it."""

from __future__ import annotations

from vmwrapper.hypervisor.vboxmanage import (
    VBoxResult,
    parse_hostinfo,
    parse_in_use_by,
    parse_machine_readable,
    parse_snapshot_list,
    parse_vm_pid,
)


def test_machine_readable_quoted_keys_and_values():
    info = parse_machine_readable(
        'name="boinc_0123456789abcdef"\nmemory=512\nVMState="running"\n'
        '"SATA-0-0"="/slots/1/overlay.vdi"\nForwarding(0)="pf8080,tcp,127.0.0.1,8080,,80"\n'
        'description="a=b"\n')
    assert info["name"] == "boinc_0123456789abcdef"
    assert info["memory"] == "512"
    assert info["SATA-0-0"] == "/slots/1/overlay.vdi"
    assert info["Forwarding(0)"] == "pf8080,tcp,127.0.0.1,8080,,80"
    assert info["description"] == "a=b"


def test_snapshot_list_tree_with_current_marker():
    # The layout vboxwrapper's cleanup_snapshots documents and parses.
    text = ("   Name: Snapshot 2 (UUID: 1751e9a6-49e7-4dcc-ab23-08428b665ddf)\n"
            "      Name: Snapshot 3 (UUID: 92fa8b35-873a-4197-9d54-7b6b746b2c58)\n"
            "         Name: boinc_4 (UUID: c049023a-5132-45d5-987d-a9cfadb09664) *\n")
    entries = parse_snapshot_list(text)
    assert [e.name for e in entries] == ["Snapshot 2", "Snapshot 3", "boinc_4"]
    assert [e.depth for e in entries] == [1, 2, 3]
    assert [e.current for e in entries] == [False, False, True]
    assert entries[0].uuid == "1751e9a6-49e7-4dcc-ab23-08428b665ddf"


def test_no_snapshots_is_an_empty_list():
    assert parse_snapshot_list("This machine does not have any snapshots\n") == []


def test_hostinfo_and_pid_and_holders():
    info = parse_hostinfo("Host Information:\n\nProcessor count: 8\n"
                          "Processor supports HW virtualization: yes\n")
    assert info["Processor count"] == "8"
    log = ("00:00:06.015 Executable: /usr/lib/virtualbox/VBoxHeadless\n"
           "00:00:06.015 Process ID: 6128\n00:00:07.000 Process ID: 7000\n")
    assert parse_vm_pid(log) == 7000
    assert parse_vm_pid("no pid here") is None
    holders = parse_in_use_by(
        "UUID:           c119acaf-636c-41f6-86c9-38e639a31339\n"
        "In use by VMs:  boinc_aa (UUID: 000ab2be-1254-4c6a-9fdc-1536a478f601), "
        "test2 (UUID: 111ab2be-1254-4c6a-9fdc-1536a478f601)\n")
    assert holders == [("boinc_aa", "000ab2be-1254-4c6a-9fdc-1536a478f601"),
                       ("test2", "111ab2be-1254-4c6a-9fdc-1536a478f601")]


def test_result_code_is_the_first_hex_code_like_vboxwrapper():
    result = VBoxResult(("controlvm",), 1, "", (
        "VBoxManage: error: The machine 'x' is already locked for a session\n"
        "VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), "
        "component MachineWrap, interface IMachine, callee nsISupports\n"
        'VBoxManage: error: Context: "LockMachine(a->session, LockType_Write)"\n'))
    assert result.code == 0x80BB0007
    assert result.code_name == "VBOX_E_INVALID_OBJECT_STATE"
    assert result.retriable
    assert result.message == "The machine 'x' is already locked for a session"

"""The driver vocabulary: spec validation, capability defaults, error messages, loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmwrapper.hypervisor import load_driver
from vmwrapper.hypervisor.base import Capabilities, PortForward, SharedFolder, VMSpec, VMState
from vmwrapper.hypervisor.errors import (
    HypervisorError,
    HypervisorNotInstalled,
    InvalidSpec,
    OutOfDisk,
    PortInUse,
)

BASE = {"name": "vm-1", "base_image": "/images/a.qcow2", "vm_dir": "/slots/0/vm"}


def test_spec_normalises_paths_and_defaults():
    spec = VMSpec(**BASE)
    assert spec.base_image == Path("/images/a.qcow2")
    assert spec.console_log_path == Path("/slots/0/vm/console.log")
    assert spec.network and spec.port_forwards == () and spec.memory_mb == 512


@pytest.mark.parametrize("changes, words", [
    ({"name": "has space"}, "VM name"),
    ({"name": ""}, "VM name"),
    ({"name": "x" * 65}, "VM name"),
    ({"base_image": "relative.qcow2"}, "absolute"),
    ({"vm_dir": "slot/vm"}, "absolute"),
    ({"config_disk": "ud.iso"}, "absolute"),
    ({"memory_mb": 16}, "64 MiB"),
    ({"cpus": 0}, "1-64"),
    ({"port_forwards": (PortForward(8080, 80), PortForward(8080, 81))}, "same host port"),
])
def test_spec_rejects_bad_values_with_a_clear_message(changes, words):
    with pytest.raises(InvalidSpec) as info:
        VMSpec(**{**BASE, **changes})
    assert words in str(info.value)


@pytest.mark.parametrize("args, words", [
    ((0, 80), "host_port"), ((80, 70000), "guest_port"), ((80, 80, "icmp"), "protocol")])
def test_port_forward_validation(args, words):
    with pytest.raises(InvalidSpec, match=words):
        PortForward(*args)


def test_shared_folder_never_the_host_root():
    with pytest.raises(InvalidSpec, match="root"):
        SharedFolder(Path("/"))
    with pytest.raises(InvalidSpec, match="absolute"):
        SharedFolder(Path("shared"))
    assert SharedFolder(Path("/slots/0/shared")).tag == "shared"


def test_capabilities_default_to_false():
    assert not any(vars(Capabilities()).values())


def test_alive_states():
    assert {s for s in VMState if s.is_alive} == {VMState.RUNNING, VMState.PAUSED}


def test_errors_carry_code_transience_and_advice():
    error = HypervisorNotInstalled("qemu-system-x86_64 was not found")
    assert isinstance(error, HypervisorError)
    assert error.code == "hypervisor_not_installed" and not error.transient
    assert str(error).startswith("qemu-system-x86_64 was not found. Install")
    assert OutOfDisk("x").transient and PortInUse("x").transient
    codes = [cls.code for cls in HypervisorError.__subclasses__()]
    assert len(codes) == len(set(codes)), "error codes must be unique"


def test_load_driver_names_the_valid_choices():
    with pytest.raises(InvalidSpec) as info:
        load_driver("hyperv", reactor=None)
    assert "qemu" in str(info.value) and "virtualbox" in str(info.value)

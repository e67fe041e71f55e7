"""Every vboxwrapper vbox_job.xml element: its default, and a value read from the file."""

from __future__ import annotations

import dataclasses

import pytest

from vmwrapper.job import JobDescription, PortForward
from vmwrapper.job.broker import Broker
from vmwrapper.job.model import xml_fields

from .helpers import parse

#: vboxwrapper.md section 1.4 (vboxjob.cpp VBOX_JOB::clear), written out independently.
VBOX_DEFAULTS = {
    "os_name": "",
    "memory_size_mb": 0.0,
    "vram_size_mb": 16.0,
    "vm_disk_controller_type": "sata",
    "vm_disk_controller_model": "IntelAHCI",
    "vm_graphics_controller_type": "VBoxVGA",
    "job_duration": 0.0,
    "minimum_checkpoint_interval": 600.0,
    "minimum_heartbeat_interval": 600.0,
    "fraction_done_filename": "",
    "heartbeat_filename": "",
    "completion_trigger_file": "",
    "temporary_exit_trigger_file": "",
    "multiattach_vdi_file": "",
    "enable_cern_dataformat": False,
    "enable_network": False,
    "network_bridged_mode": False,
    "enable_nat_dns_host_resolver": False,
    "vm_network_driver": "",
    "enable_shared_directory": False,
    "share_slot_dir": False,
    "enable_scratch_directory": False,
    "share_project_dir": False,
    "copy_to_shared": (),
    "copy_cmdline_to_shared": False,
    "enable_floppyio": False,
    "enable_isocontextualization": False,
    "enable_cache_disk": False,
    "boot_iso": False,
    "enable_remotedesktop": False,
    "enable_screenshots_on_error": False,
    "enable_graphics_support": False,
    "enable_vm_savestate_usage": False,
    "disable_automatic_checkpoints": False,
    "pf_guest_port": 0,
    "pf_host_port": 0,
    "port_forward": (),
    "trickle_trigger_file": (),
    "intermediate_upload_file": (),
}

OUR_DEFAULTS = {
    "hypervisor": ("auto",),
    "broker": Broker(),
    "image": "vm_image.vdi",
    "boot_timeout": 300.0,
    "trickle_period": 3600.0,
    "copy_to_guest": (),
    "copy_from_guest": (),
    "task": (),
    "unzip_input": (),
    "zip_output": (),
}

#: (XML body, field, value read). The shared-directory files need a shared dir.
SHARED = "<enable_shared_directory/>\n"
SET_VALUES = [
    ("<os_name>Linux26_64</os_name>", "os_name", "Linux26_64"),
    ("<memory_size_mb>2048</memory_size_mb>", "memory_size_mb", 2048.0),
    ("<vram_size_mb>64</vram_size_mb>", "vram_size_mb", 64.0),
    ("<vm_disk_controller_type>ide</vm_disk_controller_type>", "vm_disk_controller_type", "ide"),
    ("<vm_disk_controller_model>piix4</vm_disk_controller_model>",
     "vm_disk_controller_model", "PIIX4"),
    ("<vm_graphics_controller_type>VMSVGA</vm_graphics_controller_type>",
     "vm_graphics_controller_type", "VMSVGA"),
    ("<job_duration>64800</job_duration>", "job_duration", 64800.0),
    ("<minimum_checkpoint_interval>900.5</minimum_checkpoint_interval>",
     "minimum_checkpoint_interval", 900.5),
    ("<minimum_heartbeat_interval>1200</minimum_heartbeat_interval>",
     "minimum_heartbeat_interval", 1200.0),
    (SHARED + "<fraction_done_filename>progress</fraction_done_filename>",
     "fraction_done_filename", "progress"),
    (SHARED + "<heartbeat_filename>heartbeat</heartbeat_filename>", "heartbeat_filename",
     "heartbeat"),
    (SHARED + "<completion_trigger_file>done.txt</completion_trigger_file>",
     "completion_trigger_file", "done.txt"),
    (SHARED + "<temporary_exit_trigger_file>tmp_exit</temporary_exit_trigger_file>",
     "temporary_exit_trigger_file", "tmp_exit"),
    ("<multiattach_vdi_file>base.vdi</multiattach_vdi_file>", "multiattach_vdi_file", "base.vdi"),
    ("<enable_cern_dataformat/>", "enable_cern_dataformat", True),
    ("<enable_network>1</enable_network>", "enable_network", True),
    ("<network_bridged_mode/>", "network_bridged_mode", True),
    ("<enable_nat_dns_host_resolver/>", "enable_nat_dns_host_resolver", True),
    ("<vm_network_driver>virtio</vm_network_driver>", "vm_network_driver", "virtio"),
    ("<enable_shared_directory/>", "enable_shared_directory", True),
    ("<share_slot_dir/>", "share_slot_dir", True),
    ("<enable_scratch_directory/>", "enable_scratch_directory", True),
    ("<share_project_dir/>", "share_project_dir", True),
    (SHARED + "<copy_to_shared>a.txt</copy_to_shared><copy_to_shared>b.txt</copy_to_shared>",
     "copy_to_shared", ("a.txt", "b.txt")),
    (SHARED + "<copy_cmdline_to_shared/>", "copy_cmdline_to_shared", True),
    ("<enable_floppyio/>", "enable_floppyio", True),
    ("<enable_isocontextualization/>", "enable_isocontextualization", True),
    ("<enable_cache_disk/>", "enable_cache_disk", True),
    ("<boot_iso/>", "boot_iso", True),
    ("<enable_remotedesktop/>", "enable_remotedesktop", True),
    ("<enable_screenshots_on_error/>", "enable_screenshots_on_error", True),
    ("<enable_graphics_support/>", "enable_graphics_support", True),
    ("<enable_vm_savestate_usage/>", "enable_vm_savestate_usage", True),
    ("<disable_automatic_checkpoints/>", "disable_automatic_checkpoints", True),
    ("<enable_network/><pf_guest_port>80</pf_guest_port>", "pf_guest_port", 80),
    ("<pf_guest_port>80</pf_guest_port><pf_host_port>7859</pf_host_port>", "pf_host_port", 7859),
    ("<enable_network/><port_forward><host_port>8080</host_port><guest_port>80</guest_port>"
     "<is_remote/></port_forward>",
     "port_forward", (PortForward(8080, 80, True, 0),)),
    (SHARED + "<trickle_trigger_file>t1</trickle_trigger_file>"
     "<trickle_trigger_file>t2</trickle_trigger_file>", "trickle_trigger_file", ("t1", "t2")),
    (SHARED + "<intermediate_upload_file>part.tgz</intermediate_upload_file>",
     "intermediate_upload_file", ("part.tgz",)),
]


def test_the_model_has_exactly_vboxwrappers_elements_and_ours():
    names = {f.name for f in xml_fields(JobDescription)}
    assert names == set(VBOX_DEFAULTS) | set(OUR_DEFAULTS)


@pytest.mark.parametrize("root", ["vbox_job", "job_desc", "vm_job"])
def test_an_empty_job_has_vboxwrappers_defaults(root):
    job = parse("", root).job
    for name, default in {**VBOX_DEFAULTS, **OUR_DEFAULTS}.items():
        assert getattr(job, name) == default, name
    assert job.broker.embedded
    assert job.root == root


def test_every_vboxwrapper_element_is_exercised_below():
    assert {name for _, name, _ in SET_VALUES} == set(VBOX_DEFAULTS)


@pytest.mark.parametrize(("body", "name", "value"), SET_VALUES, ids=[n for _, n, _ in SET_VALUES])
def test_each_vboxwrapper_element_is_read(body, name, value):
    loaded = parse(body, "vbox_job")
    assert getattr(loaded.job, name) == value
    others = {n: d for n, d in VBOX_DEFAULTS.items()
              if f"<{n}>" not in body and f"<{n}/>" not in body}
    assert {n: getattr(loaded.job, n) for n in others} == others


@pytest.mark.parametrize(("text", "value"), [("", True), ("1", True), (" 1 ", True), ("0", False)])
def test_booleans_are_read_the_boinc_way(text, value):
    assert parse(f"<boot_iso>{text}</boot_iso>").job.boot_iso is value


def test_port_forward_range_and_lines():
    job = parse("<enable_network/>\n<port_forward>\n<host_port>55000</host_port>"
                "<guest_port>8000</guest_port><nports>3</nports></port_forward>").job
    (forward,) = job.port_forward
    assert forward.line == 3
    assert not forward.is_remote
    assert forward.ports() == [(55000, 8000), (55001, 8001), (55002, 8002)]


def test_values_outside_vboxwrappers_ranges_are_adjusted_with_a_warning():
    loaded = parse("<vram_size_mb>512</vram_size_mb>\n<memory_size_mb>256</memory_size_mb>")
    assert loaded.job.vram_size_mb == 128.0
    assert loaded.job.memory_size_mb == 256.0
    assert loaded.job.vm_memory_mb == 512.0
    assert [(w.line, w.element) for w in loaded.warnings] == [
        (2, "<vram_size_mb>"), (3, "<memory_size_mb>")]
    assert all(w.severity == "warning" for w in loaded.warnings)


def test_the_model_is_immutable():
    job = parse("").job
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.memory_size_mb = 1  # type: ignore[misc]

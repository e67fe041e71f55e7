"""VirtualBox-only job options in VMSpec.extra: names, types, limits."""

from __future__ import annotations

import pytest

from vmwrapper.hypervisor.errors import InvalidSpec
from vmwrapper.hypervisor.vbox_options import VBoxOptions


def test_defaults_are_vboxwrappers():
    options = VBoxOptions.from_extra({})
    assert (options.os_name, options.vram, options.controller_type,
            options.vm_disk_controller_model) == ("Linux26_64", 16, "sata", "IntelAHCI")
    assert not options.enable_vm_savestate_usage


@pytest.mark.parametrize(("vram", "expected"), [(0, 16), (64, 64), (64.5, 64), (4096, 128)])
def test_video_memory_is_clamped(vram, expected):
    assert VBoxOptions.from_extra({"vram_size_mb": vram}).vram == expected


@pytest.mark.parametrize(("extra", "message"), [
    ({"ostype": "Linux"}, "unknown VirtualBox option.*ostype.*valid: enable_nat"),
    ({"network_bridged_mode": "yes"}, "must be true or false"),
    ({"vram_size_mb": "32"}, "must be a number"),
    ({"vram_size_mb": True}, "must be a number"),
    ({"os_name": 7}, "must be text"),
    ({"vm_disk_controller_type": "floppy"}, "valid: ide, pcie, sas, sata, scsi, usb, virtio"),
    ({"os_name": ""}, "must not be empty"),
])
def test_bad_options_say_what_is_wrong(extra, message):
    with pytest.raises(InvalidSpec, match=message):
        VBoxOptions.from_extra(extra)

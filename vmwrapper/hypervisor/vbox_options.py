"""VirtualBox-only job options, passed to the driver in ``VMSpec.extra``.

The keys are the ``vbox_job.xml`` element names (``vmwrapper/job/drivers.py``
lists them as honoured by the VirtualBox driver), so one vocabulary runs from
the job file to VBoxManage. Defaults and limits are vboxwrapper's
(``shared/vboxwrapper.md`` section 1.4).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from vmwrapper.hypervisor.errors import InvalidSpec

#: ``storagectl --add`` values (VBoxManage manual: storagectl).
CONTROLLER_TYPES = frozenset({"ide", "sata", "scsi", "sas", "usb", "pcie", "virtio"})


@dataclass(frozen=True)
class VBoxOptions:
    """The VirtualBox settings a job may choose; everything else is the driver's.

    :param os_name: VirtualBox guest OS type (``createvm --ostype``).
    :param vram_size_mb: video memory, clamped to 16..128 as vboxwrapper does.
    :param vm_disk_controller_type: ``storagectl --add`` (sata, ide, scsi, ...).
    :param vm_disk_controller_model: ``storagectl --controller`` (IntelAHCI, PIIX4, ...).
    :param vm_graphics_controller_type: ``modifyvm --graphicscontroller``; empty = default.
    :param vm_network_driver: ``modifyvm --nictype1``; empty = VirtualBox's default.
    :param network_bridged_mode: bridge the NIC to the host's first interface instead of NAT.
    :param enable_nat_dns_host_resolver: ``--natdnshostresolver1 on``.
    :param enable_remotedesktop: VRDE on a loopback port (needs the Extension Pack).
    :param enable_vm_savestate_usage: ``power_off`` saves the VM state (``controlvm
        savestate``) so the next ``start`` continues where it was.
    """

    os_name: str = "Linux26_64"
    vram_size_mb: int = 16
    vm_disk_controller_type: str = "sata"
    vm_disk_controller_model: str = "IntelAHCI"
    vm_graphics_controller_type: str = ""
    vm_network_driver: str = ""
    network_bridged_mode: bool = False
    enable_nat_dns_host_resolver: bool = False
    enable_remotedesktop: bool = False
    enable_vm_savestate_usage: bool = False

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> VBoxOptions:
        """Validate ``VMSpec.extra``: unknown keys and wrong types are ``InvalidSpec``."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise InvalidSpec(f"unknown VirtualBox option(s) {', '.join(unknown)}; valid: "
                              f"{', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for key, value in extra.items():
            default = known[key].default
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise InvalidSpec(f"VirtualBox option {key}={value!r} must be true or false")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise InvalidSpec(f"VirtualBox option {key}={value!r} must be a number")
                value = int(value)
            elif not isinstance(value, str):
                raise InvalidSpec(f"VirtualBox option {key}={value!r} must be text")
            values[key] = value
        options = cls(**values)
        if options.vm_disk_controller_type.lower() not in CONTROLLER_TYPES:
            raise InvalidSpec(
                f"vm_disk_controller_type={options.vm_disk_controller_type!r}; valid: "
                f"{', '.join(sorted(CONTROLLER_TYPES))}")
        if not options.os_name or not options.vm_disk_controller_model:
            raise InvalidSpec("os_name and vm_disk_controller_model must not be empty")
        return options

    @property
    def vram(self) -> int:
        return min(128, max(16, self.vram_size_mb))

    @property
    def controller_type(self) -> str:
        return self.vm_disk_controller_type.lower()

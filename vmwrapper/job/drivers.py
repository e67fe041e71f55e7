"""Which job options each hypervisor driver honours, and warnings for the rest.

vboxwrapper's ``vbox_job.xml`` was written for VirtualBox; several of its
options (video memory, disk controller model, VRDE, ...) mean nothing to QEMU.
A reused file must still run, so such an option is accepted and produces a
warning line in ``stderr.txt`` instead of an error. The table below is the one
place that says what each driver does with each option: driver authors update it
when they add support. Options not listed are honoured by every driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmwrapper.job.issues import JobIssue

if TYPE_CHECKING:
    from vmwrapper.job.model import JobDescription

#: The hypervisor drivers a job can name, in the default order of preference.
DRIVER_NAMES: tuple[str, ...] = ("qemu", "virtualbox")

#: option -> (drivers that honour it, what the others do instead).
DRIVER_SUPPORT: dict[str, tuple[frozenset[str], str]] = {
    "os_name": (frozenset({"virtualbox"}),
                "it is VirtualBox's guest OS type; QEMU runs any guest as configured"),
    "vram_size_mb": (frozenset({"virtualbox"}), "QEMU's display has its own fixed video memory"),
    "vm_disk_controller_type": (frozenset({"virtualbox"}), "QEMU attaches disks as virtio-blk"),
    "vm_disk_controller_model": (frozenset({"virtualbox"}), "QEMU attaches disks as virtio-blk"),
    "vm_graphics_controller_type": (frozenset({"virtualbox"}), "QEMU uses its standard display"),
    "vm_network_driver": (frozenset({"virtualbox"}),
                          "the value names a VirtualBox NIC type; QEMU uses virtio-net"),
    "network_bridged_mode": (frozenset({"virtualbox"}),
                             "QEMU uses user-mode networking (no bridge without root)"),
    "enable_nat_dns_host_resolver": (frozenset({"virtualbox"}),
                                     "QEMU's user-mode network always resolves through the host"),
    "enable_remotedesktop": (frozenset({"virtualbox"}),
                             "QEMU offers no VRDE remote desktop; the VM stays headless"),
    "enable_vm_savestate_usage": (frozenset({"virtualbox"}),
                                  "the QEMU driver always saves the VM state on quit"),
}


def driver_warnings(job: JobDescription, driver: str) -> list[JobIssue]:
    """Warnings for options set in *job* that *driver* does not honour.

    Only options written in the file count: defaults never warn.
    """
    warnings = []
    for option, (honoured_by, instead) in DRIVER_SUPPORT.items():
        if driver in honoured_by or option not in job.lines:
            continue
        warnings.append(JobIssue(
            job.source, job.lines[option], f"<{option}>",
            f"ignored by the {driver} driver: {instead}.",
            severity="warning",
        ))
    return warnings

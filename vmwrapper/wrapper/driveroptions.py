"""Options the wrapper passes to a hypervisor driver beyond the reactor.

For QEMU this is what decides KVM or TCG (``vmwrapper.hypervisor.qemu``): the
driver uses KVM only after a short probe boot of the appliance's
``probe-vmlinuz``/``probe-initrd`` printed its marker. The wrapper looks for
those two files under their BOINC logical names in the slot (a project ships
them as app-version files next to the image); without them the driver falls
back to ``$VMWRAPPER_QEMU_PROBE_DIR`` and then to TCG. The verdict is cached in
the project directory, which outlives the slot: only the first task on a host
pays for the probe (at most the probe timeout, 10 s), every later one decides
at once.
"""

from __future__ import annotations

import pathlib
from typing import Any

from vmwrapper.boinc.errors import SlotError
from vmwrapper.boinc.filenames import resolve_filename

#: Logical names of the KVM probe boot's kernel and initramfs.
PROBE_KERNEL = "probe-vmlinuz"
PROBE_INITRD = "probe-initrd"
#: The probe verdict's cache file in the project directory.
PROBE_CACHE = "vmwrapper_kvm_probe.json"


def driver_options(name: str, slot_dir: pathlib.Path, project_dir: str = "") -> dict[str, Any]:
    """Keyword options for ``load_driver(name, reactor, **options)``; {} when none apply."""
    if name != "qemu":
        return {}
    options: dict[str, Any] = {}
    kernel, initrd = _slot_file(slot_dir, PROBE_KERNEL), _slot_file(slot_dir, PROBE_INITRD)
    if kernel is not None and initrd is not None:
        options["probe_kernel"], options["probe_initrd"] = kernel, initrd
    if project_dir and pathlib.Path(project_dir).is_dir():
        options["probe_cache"] = pathlib.Path(project_dir) / PROBE_CACHE
    return options


def _slot_file(slot_dir: pathlib.Path, logical_name: str) -> pathlib.Path | None:
    try:
        path = resolve_filename(slot_dir, logical_name)
    except SlotError:
        return None
    return path.resolve() if path.is_file() else None

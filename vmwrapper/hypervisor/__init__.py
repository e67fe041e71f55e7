"""Hypervisor drivers: one interface (``base``), one error hierarchy (``errors``).

Import a concrete driver from its module (``vmwrapper.hypervisor.qemu``,
``vmwrapper.hypervisor.virtualbox``) or by name with ``load_driver``; this
package imports nothing heavy so the wrapper starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from vmwrapper.hypervisor.base import (
    Capabilities,
    Checkpoint,
    HostInfo,
    HypervisorDriver,
    PortForward,
    SharedFolder,
    VMSpec,
    VMState,
)
from vmwrapper.hypervisor.errors import HypervisorError, InvalidSpec

#: driver name -> "module:class". Drivers register here with one line.
DRIVERS: dict[str, str] = {
    "qemu": "vmwrapper.hypervisor.qemu:QemuDriver",
    "virtualbox": "vmwrapper.hypervisor.virtualbox:VirtualBoxDriver",
}


def load_driver(name: str, reactor: Any, **options: Any) -> HypervisorDriver:
    """Construct the driver registered as ``name`` with ``reactor`` and ``options``.

    :raises InvalidSpec: unknown name (the message lists the valid ones).
    """
    try:
        target = DRIVERS[name]
    except KeyError:
        raise InvalidSpec(
            f"unknown hypervisor {name!r}; valid hypervisors: {', '.join(sorted(DRIVERS))}"
        ) from None
    module_name, class_name = target.split(":")
    driver_class = getattr(importlib.import_module(module_name), class_name)
    driver = driver_class(reactor, **options)
    if not isinstance(driver, HypervisorDriver):
        raise TypeError(f"{target} is not a HypervisorDriver")
    return driver


__all__ = [
    "DRIVERS", "Capabilities", "Checkpoint", "HostInfo", "HypervisorDriver", "HypervisorError",
    "PortForward", "SharedFolder", "VMSpec", "VMState", "load_driver",
]

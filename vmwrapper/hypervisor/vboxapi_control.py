"""A thin layer over VirtualBox's own Python API (``vboxapi``), used when it imports.

Why: every ``VBoxManage`` call starts a process and talks to VBoxSVC through
it; the API keeps one connection, so state queries and pause/resume cost no
process. Creation, media and snapshots stay on ``VBoxManage`` (as in BOINC's
vboxwrapper since it dropped COM in 2022), where the output is the contract.

``vboxapi`` ships with VirtualBox's SDK and cannot be installed or run on the
test machines, so this layer is **not tested here**; it only uses API names
documented in the VirtualBox SDK reference (``IVirtualBox.findMachine``,
``IMachine.state``/``lockMachine``, ``IConsole.pause``/``resume``).
"""

from __future__ import annotations

from typing import Any

from vmwrapper.hypervisor.errors import HypervisorNotInstalled

try:  # guarded: the SDK is optional and absent on most hosts
    import vboxapi  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the host
    vboxapi = None


def available() -> bool:
    """True when ``import vboxapi`` worked."""
    return vboxapi is not None


class VBoxApiControl:
    """State queries and pause/resume through the VirtualBox API.

    Calls are synchronous COM/XPCOM calls that return within milliseconds; the
    driver wraps them in Deferreds.
    """

    def __init__(self) -> None:
        if vboxapi is None:
            raise HypervisorNotInstalled(
                "VirtualBox's Python API (vboxapi, from the VirtualBox SDK) is not importable")
        self.manager = vboxapi.VirtualBoxManager(None, None)
        self.vbox = self.manager.getVirtualBox()
        self.constants = self.manager.constants

    def machine_state(self, name: str) -> str:
        """The state in ``showvminfo --machinereadable`` spelling ("running", "paused", ...).

        :raises LookupError: no VM by that name.
        """
        try:
            machine = self.vbox.findMachine(name)
        except Exception as failure:  # COM raises its own exception types
            raise LookupError(name) from failure
        names = self.constants.all_values("MachineState")
        for label, value in names.items():
            if value == machine.state:
                return label.lower()
        return "unknown"

    def _with_console(self, name: str, action: str) -> None:
        machine = self.vbox.findMachine(name)
        session = self.manager.getSessionObject(self.vbox)
        machine.lockMachine(session, self.constants.LockType_Shared)
        try:
            getattr(session.console, action)()
        finally:
            session.unlockMachine()

    def pause(self, name: str) -> None:
        self._with_console(name, "pause")

    def resume(self, name: str) -> None:
        self._with_console(name, "resume")


def make_control(use_api: Any) -> VBoxApiControl | None:
    """The API layer when asked for (``True``), or when ``"auto"`` and importable."""
    if use_api is False or (use_api == "auto" and not available()):
        return None
    return VBoxApiControl()

"""The VM's state, CPU time and console tail, read from a hypervisor driver for the page.

Driver calls return Deferreds; a snapshot provider must answer at once. So a
:class:`VMWatch` polls the driver on the injected clock (``LoopingCall``: a
slow poll delays the next instead of overlapping it) and keeps the last
answers, which a provider reads synchronously. A failed poll keeps the last
known values and is logged once per kind of error; the loop goes on (a
``LoopingCall`` would otherwise stop at the first exception).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task

from vmwrapper.boinc.log import log as default_log
from vmwrapper.hypervisor.base import HypervisorDriver, VMState
from vmwrapper.hypervisor.errors import VMNotFound
from vmwrapper.status.model import OUTPUT_LINES, StatusSnapshot

#: Seconds between two polls of the driver.
WATCH_INTERVAL = 1.0
#: Bytes of console log read per poll (enough for :data:`OUTPUT_LINES` lines).
CONSOLE_BYTES = 8192


class VMWatch:
    """Polls one VM of a driver: ``state``, ``cpu_time`` and ``console_lines``.

    :param driver: the hypervisor driver holding the VM.
    :param name: the VM's name in the driver.
    :param clock: ``IReactorTime`` (tests: ``task.Clock``).
    :param console: also read the console tail (when the driver can).
    """

    def __init__(self, driver: HypervisorDriver, name: str, clock: Any,
                 interval: float = WATCH_INTERVAL, console: bool = True,
                 log: Callable[[str], None] = default_log) -> None:
        self.driver = driver
        self.name = name
        self.state = VMState.ABSENT
        self.cpu_time = 0.0
        self.console_lines: tuple[str, ...] = ()
        self.interval = interval
        self._console = console and driver.capabilities.console_log
        self._log = log
        self._logged: set[str] = set()
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = clock

    def start(self) -> None:
        """Poll now and then every ``interval`` seconds."""
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    @defer.inlineCallbacks
    def poll(self) -> Any:
        """Read the driver once; never fails."""
        try:
            self.state = yield self.driver.state(self.name)
            if self.state.is_alive:
                self.cpu_time = yield self.driver.cpu_time(self.name)
            if self._console:
                text = yield self.driver.console_log(self.name, CONSOLE_BYTES)
                self.console_lines = tuple(text.splitlines()[-OUTPUT_LINES:])
        except VMNotFound:
            self.state = VMState.ABSENT
        except Exception as error:  # noqa: BLE001 - a failed poll keeps the last values
            kind = type(error).__name__
            if kind not in self._logged:
                self._logged.add(kind)
                self._log(f"status page: reading VM {self.name} failed ({kind}: {error})")

    def snapshot(self, base: StatusSnapshot | None = None) -> StatusSnapshot:
        """*base* (default: an empty snapshot) with this VM's state, CPU time and console."""
        return (base or StatusSnapshot()).but(
            vm_state=self.state.value, cpu_time=self.cpu_time,
            guest_output=self.console_lines or (base.guest_output if base else ()))

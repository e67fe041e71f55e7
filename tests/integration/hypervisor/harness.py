"""What the driver contract suite needs from each driver under test.

A driver joins the suite by providing a session-scoped pytest fixture named
``<driver>_harness`` that returns a ``DriverHarness`` (see ``conftest.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from twisted.internet.defer import Deferred

from vmwrapper.hypervisor.base import HypervisorDriver, VMSpec


@dataclass(frozen=True)
class GuestSample:
    """One report from the probe process running inside a guest.

    :param counter: a counter the guest process increments on every tick; it
        lives in guest memory only, so after a restore it continues from the
        value the checkpoint holds.
    :param guest_clock: the guest's monotonic clock in seconds (stops while paused).
    :param received: the host clock (``reactor.seconds()``) when the report arrived.
    """

    counter: int
    guest_clock: float
    received: float


class GuestObserver(Protocol):
    """Watches what happens inside the guests a harness boots.

    All methods run in the reactor thread and return Deferreds.
    """

    def hello(self, name: str, timeout: float) -> Deferred[str]:
        """Fire with the agent's hello text once the guest ``name`` reported in
        (at once if it already has); fail with ``TimeoutError`` after ``timeout``."""

    def next_sample(self, name: str, timeout: float) -> Deferred[GuestSample]:
        """Fire with the first probe report from ``name`` that arrives after this call."""


@dataclass
class DriverHarness:
    """One driver, set up so the contract suite can drive it.

    :param driver: the driver under test (constructed with the suite's reactor).
    :param make_spec: ``(vm_dir, name) -> VMSpec`` for a VM that boots a guest
        the ``guest`` observer can see (hello + probe samples).
    :param guest: observer of the guests, or None when the driver's guests cannot
        be observed (the tests that need one are then skipped, naming why).
    :param kill_vm_process: kills the VM's hypervisor process from outside, as a
        crash or the OOM killer would (SIGKILL), without telling the driver.
    :param vm_processes: ``vm_dir -> pids`` of live processes that belong to a VM
        in ``vm_dir`` (used to prove destroy/cleanup_stale leave none).
    :param run_orphan: ``(vm_dir, name)``: start a VM in ``vm_dir`` from ANOTHER
        process with a fresh driver, then SIGKILL that process, leaving the VM
        behind as a crashed wrapper would (for ``cleanup_stale``).
    :param boot_timeout: seconds a guest may take from ``start`` to hello.
    """

    driver: HypervisorDriver
    make_spec: Callable[[Path, str], VMSpec]
    guest: GuestObserver | None
    kill_vm_process: Callable[[str], None]
    vm_processes: Callable[[Path], list[int]]
    run_orphan: Callable[[Path, str], None]
    boot_timeout: float = 90.0

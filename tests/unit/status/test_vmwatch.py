"""VMWatch on a Clock: polls the driver each interval, keeps the last values when a poll fails."""

from __future__ import annotations

from twisted.internet import defer, task

from vmwrapper.hypervisor.base import Capabilities, VMState
from vmwrapper.hypervisor.errors import HypervisorFailure, VMNotFound
from vmwrapper.status.model import StatusSnapshot
from vmwrapper.status.vmwatch import VMWatch


class ScriptedDriver:
    """Just the three observation calls VMWatch makes, answering from attributes."""

    capabilities = Capabilities(console_log=True, cpu_time=True)

    def __init__(self) -> None:
        self.vm_state = VMState.RUNNING
        self.cpu = 1.5
        self.console = "boot\nagent up\n"
        self.error: Exception | None = None
        self.calls = 0

    def state(self, name):
        self.calls += 1
        if self.error:
            return defer.fail(self.error)
        return defer.succeed(self.vm_state)

    def cpu_time(self, name):
        return defer.succeed(self.cpu)

    def console_log(self, name, max_bytes=65536):
        return defer.succeed(self.console[-max_bytes:])


def test_polls_each_interval_and_fills_snapshots():
    clock, driver, logged = task.Clock(), ScriptedDriver(), []
    watch = VMWatch(driver, "vm", clock, interval=2.0, log=logged.append)
    watch.start()
    assert (watch.state, watch.cpu_time, watch.console_lines) == (
        VMState.RUNNING, 1.5, ("boot", "agent up"))
    driver.vm_state, driver.cpu = VMState.PAUSED, 3.0
    clock.advance(1.9)
    assert watch.state is VMState.RUNNING and driver.calls == 1
    clock.advance(0.1)
    base = StatusSnapshot(task="job", checkpoints=2)
    shown = watch.snapshot(base)
    assert (shown.vm_state, shown.cpu_time, shown.task, shown.checkpoints) == (
        "paused", 3.0, "job", 2)
    watch.stop()


def test_failures_keep_last_values_are_logged_once_and_polling_goes_on():
    clock, driver, logged = task.Clock(), ScriptedDriver(), []
    watch = VMWatch(driver, "vm", clock, interval=1.0, log=logged.append)
    watch.start()
    driver.error = HypervisorFailure("QMP socket closed")
    clock.advance(1.0)
    clock.advance(1.0)
    assert watch.state is VMState.RUNNING and len(logged) == 1
    assert "HypervisorFailure" in logged[0]
    driver.error = VMNotFound("vm")
    clock.advance(1.0)
    assert watch.state is VMState.ABSENT
    driver.error = None
    clock.advance(1.0)
    assert watch.state is VMState.RUNNING and driver.calls == 5
    watch.stop()


def test_cpu_time_of_a_stopped_vm_is_kept():
    clock, driver = task.Clock(), ScriptedDriver()
    watch = VMWatch(driver, "vm", clock, console=False)
    watch.start()
    driver.vm_state, driver.cpu = VMState.STOPPED, 0.0
    clock.advance(1.0)
    assert (watch.state, watch.cpu_time, watch.console_lines) == (VMState.STOPPED, 1.5, ())
    watch.stop()

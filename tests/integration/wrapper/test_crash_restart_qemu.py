"""A real QEMU guest crashes (its process SIGKILLed) after a checkpoint: the wrapper exits
temporarily, and the next wrapper run restores the checkpoint and continues the task.

Real pieces: the QEMU driver on the cached appliance, the embedded broker and host
controller (``GuestLink``), the guest agent. The BOINC runtime is the in-process double
(the real client's restart is covered by ``tests/integration/wrapper``).
"""

from __future__ import annotations

import os
import pathlib
import signal
import time

import pytest

from tests.polling import wait_until
from tests.unit.wrapper.fakes import FakeRuntime
from tests.unit.wrapper.test_driver_options import running_reactor  # noqa: F401
from vmwrapper.appliance.builder import find_built
from vmwrapper.appliance.userdata import AgentConfig, write_config_disk
from vmwrapper.hypervisor import load_driver
from vmwrapper.hypervisor.procinfo import command_line, is_running
from vmwrapper.job.load import load_job
from vmwrapper.wrapper.guestlink import GuestLink
from vmwrapper.wrapper.machine import VMSettings, Wrapper
from vmwrapper.wrapper.outcome import Ending
from vmwrapper.wrapper.slot import SlotLayout

pytestmark = pytest.mark.qemu

JOB = """<vm_job>
  <hypervisor>qemu</hypervisor>
  <trickle_period>0</trickle_period>
  <minimum_checkpoint_interval>1</minimum_checkpoint_interval>
  <task><application>/bin/sh</application>
    <command_line>-c 'i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo $i > counter; sleep 1; done'</command_line>
  </task>
</vm_job>
"""


def qemus_under(directory: pathlib.Path) -> list[int]:
    marker = str(directory) + "/"
    return [int(p.name) for p in pathlib.Path("/proc").iterdir()
            if p.name.isdigit() and is_running(int(p.name))
            and any(marker in arg for arg in command_line(int(p.name)))]


class OneRun:
    """One wrapper run in the slot, built in the reactor thread."""

    def __init__(self, reactor, slot: pathlib.Path, image: pathlib.Path) -> None:
        self.lines: list[str] = []
        self.exits: list[int] = []
        self.runtime = FakeRuntime(reactor, self.exits)
        self.driver = load_driver("qemu", reactor, accel="tcg")
        job = load_job(slot / "job.xml").job
        self.wrapper = Wrapper(
            clock=reactor, runtime=self.runtime, driver=self.driver,
            channel=GuestLink(reactor, job.broker), job=job, layout=SlotLayout.at(slot),
            vm_name="boincvm-crash-test", vm=VMSettings(image, 512, 1),
            write_config_disk=lambda path, settings: write_config_disk(
                path, AgentConfig(**settings)),
            exit=self.exits.append, log=self.lines.append)
        self.done = self.wrapper.run()

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)


def slot_with_job(tmp_path: pathlib.Path, job_xml: str) -> tuple[pathlib.Path, pathlib.Path]:
    """``(slot, image)``: a slot holding ``job_xml`` and the built appliance (skips if none)."""
    built = find_built()
    if built is None:
        pytest.skip("no appliance built yet (the QEMU integration tests build it)")
    slot = tmp_path / "slot"
    slot.mkdir()
    (slot / "job.xml").write_text(job_xml)
    return slot, built.qcow2


def test_crash_after_checkpoint_restarts_from_it(tmp_path, running_reactor):  # noqa: F811
    slot, image = slot_with_job(tmp_path, JOB)
    reactor = running_reactor.reactor
    first = second = None
    try:
        first = running_reactor.call(OneRun, reactor, slot, image)
        wait_until(lambda: first.wrapper.phase == "running tasks", 240, "the task to start")
        time.sleep(3)
        first.runtime.checkpoint_due = True
        wait_until(lambda: first.runtime.checkpoints, 120, "a checkpoint")
        first.runtime.checkpoint_due = False
        pid = first.driver.pid(first.wrapper.vm_name)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: first.done.called, 60, "the first run to end")
        outcome = first.done.result
        assert outcome.ending is Ending.TEMPORARY, outcome
        assert "restarting from the last checkpoint" in outcome.message
        assert qemus_under(slot) == []

        second = running_reactor.call(OneRun, reactor, slot, image)
        wait_until(lambda: second.said("continued from the checkpoint"), 240,
                   "the second run to restore the checkpoint")
        assert second.wrapper.state.crash_restarts == 1
        assert second.wrapper.state.episodes == 2
        running_reactor.call(second.wrapper.abort)
        wait_until(lambda: second.done.called, 60, "the abort")
        assert second.exits == [194]
    finally:
        for pid in qemus_under(slot):
            os.kill(pid, signal.SIGKILL)
        for run in (first, second):
            if run is not None and not run.done.called:  # a failed test: close its broker
                running_reactor.call(run.wrapper.channel.close, timeout=10)

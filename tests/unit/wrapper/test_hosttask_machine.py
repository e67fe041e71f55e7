"""The wrapper's state machine running host-only jobs: real processes (a private reactor
spawns and reaps them), a ``task.Clock`` for the wrapper's time, fakes for driver and channel
(which a host-only job must never touch)."""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.process import reapAllProcesses
from twisted.internet.selectreactor import SelectReactor

from tests.unit.wrapper.fakes import FakeChannel, FakeDriver, FakeRuntime
from vmwrapper.boinc.exitcodes import ExitStatus
from vmwrapper.job.load import load_job
from vmwrapper.wrapper.hosttask import HostTasks
from vmwrapper.wrapper.machine import VMSettings, Wrapper
from vmwrapper.wrapper.slot import SlotLayout

JOB = """<job_desc>
  <trickle_period>{trickle}</trickle_period>
  <task><where>host</where><application>step</application>
    <command_line>in mid</command_line></task>
  <task><where>host</where><application>finish</application>
    <command_line>mid out</command_line>
    <fraction_done_filename>progress</fraction_done_filename>
    <checkpoint_filename>progress</checkpoint_filename></task>
</job_desc>
"""
STEP = '#!/bin/sh\necho ran >> step.log\ntr a-z A-Z < "$1" > "$2"\n'
FINISH = '#!/bin/sh\necho ran >> finish.log\necho 0.5 > progress\n{wait}\nsort "$1" > "$2"\n'


class HostRun:
    def __init__(self, slot: pathlib.Path, finish_waits: bool, trickle: float = 3600) -> None:
        self.reactor = SelectReactor()
        self.clock = task.Clock()
        self.exits: list[int] = []
        self.runtime = FakeRuntime(self.clock, self.exits)
        # no driver at all, as the app gives a host-only job: any use of it would fail the job
        self.channel = FakeChannel(self.clock, FakeDriver(self.clock, disks={}))
        (slot / "finish_prog").write_text(FINISH.format(
            wait="while [ ! -e go ]; do sleep 0.02; done" if finish_waits else ""))
        (slot / "finish_prog").chmod(0o755)
        job_path = slot / "job.xml"
        job_path.write_text(JOB.format(trickle=trickle))
        job = load_job(job_path).job
        layout = SlotLayout.at(slot)
        host = HostTasks(spawn=self.reactor.spawnProcess, clock=self.clock, job=job,
                         slot_dir=slot, project_dir=str(slot), log=print, grace=5.0)
        self.wrapper = Wrapper(clock=self.clock, runtime=self.runtime, driver=None,
                               channel=self.channel, job=job, layout=layout, vm_name="vm",
                               vm=VMSettings(slot / "none.qcow2", 512, 1),
                               write_config_disk=lambda *_: None, exit=self.exits.append,
                               log=print, host_tasks=host)

    def spin_until(self, condition: Any, timeout: float = 15.0, tick: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not reached"
            self.reactor.iterate(0.01)
            reapAllProcesses()
            if tick:
                self.clock.advance(0.5)


@pytest.fixture
def slot(tmp_path: pathlib.Path) -> pathlib.Path:
    slot = tmp_path / "slot"
    slot.mkdir()
    (tmp_path / "wu_in").write_text("b\na\n")
    (slot / "in").write_text("<soft_link>../wu_in</soft_link>\n")
    (slot / "out").write_text("<soft_link>../wu_out</soft_link>\n")
    (slot / "step_prog").write_text(STEP)
    (slot / "step").write_text("<soft_link>step_prog</soft_link>\n")
    (slot / "finish").write_text("<soft_link>finish_prog</soft_link>\n")
    (slot / "step_prog").chmod(0o755)
    return slot


def test_host_only_job_runs_in_order_without_vm_or_broker(slot):
    run = HostRun(slot, finish_waits=False, trickle=5)
    done = run.wrapper.run()
    run.spin_until(lambda: done.called)
    assert run.runtime.finished == (0, None)
    assert (slot.parent / "wu_out").read_text() == "A\nB\n"
    assert run.channel.opened_with == [] and run.channel.shells == []
    assert run.wrapper.phase == "running tasks"
    cpu_trickles = [body for variety, body in run.runtime.trickles if variety == "cpu_time"]
    assert cpu_trickles, run.runtime.trickles
    assert run.wrapper.cumulative_cpu() == run.wrapper.host.cpu_seconds()


def test_quit_stops_the_running_task_and_the_restart_reruns_only_it(slot):
    first = HostRun(slot, finish_waits=True)
    first.wrapper.run()
    first.spin_until(lambda: (slot / "finish.log").exists())
    first.spin_until(lambda: first.runtime.fraction_done == pytest.approx(0.75))
    pid = first.wrapper._host_run.pid
    assert first.runtime.other_pids == [pid]  # the client counts it and kills it if we die
    # writing its checkpoint file (a new mtime) is a checkpoint: the state is saved
    first.spin_until(lambda: first.runtime.checkpoints)
    assert '"task_index": 1' in (slot / "vmwrapper_state.json").read_text()
    first.wrapper.quit()
    first.spin_until(lambda: first.exits == [0])
    assert first.runtime.other_pids == []
    assert first.runtime.finished is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    (slot / "go").touch()
    second = HostRun(slot, finish_waits=True)
    done = second.wrapper.run()
    second.spin_until(lambda: done.called)
    assert second.runtime.finished == (0, None)
    assert (slot / "step.log").read_text() == "ran\n"
    assert (slot / "finish.log").read_text() == "ran\nran\n"


def test_a_failing_host_task_ends_the_job_with_195(slot):
    (slot / "step_prog").write_text("#!/bin/sh\nexit 4\n")
    run = HostRun(slot, finish_waits=False)
    done = run.wrapper.run()
    run.spin_until(lambda: done.called)
    status, message = run.runtime.finished
    assert status == ExitStatus.CHILD_FAILED and "exit status 4" in message
    assert not (slot / "finish.log").exists()

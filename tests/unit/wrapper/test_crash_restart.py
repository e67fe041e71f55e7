"""A crashed or hung VM with a checkpoint restarts from it (temporary exit), once."""

from __future__ import annotations

import json

from tests.unit.wrapper.fakes import Script
from tests.unit.wrapper.test_machine import VM, assert_nothing_left, compute
from vmwrapper.boinc.exitcodes import RESTART_DELAY, ExitStatus
from vmwrapper.hypervisor.base import VMState
from vmwrapper.wrapper.outcome import Ending


def checkpointed_run(slot, seconds: float = 200):
    """A run that has saved one checkpoint after about 30 s of work."""
    run = slot.run(compute(seconds), checkpoint_interval=20)
    done = run.start()
    run.runtime.checkpoint_due = True
    run.advance(30)
    run.runtime.checkpoint_due = False
    assert run.runtime.checkpoints, "the test needs a checkpoint"
    return run, done


def test_crash_after_a_checkpoint_is_a_temporary_exit_that_keeps_it(slot):
    run, done = checkpointed_run(slot)
    run.driver.crash(VM)
    run.advance(2)
    assert done.result.ending is Ending.TEMPORARY
    delay, reason = run.runtime.temporary
    assert delay == RESTART_DELAY and "crashed" in reason and "last checkpoint" in reason
    state = json.loads(run.layout.state_file.read_text())
    assert state["resumable"] is True and state["crash_restarts"] == 1
    assert slot.disks[str(run.layout.vm_dir)]["checkpoint"] is not None


def test_hung_guest_after_a_checkpoint_is_a_temporary_exit(slot):
    run, done = checkpointed_run(slot)
    run.channel.lose(VM)
    run.advance(2)
    assert done.result.ending is Ending.TEMPORARY
    assert "no heartbeat" in run.runtime.temporary[1]
    assert run.driver.vm_state(VM) is VMState.STOPPED  # powered off, kept for the restore


def test_restart_after_a_crash_restores_and_finishes(slot):
    first, _ = checkpointed_run(slot, seconds=60)
    first.driver.crash(VM)
    first.advance(2)
    first.driver.stop_ticking()
    second = slot.run(compute(60))
    done = second.start()
    second.advance(80)
    assert ("restore_checkpoint", VM) in second.driver.calls
    assert done.result.status == 0
    assert_nothing_left(second)


def test_second_crash_from_the_same_checkpoint_ends_the_task(slot):
    first, _ = checkpointed_run(slot)
    first.driver.crash(VM)
    first.advance(2)
    first.driver.stop_ticking()
    second = slot.run(compute(200))
    done = second.start()
    second.advance(10)
    second.driver.crash(VM)
    second.advance(2)
    status, message = second.runtime.finished
    assert status == ExitStatus.CHILD_FAILED and "again" in message
    assert done.result.ending is Ending.FINISH
    assert_nothing_left(second)


def test_a_new_checkpoint_after_a_crash_allows_another_restart(slot):
    first, _ = checkpointed_run(slot)
    first.driver.crash(VM)
    first.advance(2)
    first.driver.stop_ticking()
    second = slot.run(compute(200), checkpoint_interval=20)
    done = second.start()
    second.runtime.checkpoint_due = True
    second.advance(30)
    assert json.loads(second.layout.state_file.read_text())["crash_restarts"] == 0
    second.driver.crash(VM)
    second.advance(2)
    assert done.result.ending is Ending.TEMPORARY


def test_crash_without_a_checkpoint_ends_the_task(slot):
    run = slot.run({"compute": Script(seconds=100)})
    done = run.start()
    run.advance(20)
    run.driver.crash(VM)
    run.advance(2)
    assert done.result.ending is Ending.FINISH
    assert run.runtime.finished[0] == ExitStatus.CHILD_FAILED
    assert_nothing_left(run)

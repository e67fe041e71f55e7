"""The wrapper's state machine against the test doubles, on a task.Clock."""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer

from tests.unit.wrapper.fakes import Script
from vmwrapper.boinc.exitcodes import ExitStatus
from vmwrapper.hypervisor.base import Checkpoint, VMState
from vmwrapper.hypervisor.errors import ImageMissing, OutOfDisk
from vmwrapper.wrapper.outcome import Ending
from vmwrapper.wrapper.trickles import cpu_time_body

VM = "boincvm-wu_0-abc"


def compute(seconds: float = 30, code: int = 0, output: bytes = b"sorted\n", **kw) -> dict:
    return {"compute": Script(seconds=seconds, code=code, writes={"output.txt": output},
                              progress_file="progress", counter_file="counter", **kw)}


def assert_nothing_left(run) -> None:
    assert run.driver.vms == {}, "the VM must be destroyed"
    leftovers = sorted(p.name for p in run.layout.slot_dir.iterdir())
    assert leftovers == ["in", "job.xml", "out"], leftovers
    assert run.channel.closed


def test_job_runs_to_success_and_cleans_up(slot):
    run = slot.run(compute(30, output=b"1 a\n2 b\n"))
    ended = []
    run.wrapper.on_exit.append(ended.append)
    done = run.start()
    run.advance(20)
    assert run.wrapper.current_task == "task 1: /bin/sh" and run.wrapper.task_fraction > 0
    run.advance(40)
    assert ended == [done.result]
    assert done.called
    outcome = done.result
    assert outcome.ending is Ending.FINISH and outcome.status == 0
    assert run.runtime.finished == (0, None)
    # the input went in under its guest name, the output came out to the resolved logical name
    assert run.driver.guest.files["input.txt"] == b"b\na\nb\n"
    assert slot.output.read_bytes() == b"1 a\n2 b\n"
    # the agent's settings went onto the user-data disk
    assert run.config_disks[0]["vm_id"] == VM
    assert run.channel.shells == ["exec /bin/sh -c compute"]
    assert_nothing_left(run)


def test_final_trickle_carries_the_vm_cpu_time_before_finish(slot):
    run = slot.run(compute(20))
    done = run.start()
    run.advance(40)
    assert done.result.status == 0
    assert [variety for variety, _ in run.runtime.trickles] == ["cpu_time"]
    body = run.runtime.trickles[-1][1]
    seconds = float(body.split(">")[1].split("<")[0])
    # boot 3 s + 20 s of work at 0.9 CPU s per second, polled before the trickle
    assert seconds == pytest.approx(run.driver.cpu_per_second * 21, abs=2)
    assert body == cpu_time_body(seconds)


def test_periodic_trickles_every_period_of_running_time(slot):
    run = slot.run(compute(200), trickle_period=60)
    done = run.start()
    run.advance(230)
    assert done.result.status == 0
    values = [float(body.split(">")[1].split("<")[0]) for _, body in run.runtime.trickles]
    assert len(values) == 4  # at 60, 120 and 180 s, and the final one
    assert values == sorted(values) and values[0] > 0


def test_trickle_period_zero_sends_none(slot):
    run = slot.run(compute(10), trickle_period=0)
    done = run.start()
    run.advance(30)
    assert done.result.status == 0
    assert run.runtime.trickles == []


def test_suspend_pauses_the_vm_and_stops_the_clock_of_the_job(slot):
    run = slot.run(compute(20))
    done = run.start()
    run.advance(10)
    run.wrapper.suspend()
    assert run.driver.vm_state(VM) is VMState.PAUSED
    assert VM in run.channel.held
    counted = run.wrapper.running_seconds
    run.advance(100)
    assert run.wrapper.running_seconds == counted
    assert not done.called, "a paused guest does no work"
    run.wrapper.resume()
    assert run.driver.vm_state(VM) is VMState.RUNNING
    assert VM not in run.channel.held
    run.advance(20)
    assert done.called and done.result.status == 0


def test_progress_file_from_the_guest_sets_fraction_done(slot):
    run = slot.run(compute(100))
    run.start()
    run.advance(54)
    assert 0.3 < run.runtime.fraction_done < 0.6


def test_time_based_fraction_done_without_progress_file(slot):
    job = slot.write_job()
    text = job.read_text().replace("<fraction_done_filename>progress</fraction_done_filename>", "")
    text = text.replace("<trickle_period>", "<job_duration>200</job_duration><trickle_period>")
    run = slot.run(compute(300), job_xml=text)
    run.start()
    run.advance(104)
    assert run.runtime.fraction_done == pytest.approx(0.5, abs=0.06)


def test_checkpoint_saves_vm_then_state_then_tells_the_client(slot):
    run = slot.run(compute(100), checkpoint_interval=20)
    run.start()
    run.runtime.checkpoint_due = True
    run.advance(30)
    assert ("save_checkpoint", VM) in run.driver.calls
    assert run.runtime.checkpoints, "checkpoint_completed was not called"
    assert run.wrapper.checkpoints == len(run.runtime.checkpoints)
    state = json.loads(run.layout.state_file.read_text())
    assert state["resumable"] is True and state["run_seq"] == 101 and state["task_index"] == 0
    assert state["cpu_time"] > 0


def test_quit_saves_then_restart_resumes_without_redoing_work(slot):
    first = slot.run(compute(100))
    done = first.start()
    first.advance(40)
    first.wrapper.quit()
    assert done.called and done.result.ending is Ending.SAVE
    assert first.exits == [0]
    assert first.driver.vm_state(VM) is VMState.STOPPED  # powered off, not destroyed
    counter_at_quit = int(slot.disks[str(first.layout.vm_dir)]["checkpoint"]["files"]["counter"])
    cpu_at_quit = json.loads(first.layout.state_file.read_text())["cpu_time"]
    assert counter_at_quit > 30
    first.driver.stop_ticking()

    second = slot.run(compute(100))
    done = second.start()
    second.advance(5)
    assert ("restore_checkpoint", VM) in second.driver.calls
    assert ("start", VM) not in second.driver.calls
    assert second.channel.opened_with[-1] is not None  # same broker port and logins
    second.advance(100 - counter_at_quit + 5)
    assert done.called and done.result.status == 0
    # the task was adopted, not started again, and its counter never went back
    assert second.channel.shells == []
    assert slot.output.read_bytes() == b"sorted\n"
    final = float(second.runtime.trickles[-1][1].split(">")[1].split("<")[0])
    assert final > cpu_at_quit, "the trickle is cumulative over both runs"
    assert_nothing_left(second)


def test_abort_destroys_everything_and_exits_194(slot):
    run = slot.run(compute(100))
    done = run.start()
    run.advance(20)
    run.wrapper.abort()
    assert done.called and done.result.ending is Ending.ABORT
    assert run.runtime.aborted and run.exits == [194]
    assert_nothing_left(run)


def test_abort_during_quit_still_aborts(slot):
    run = slot.run(compute(100))
    done = run.start()
    run.advance(20)
    saving = defer.Deferred()
    run.driver.save_checkpoint = lambda name: saving
    run.wrapper.quit()
    assert not done.called
    run.wrapper.abort()
    saving.callback(Checkpoint("boinc-1", run.clock.seconds()))
    assert done.result.ending is Ending.ABORT and run.exits == [194]
    assert_nothing_left(run)


def test_guest_never_says_hello_retries_once_then_fails(slot):
    run = slot.run(compute(10), boot_seconds=None, boot_timeout=30)
    done = run.start()
    run.advance(100)
    assert done.called
    assert [c for c in run.driver.calls if c[0] == "start"] == [("start", VM)] * 2
    status, message = run.runtime.finished
    assert status == ExitStatus.CHILD_FAILED
    assert "did not say hello within 30 s" in message
    assert_nothing_left(run)


def test_boot_deadline_does_not_count_suspended_time(slot):
    run = slot.run(compute(5), boot_seconds=None, boot_timeout=30)
    done = run.start()
    run.advance(10)
    run.wrapper.suspend()
    run.advance(100)
    assert [c for c in run.driver.calls if c[0] == "start"] == [("start", VM)]
    run.wrapper.resume()
    run.advance(80)
    assert done.called


def test_guest_command_failure_is_child_failed(slot):
    run = slot.run(compute(10, code=3))
    done = run.start()
    run.advance(30)
    status, message = run.runtime.finished
    assert status == ExitStatus.CHILD_FAILED and "exit status 3" in message
    assert done.result.status == 195
    assert_nothing_left(run)


def test_missing_output_is_sub_task_failure(slot):
    run = slot.run({"compute": Script(seconds=5)})
    run.start()
    run.advance(20)
    status, message = run.runtime.finished
    assert status == ExitStatus.SUB_TASK_FAILURE and "output.txt" in message
    assert_nothing_left(run)


def test_missing_image_is_init_failure(slot):
    run = slot.run(compute(5))
    run.driver.create_error = ImageMissing("/x/vm_image.qcow2 does not exist")
    run.start()
    run.advance(5)
    status, message = run.runtime.finished
    assert status == ExitStatus.INIT_FAILURE and "vm_image.qcow2" in message
    assert not run.layout.vm_dir.exists()


def test_transient_driver_error_is_a_temporary_exit(slot):
    run = slot.run(compute(5))
    run.driver.create_error = OutOfDisk("no room for the overlay")
    run.start()
    run.advance(5)
    delay, reason = run.runtime.temporary
    assert delay == 300 and "no room" in reason
    assert run.layout.state_file.exists() and not run.layout.config_disk.exists()


def test_vm_crash_is_reported(slot):
    run = slot.run(compute(100))
    done = run.start()
    run.advance(20)
    run.driver.crash(VM)
    run.advance(2)
    status, message = run.runtime.finished
    assert status == ExitStatus.CHILD_FAILED and "crashed" in message
    assert done.called
    assert_nothing_left(run)


def test_guest_heartbeat_loss_is_reported(slot):
    run = slot.run(compute(100))
    run.start()
    run.advance(20)
    run.channel.lose(VM)
    run.advance(2)
    status, message = run.runtime.finished
    assert status == ExitStatus.CHILD_FAILED and "no heartbeat" in message
    assert_nothing_left(run)


def test_guest_silence_while_suspended_is_expected(slot):
    run = slot.run(compute(30))
    done = run.start()
    run.advance(10)
    run.wrapper.suspend()
    run.channel.lose(VM)
    run.wrapper.resume()
    run.advance(40)
    assert done.result.status == 0


@pytest.mark.parametrize("event", ["no_heartbeat", "client_died"])
def test_client_gone_saves_and_exits(slot, event):
    run = slot.run(compute(100))
    done = run.start()
    run.advance(20)
    getattr(run.wrapper, event)()
    assert done.result.ending is Ending.SAVE and run.exits == [0]
    assert run.driver.vm_state(VM) is VMState.STOPPED
    assert json.loads(run.layout.state_file.read_text())["resumable"] is True


def test_quit_while_booting_keeps_nothing_to_resume(slot):
    run = slot.run(compute(10), boot_seconds=None)
    done = run.start()
    run.advance(2)
    run.wrapper.quit()
    assert done.result.ending is Ending.SAVE and run.exits == [0]
    assert ("save_checkpoint", VM) not in run.driver.calls
    assert json.loads(run.layout.state_file.read_text())["resumable"] is False


def test_time_limit_counts_as_success(slot):
    job = slot.write_job().read_text().replace(
        "<fraction_done_filename>", "<time_limit>5</time_limit><fraction_done_filename>")
    run = slot.run(compute(100), job_xml=job)
    done = run.start()
    run.advance(20)
    assert done.result.status == 0
    assert slot.output.read_bytes() == b"sorted\n"


def test_network_suspend_is_passed_to_the_guest(slot):
    run = slot.run(compute(30))
    run.start()
    run.advance(10)
    run.wrapper.network_suspended_changed(True)
    run.advance(2)
    assert run.channel.shells[-1] == "touch .boinc_network_suspended"
    run.wrapper.network_suspended_changed(False)
    assert run.channel.shells[-1] == "rm -f .boinc_network_suspended"


def test_corrupt_state_file_means_a_fresh_start(slot):
    (slot.slot_dir / "vmwrapper_state.json").write_text("{not json")
    run = slot.run(compute(5))
    done = run.start()
    run.advance(20)
    assert done.result.status == 0


def test_adopted_command_that_had_already_ended_does_not_hang_the_job(slot):
    first = slot.run(compute(100))
    first.start()
    first.advance(40)
    first.wrapper.quit()
    first.driver.stop_ticking()
    # the command ended and its exit report went to the first wrapper just before the save
    snap = slot.disks[str(first.layout.vm_dir)]["checkpoint"]
    [command] = snap["commands"].values()
    command.finished = True
    snap["files"]["output.txt"] = b"sorted\n"

    second = slot.run(compute(100))
    second.channel.reports_lost.add(command.seq)
    done = second.start()
    second.advance(20)
    assert not done.called
    second.advance(30)
    assert done.called and done.result.status == 0
    assert slot.output.read_bytes() == b"sorted\n"

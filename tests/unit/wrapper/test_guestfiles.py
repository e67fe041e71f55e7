"""vboxwrapper's guest control files (triggers, heartbeat, trickle files, progress), read
through the guest agent, on a task.Clock with the test doubles."""

from __future__ import annotations

import pytest
from twisted.internet import defer

from tests.unit.wrapper.fakes import Script
from tests.unit.wrapper.test_machine import VM, assert_nothing_left
from vmcontroller.host.controller import ExitResult
from vmwrapper.boinc.exitcodes import ExitStatus
from vmwrapper.wrapper.guestfiles import (
    ERR_FILE_MISSING,
    ERR_TIMEOUT,
    HeartbeatCheck,
    parse_trigger,
)
from vmwrapper.wrapper.outcome import Ending

TASK = """  <copy_from_guest><guest_path>output.txt</guest_path><logical_name>out</logical_name></copy_from_guest>
  <task><application>/bin/sh</application><command_line>-c "compute"</command_line></task>"""


def job(extra: str, task: str = TASK) -> str:
    """A job file; vboxwrapper's file options need <enable_shared_directory/> there too."""
    return (f"<vm_job>\n  <trickle_period>0</trickle_period>\n  <enable_shared_directory/>\n"
            f"{extra}\n{task}\n</vm_job>\n")


def run_with_small_commands(slot, job_xml: str, seconds: float = 200, **kw):
    """A run whose fake guest also answers the watcher's ``rm -f`` and ``stat`` commands;
    ``run.mtimes`` holds the guest files' mtimes (a file absent from it is missing)."""
    run = slot.run({"compute": Script(seconds=seconds, writes={"output.txt": b"result\n"})},
                   job_xml=job_xml, **kw)
    run.mtimes = {}
    run.removed = []
    plain_run = run.channel.run

    def small_run(vm_id, shell, env, cwd, timeout, on_output):
        if shell.startswith("rm -f -- "):
            name = shell.split("-- ", 1)[1]
            run.driver.guest.files.pop(name, None)
            run.removed.append(name)
            return 1, defer.succeed(ExitResult(0, None, {}, 0.0))
        if "stat -c %Y" in shell:
            name = shell.split("-- ", 1)[1].split(";")[0]
            if name not in run.mtimes:
                return 1, defer.succeed(ExitResult(3, None, {}, 0.0))
            on_output("stdout", f"{run.mtimes[name]}\n".encode())
            return 1, defer.succeed(ExitResult(0, None, {}, 0.0))
        return plain_run(vm_id, shell, env, cwd, timeout, on_output)

    run.channel.run = small_run
    return run


def guest_writes(slot, extra: str, files: dict[str, bytes], seconds: float = 200):
    """``(run, done)`` of a run of ``job(extra)`` whose guest writes ``files`` once its task
    runs (15 s in), advanced until the watcher's next look (12 s later) has seen them."""
    run = run_with_small_commands(slot, job(extra), seconds=seconds)
    done = run.start()
    run.advance(15)
    run.driver.guest.files.update(files)
    run.advance(12)
    return run, done


def test_parse_trigger_reads_value_notice_and_message():
    request = parse_trigger("208\n1\nno events\nat all\n", "t")
    assert (request.value, request.notice, request.message) == (208.0, True, "no events\nat all")
    request = parse_trigger("", "t")
    assert request.value == 0 and not request.notice
    request = parse_trigger("soon\n", "t")
    assert request.value == 0 and "no number" in request.message


def test_completion_trigger_with_status_0_copies_outputs_and_succeeds(slot):
    run, done = guest_writes(slot, "  <completion_trigger_file>finished</completion_trigger_file>",
                             {"output.txt": b"early result\n",
                              "finished": b"0\n0\nthe guest is done\n"})
    assert done.called and done.result.status == 0
    assert run.runtime.finished == (0, "the guest is done")
    assert slot.output.read_bytes() == b"early result\n"
    assert_nothing_left(run)


def test_completion_trigger_with_an_error_status_finishes_with_it_as_a_notice(slot):
    run, done = guest_writes(slot, "  <completion_trigger_file>finished</completion_trigger_file>",
                             {"finished": b"208\n1\nsub-task failed\n"})
    assert run.runtime.finished == (208, "sub-task failed")
    assert done.result.notice is True
    assert_nothing_left(run)


def test_temporary_exit_trigger_deletes_it_checkpoints_and_exits_for_the_delay(slot):
    run, done = guest_writes(slot,
                             "  <temporary_exit_trigger_file>later</temporary_exit_trigger_file>",
                             {"later": b"1200\n0\nwaiting for conditions\n"})
    assert done.result.ending is Ending.TEMPORARY
    assert run.runtime.temporary == (1200.0, "waiting for conditions")
    assert run.removed == ["later"]
    snapshot = slot.disks[str(run.layout.vm_dir)]["checkpoint"]
    assert snapshot is not None and "later" not in snapshot["files"]
    assert run.driver.vm_state(VM).name == "STOPPED"


def test_trickle_trigger_file_is_sent_with_its_name_as_variety_then_deleted(slot):
    run, done = guest_writes(slot,
                             "  <trickle_trigger_file>trickle_a</trickle_trigger_file>\n"
                             "  <trickle_trigger_file>trickle_b</trickle_trigger_file>",
                             {"trickle_b": b"<events>12</events>\n"}, seconds=60)
    assert run.runtime.trickles == [("trickle_b", "<events>12</events>\n")]
    assert "trickle_b" not in run.driver.guest.files
    run.advance(60)
    assert done.result.status == 0 and len(run.runtime.trickles) == 1


def heartbeat_job(interval: float = 30) -> str:
    return job(f"  <heartbeat_filename>alive</heartbeat_filename>\n"
               f"  <minimum_heartbeat_interval>{interval}</minimum_heartbeat_interval>")


def test_heartbeat_file_that_keeps_changing_lets_the_job_finish(slot):
    run = run_with_small_commands(slot, heartbeat_job(), seconds=100)
    done = run.start()
    for second in range(120):
        run.mtimes["alive"] = 1000 + second
        run.clock.advance(1)
    assert done.result.status == 0


def test_heartbeat_unchanged_three_checks_in_a_row_is_err_timeout(slot):
    run = run_with_small_commands(slot, heartbeat_job(30))
    run.mtimes["alive"] = 1000
    done = run.start()
    run.advance(25)  # checks every 10 s from the start of the task: first, then 2 strikes
    assert not done.called, "two unchanged checks are not enough"
    run.advance(10)
    assert done.result.status == ERR_TIMEOUT and "heartbeat" in done.result.message
    assert_nothing_left(run)


def test_heartbeat_file_missing_after_the_first_check_is_err_file_missing(slot):
    run = run_with_small_commands(slot, heartbeat_job(30))
    done = run.start()
    run.advance(10)
    assert not done.called, "the first check passes even without the file"
    run.advance(10)
    assert done.result.status == ERR_FILE_MISSING


def test_heartbeat_check_one_late_change_resets_the_strikes():
    check = HeartbeatCheck(30)
    assert check.observe(0, "1") is None
    assert check.observe(10, "1") is None and check.observe(20, "1") is None
    assert check.observe(30, "2") is None and check.strikes == 0
    assert check.due(40) and not check.due(39)


def test_job_fraction_done_file_sets_progress_of_a_taskless_job(slot):
    run = run_with_small_commands(slot, job(
        "  <fraction_done_filename>progress</fraction_done_filename>\n"
        "  <job_duration>100</job_duration>", task=""))
    done = run.start()
    run.advance(5)
    run.driver.guest.files["progress"] = b"0.75\n"
    run.advance(10)
    assert run.runtime.fraction_done == pytest.approx(0.75)
    run.advance(100)
    assert done.result.status == 0


def test_job_duration_ends_a_task_job_with_success_and_its_outputs(slot):
    run = run_with_small_commands(slot, job("  <job_duration>40</job_duration>"), seconds=1000)
    done = run.start()
    run.advance(10)
    run.driver.guest.files["output.txt"] = b"partial\n"
    run.advance(40)
    assert done.result.status == 0 and "job_duration" in done.result.message
    assert slot.output.read_bytes() == b"partial\n"


def test_minimum_checkpoint_interval_is_a_floor_under_the_clients_period(slot):
    run = run_with_small_commands(slot, job(
        "  <minimum_checkpoint_interval>50</minimum_checkpoint_interval>"), seconds=300)
    run.start()
    run.runtime.checkpoint_due = True  # the client would let us checkpoint every second
    run.advance(180)
    times = run.runtime.checkpoints
    assert len(times) == 3
    assert all(b - a >= 50 for a, b in zip(times, times[1:], strict=False))


def test_shared_folder_options_and_intermediate_uploads_are_warned_about(slot, capsys):
    (slot.slot_dir / "cmdfile").write_text("hello guest\n")
    run = run_with_small_commands(slot, job(
        "  <copy_to_shared>cmdfile</copy_to_shared>\n"
        "  <intermediate_upload_file>partial.root</intermediate_upload_file>"), seconds=20)
    done = run.start()
    run.advance(40)
    assert done.result.status == 0
    printed = capsys.readouterr().out
    assert "<enable_shared_directory> ignored" in printed
    assert "<intermediate_upload_file> ignored (partial.root)" in printed
    assert "cmdfile" in printed  # copied into the guest's work directory


def test_missing_copy_to_shared_file_is_an_init_failure(slot):
    run = run_with_small_commands(slot, job("  <copy_to_shared>nothere</copy_to_shared>"))
    run.start()
    run.advance(10)
    assert run.runtime.finished[0] == ExitStatus.INIT_FAILURE


def test_a_taskless_job_checkpoints_when_it_is_time(slot):
    """vboxwrapper's files without <task>s run the VM's own workload: it is checkpointed
    when the client says it is time (and minimum_checkpoint_interval allows), like any job."""
    first = run_with_small_commands(slot, job("  <job_duration>2000</job_duration>", task=""))
    first.start()
    first.advance(30)
    first.runtime.checkpoint_due = True
    first.advance(30)
    assert ("save_checkpoint", VM) not in first.driver.calls  # minimum_checkpoint_interval 600
    first.advance(600)
    assert ("save_checkpoint", VM) in first.driver.calls
    assert first.runtime.checkpoints, "checkpoint_completed was not called"

"""The wrapper's small pieces: state file, capped output, guest commands, trickles, outcomes."""

from __future__ import annotations

import os

import pytest
from twisted.internet import defer
from twisted.internet import error as net_error

from tests.unit.wrapper.fakes import FakeDriver
from vmwrapper.boinc.errors import SlotError
from vmwrapper.boinc.exitcodes import ExitStatus
from vmwrapper.hypervisor import errors as hv
from vmwrapper.job.model import AppFlags, JobDescription, Task
from vmwrapper.wrapper.cpu import VMCpuMeter
from vmwrapper.wrapper.outcome import Ending, Outcome, WrapperError, outcome_for_error
from vmwrapper.wrapper.output import CappedOutput
from vmwrapper.wrapper.slot import SlotLayout, vm_name_for
from vmwrapper.wrapper.state import StateFile, StateFileError, WrapperState
from vmwrapper.wrapper.tasks import guest_command, job_fraction_done
from vmwrapper.wrapper.trickles import CpuTrickles, cpu_time_body

# -- state file ---------------------------------------------------------------------------


def test_state_round_trip_and_private_mode(tmp_path):
    store = StateFile(tmp_path / "state.json")
    assert store.load() is None
    state = WrapperState(cpu_time=12.5, resumable=True, task_index=2, run_seq=77,
                         daemon_seqs=[3], broker_port=40000,
                         logins={"host": ["h", "p"], "vm": ["v", "q"]}, episodes=3)
    store.save(state)
    assert store.load() == state
    assert os.stat(store.path).st_mode & 0o777 == 0o600  # passcodes inside
    assert not (tmp_path / ".state.json.tmp").exists()


def test_state_save_replaces_whole_file_and_ignores_a_torn_temporary(tmp_path):
    store = StateFile(tmp_path / "state.json")
    store.save(WrapperState(cpu_time=1.0))
    (tmp_path / ".state.json.tmp").write_text('{"version": 1, "cpu_ti')  # power cut mid-write
    assert store.load().cpu_time == 1.0
    store.save(WrapperState(cpu_time=2.0))
    assert store.load().cpu_time == 2.0


@pytest.mark.parametrize("text, words", [
    ("{oops", "not valid JSON"),
    ('{"version": 99}', "layout version 99"),
    ('{"version": 1, "bogus": 1}', "unknown field(s) bogus"),
    ('{"version": 1, "cpu_time": -1}', "cpu_time=-1"),
    ('{"version": 1, "run_seq": "x"}', "run_seq='x'"),
    ('{"version": 1, "logins": {"host": ["only-one"]}}', "logins"),
])
def test_bad_state_files_are_named_errors(tmp_path, text, words):
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(StateFileError, match=None) as error:
        StateFile(path).load()
    assert words in str(error.value) and str(path) in str(error.value)


# -- capped output -------------------------------------------------------------------------


def test_output_is_written_in_lines_and_capped():
    lines: list[str] = []
    out = CappedOutput(lines.append, cap=20)
    on_output = out.stream("task 1")
    on_output("stdout", b"hello\nwor")
    on_output("stdout", b"ld\n")
    on_output("stderr", b"x" * 30 + b"\n")
    on_output("stdout", b"tail")
    out.flush()
    assert lines[:2] == ["[task 1 stdout] hello", "[task 1 stdout] world"]
    assert lines[2] == "[task 1 stdout] tail"
    assert "31 more bytes not shown" in lines[3]


def test_a_line_without_end_is_cut():
    lines: list[str] = []
    out = CappedOutput(lines.append)
    out.feed("k", b"a" * 5000)
    assert len(lines) == 1 and len(lines[0]) < 4200


# -- guest commands and progress -------------------------------------------------------------


def test_guest_command_quotes_and_redirects():
    job = JobDescription(flags=AppFlags(nthreads=3, passthrough_args=("--x", "a b")))
    task = Task(application="/opt/my app", command_line="--threads $NTHREADS --in '$PWD'",
                stdin_filename="in.txt", stdout_filename="out.txt", stderr_filename="err.txt",
                setenv=(("A", "1"),), exec_dir="work", time_limit=60.0,
                append_cmdline_args=True)
    command = guest_command(task, job)
    assert command.shell == ("exec '/opt/my app' --threads 3 --in '$PWD' --x 'a b' "
                             "< in.txt > out.txt 2> err.txt")
    shell = guest_command(Task(application="/bin/sh", command_line='-c "echo $i > f"'), job)
    assert shell.shell == "exec /bin/sh -c 'echo $i > f'"
    with pytest.raises(ValueError, match="check its quotes"):
        guest_command(Task(application="x", command_line='"open'), job)
    assert (command.env, command.cwd, command.timeout) == ({"A": "1"}, "work", 60.0)


def test_fraction_done_prefers_the_progress_file():
    job = JobDescription(task=(Task(application="a", weight=1.0), Task(application="b", weight=3.0)))
    assert job_fraction_done(job, 1, 0.5, 10, 0) == pytest.approx((1 + 1.5) / 4)
    assert job_fraction_done(job, 0, None, 50, 100) == pytest.approx(0.5)
    assert job_fraction_done(job, 0, None, 500, 100) == pytest.approx(0.99)
    assert job_fraction_done(JobDescription(), 0, None, 10, 0) == 0.0


def test_vm_names_are_broker_ids_and_unique():
    first, second = vm_name_for("wu.1_0"), vm_name_for("wu_1_0")
    assert first != second and "." not in first and len(first) <= 64
    assert vm_name_for("") == vm_name_for("", 0) and "slot0" in vm_name_for("")


def test_slot_layout_removes_only_its_files(tmp_path):
    layout = SlotLayout.at(tmp_path)
    (tmp_path / "stderr.txt").write_text("keep")
    layout.vm_dir.mkdir()
    (layout.vm_dir / "disk.qcow2").write_text("x")
    layout.config_disk.write_text("x")
    layout.scratch_file("progress").write_text("0.5")
    layout.state_file.write_text("{}")
    layout.remove_vm_files()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stderr.txt", "vmwrapper_state.json"]
    layout.remove_all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stderr.txt"]


# -- trickles and CPU ------------------------------------------------------------------------


def test_trickles_follow_running_time_and_skip_missed_periods():
    sent: list[tuple[str, str]] = []
    cpu = [0.0]
    trickles = CpuTrickles(lambda v, b: sent.append((v, b)) or defer.succeed(None),
                           lambda: cpu[0], period=100)
    assert trickles.maybe_send(99) is None
    cpu[0] = 80.0
    assert trickles.maybe_send(100) is not None
    assert sent == [("cpu_time", cpu_time_body(80.0))]
    cpu[0] = 400.0
    trickles.maybe_send(450)  # 200, 300 and 400 were missed: one trickle, next at 500
    assert len(sent) == 2 and trickles.maybe_send(499) is None and trickles.maybe_send(500)
    with pytest.raises(ValueError, match="negative"):
        CpuTrickles(lambda v, b: defer.succeed(None), lambda: 0.0, -1)


def test_cpu_meter_only_grows_across_vm_processes():
    from twisted.internet import task

    clock = task.Clock()
    driver = FakeDriver(clock)
    meter = VMCpuMeter(driver, "vm")
    driver.vms["vm"] = {"cpu": 10.0}
    assert meter.poll().result == 10.0
    meter.new_process()
    driver.vms["vm"]["cpu"] = 2.0
    assert meter.poll().result == 12.0
    del driver.vms["vm"]  # an error keeps the last figure
    assert meter.poll().result == 12.0
    driver.stop_ticking()


# -- outcomes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("error, ending, status", [
    (hv.ImageMissing("gone"), Ending.FINISH, ExitStatus.INIT_FAILURE),
    (hv.InvalidSpec("bad"), Ending.FINISH, ExitStatus.INIT_FAILURE),
    (hv.NoVirtualization("no VT-x"), Ending.FINISH, ExitStatus.ERR_EXEC),
    (hv.HypervisorNotInstalled("no qemu"), Ending.FINISH, ExitStatus.ERR_EXEC),
    (hv.OperationTimeout("slow"), Ending.TEMPORARY, 0),
    (hv.VMStateError("odd"), Ending.FINISH, ExitStatus.CHILD_FAILED),
    (SlotError("slot"), Ending.TEMPORARY, 0),
    (ConnectionRefusedError("refused"), Ending.TEMPORARY, 0),
    (net_error.ConnectError("no broker"), Ending.TEMPORARY, 0),
    (defer.TimeoutError("slow broker"), Ending.TEMPORARY, 0),
    (RuntimeError("bug"), Ending.FINISH, ExitStatus.CHILD_FAILED),
    (WrapperError(Outcome.abort()), Ending.ABORT, ExitStatus.ABORTED_BY_CLIENT),
])
def test_errors_map_onto_boinc_endings(error, ending, status):
    outcome = outcome_for_error(error)
    assert (outcome.ending, outcome.status) == (ending, int(status))
    assert outcome.message and outcome.describe()


def test_vm_extensions_disabled_is_named_for_the_client():
    message = outcome_for_error(hv.NoVirtualization("VT-x is off")).message
    assert "ERR_CPU_VM_EXTENSIONS_DISABLED" in message

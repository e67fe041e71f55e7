"""The host task runner with real short processes: a private reactor spawns and reaps them,
a ``task.Clock`` drives time limits and the kill grace (no sleeps in the tests' logic)."""

from __future__ import annotations

import os
import pathlib
import signal
import time
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.process import reapAllProcesses
from twisted.internet.selectreactor import SelectReactor

from vmwrapper.job.model import JobDescription, Task
from vmwrapper.wrapper.hosttask import HostTaskError, HostTasks, host_command

SCRIPT = "#!/bin/sh\n{body}\n"


@pytest.fixture
def reactor():
    """A private reactor: only spawns and pipes; the test loop reaps children itself."""
    private = SelectReactor()
    yield private
    for reader in list(private.getReaders()) + list(private.getWriters()):
        private.removeReader(reader)
        private.removeWriter(reader)


def spin(reactor: Any, deferred: defer.Deferred, timeout: float = 10.0) -> Any:
    """Run *reactor* until *deferred* fires; its result (or raise its failure)."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    deadline = time.monotonic() + timeout
    while not results:
        if time.monotonic() > deadline:
            raise TimeoutError("the deferred did not fire")
        reactor.iterate(0.01)
        reapAllProcesses()
    result = results[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def make_slot(tmp_path: pathlib.Path, programs: dict[str, str]) -> pathlib.Path:
    """A slot whose programs live in a project dir, named by BOINC link files."""
    project = tmp_path / "project"
    slot = tmp_path / "slot"
    project.mkdir()
    slot.mkdir()
    for name, body in programs.items():
        program = project / f"{name}_1.0"
        program.write_text(SCRIPT.format(body=body))
        program.chmod(0o755)
        (slot / name).write_text(f"<soft_link>../project/{name}_1.0</soft_link>\n")
    return slot


def tasks_for(slot: pathlib.Path, reactor: Any, clock: task.Clock, *tasks: Task,
              grace: float = 10.0) -> tuple[HostTasks, list[str], list[tuple[str, bytes]]]:
    logged: list[str] = []
    output: list[tuple[str, bytes]] = []
    job = JobDescription(task=tasks)
    host = HostTasks(spawn=reactor.spawnProcess, clock=clock, job=job, slot_dir=slot,
                     project_dir=str(slot.parent / "project"), log=logged.append, grace=grace)
    return host, logged, output


def test_a_task_runs_with_redirections_env_exec_dir_and_resolved_names(tmp_path, reactor):
    slot = make_slot(tmp_path, {"worker": 'echo "$GREETING $1 $(cat)" > "$2"; pwd >&2'})
    (tmp_path / "project" / "in_file").write_text("from the input")
    (slot / "in").write_text("<soft_link>../project/in_file</soft_link>\n")
    (slot / "work").mkdir()
    job_task = Task(application="worker", where="host", command_line="$NTHREADS out.txt",
                    setenv=(("GREETING", "hi"),), stdin_filename="in",
                    stderr_filename="err.txt", exec_dir="work")
    host, _, output = tasks_for(slot, reactor, task.Clock(), job_task)
    run = host.start(0, lambda stream, data: output.append((stream, data)))
    result = spin(reactor, run.ended)
    assert result.succeeded and result.code == 0
    assert (slot / "work" / "out.txt").read_text() == "hi 1 from the input\n"
    assert (slot / "err.txt").read_text().strip() == str(slot / "work")


def test_unredirected_output_reaches_the_log_stream_and_failure_is_reported(tmp_path, reactor):
    slot = make_slot(tmp_path, {"noisy": "echo to-out; echo to-err >&2; exit 3"})
    host, _, output = tasks_for(slot, reactor, task.Clock(),
                                Task(application="noisy", where="host"))
    run = host.start(0, lambda stream, data: output.append((stream, data)))
    result = spin(reactor, run.ended)
    assert (result.code, result.succeeded) == (3, False)
    assert b"to-out" in b"".join(d for s, d in output if s == "stdout")
    assert b"to-err" in b"".join(d for s, d in output if s == "stderr")


def test_arguments_that_name_slot_link_files_are_resolved(tmp_path, reactor):
    slot = make_slot(tmp_path, {"copy": 'cp "$1" "$2"'})
    (tmp_path / "project" / "data_1").write_text("payload")
    (slot / "data").write_text("<soft_link>../project/data_1</soft_link>\n")
    command = host_command(Task(application="copy", where="host", command_line="data result"),
                           JobDescription(), slot)
    assert command.argv[1] == str((tmp_path / "project" / "data_1").absolute())
    assert command.argv[2] == "result"


def test_missing_program_and_bad_quotes_are_clear_errors(tmp_path):
    slot = make_slot(tmp_path, {"ok": "true"})
    with pytest.raises(HostTaskError, match="no such file in the slot"):
        host_command(Task(application="absent", where="host"), JobDescription(), slot)
    with pytest.raises(HostTaskError, match="cannot be split"):
        host_command(Task(application="ok", where="host", command_line='"open'),
                     JobDescription(), slot)


def test_time_limit_ends_the_task_as_a_success_and_suspension_does_not_count(tmp_path, reactor):
    slot = make_slot(tmp_path, {"sleeper": "exec sleep 30"})
    clock = task.Clock()
    host, _, _ = tasks_for(slot, reactor, clock,
                           Task(application="sleeper", where="host", time_limit=5.0))
    run = host.start(0, lambda *_: None)
    clock.advance(3)
    host.suspend()
    clock.advance(100)  # suspended: the limit does not count
    assert not run.ended.called and alive(run.pid)
    host.resume()
    clock.advance(2)
    result = spin(reactor, run.ended)
    assert result.timed_out and result.succeeded
    assert not alive(run.pid)


def test_suspend_stops_the_whole_group_and_resume_continues_it(tmp_path, reactor):
    slot = make_slot(tmp_path, {"parent": "sleep 30 & echo $! > child.pid; wait"})
    host, _, _ = tasks_for(slot, reactor, task.Clock(), Task(application="parent", where="host"))
    run = host.start(0, lambda *_: None)
    child_pid_file = slot / "child.pid"
    deadline = time.monotonic() + 5
    while not child_pid_file.read_text().strip() if child_pid_file.exists() else True:
        reactor.iterate(0.01)
        assert time.monotonic() < deadline
    child = int(child_pid_file.read_text())
    host.suspend()
    states = {_state(run.pid), _state(child)}
    deadline = time.monotonic() + 5
    while states != {"T"} and time.monotonic() < deadline:
        reactor.iterate(0.01)
        states = {_state(run.pid), _state(child)}
    assert states == {"T"}
    host.resume()
    assert _state(child) in ("S", "R")
    spin(reactor, host.stop_all())
    assert not alive(run.pid) and not alive(child)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def test_terminate_kills_after_the_grace_when_sigterm_is_ignored(tmp_path, reactor):
    slot = make_slot(tmp_path, {"stubborn": "trap '' TERM; echo ready; while :; do sleep 0.1; done"})
    clock = task.Clock()
    host, _, _ = tasks_for(slot, reactor, clock, Task(application="stubborn", where="host"),
                           grace=7.0)
    ready: list[bytes] = []
    run = host.start(0, lambda stream, data: ready.append(data))
    deadline = time.monotonic() + 5
    while not ready and time.monotonic() < deadline:
        reactor.iterate(0.01)
    ending = run.terminate()
    for _ in range(30):
        reactor.iterate(0.01)
    assert not ending.called and alive(run.pid)
    clock.advance(7)
    result = spin(reactor, ending)
    assert result.signal == signal.SIGKILL and result.stopped


def test_cpu_time_of_a_busy_task_is_counted(tmp_path, reactor):
    slot = make_slot(tmp_path, {"busy": "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"})
    host, _, _ = tasks_for(slot, reactor, task.Clock(),
                           Task(application="busy", where="host", priority=3))
    started = time.process_time()
    run = host.start(0, lambda *_: None)
    spin(reactor, run.ended, timeout=30)
    assert time.process_time() - started < 5  # the wrapper itself barely worked
    assert host.cpu_seconds() > 0.05
    assert host.cpu_seconds() == run.cpu


@pytest.mark.parametrize(("priority", "nice"), [(1, 19), (2, 10), (3, 0)])
def test_a_task_runs_at_the_niceness_of_its_priority_lowest_by_default(
        tmp_path, reactor, priority, nice):
    if os.getpriority(os.PRIO_PROCESS, 0) > nice and os.geteuid() != 0:
        pytest.skip("raising a priority needs privilege")
    slot = make_slot(tmp_path, {"show": "sh -c 'nice > child.txt'; nice > own.txt"})
    job_task = (Task(application="show", where="host") if priority == 1
                else Task(application="show", where="host", priority=priority))
    host, logged, _ = tasks_for(slot, reactor, task.Clock(), job_task)
    spin(reactor, host.start(0, lambda *_: None).ended)
    assert (slot / "own.txt").read_text().strip() == str(nice)
    assert (slot / "child.txt").read_text().strip() == str(nice)  # its children inherit it
    assert logged == []


def test_a_priority_that_cannot_be_raised_is_logged_and_the_task_still_runs(
        tmp_path, reactor, monkeypatch):
    def refuse(which: int, who: int, nice: int) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "setpriority", refuse)
    slot = make_slot(tmp_path, {"show": "nice > own.txt"})
    host, logged, _ = tasks_for(slot, reactor, task.Clock(),
                                Task(application="show", where="host", priority=5))
    result = spin(reactor, host.start(0, lambda *_: None).ended)
    assert result.succeeded
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert (slot / "own.txt").read_text().strip() == str(own)
    assert logged == [f"task 1: priority 5 (nice -15) needs privilege the wrapper does not "
                      f"have; the task runs at nice {own}"]

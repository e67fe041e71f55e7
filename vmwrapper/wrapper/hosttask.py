"""Tasks that run on the volunteer's host, with BOINC's generic wrapper semantics.

A ``<task>`` with ``<where>host</where>`` is a program from the app version
(its ``application`` is a logical name resolved through the slot's soft
links), started in the slot (or ``exec_dir``) with its ``setenv`` added to
the wrapper's environment and stdin/stdout/stderr redirected to the named
slot files (unnamed output streams go to ``stderr.txt`` through
:class:`~vmwrapper.wrapper.output.CappedOutput`). Arguments that are logical
names of slot files are resolved too, so a task can name ``in`` or ``out``.

Each task runs in a process group of its own (``setsid``), so suspend and
resume (SIGSTOP/SIGCONT) and termination reach its children as well. Ending
a task is SIGTERM to the group, then SIGKILL after a grace period well under
the client's 60 s; when the task's main process ends, what is left of its
group is killed, so no process outlives its task.

CPU time: each running group leader's ``/proc`` counters are sampled when
asked (:meth:`HostTasks.cpu_seconds`); when a task ends, the growth of the
wrapper's reaped-children usage gives its exact final figure (bounded by
the last sample and the time since, in case another child of the wrapper
was reaped in between).

Priority: as BOINC's wrapper does, a task gets the niceness of its
``<priority>`` (default the lowest, nice 19) the moment it is forked, before
it can start children of its own. Raising a priority above the wrapper's
needs privilege a volunteer's client does not have: the task then keeps the
wrapper's niceness and the log says so.
"""

from __future__ import annotations

import os
import pathlib
import resource
import shlex
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.python.failure import Failure

from vmwrapper.boinc.filenames import resolve_filename
from vmwrapper.job.macros import expand_task, macro_values
from vmwrapper.job.model import JobDescription, Task
from vmwrapper.job.progress import read_fraction_done

#: Seconds between SIGTERM and SIGKILL when a task is stopped: the client kills the app 60 s
#: after <quit/>, and the VM's checkpoint and power-off (45 s at most) may follow.
TERMINATE_GRACE = 5.0
#: The program that puts a task into a process group of its own (util-linux, always there).
SETSID = "/usr/bin/setsid"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: setpriority(2) niceness of BOINC's process priorities 1 (lowest) .. 5 (highest), as the
#: BOINC libraries map them on Unix.
NICE_FOR_PRIORITY = {1: 19, 2: 10, 3: 0, 4: -10, 5: -15}


def apply_priority(pid: int, priority: int) -> str | None:
    """Give process *pid* the niceness of BOINC *priority*; a note when that is not allowed."""
    nice = NICE_FOR_PRIORITY[priority]
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    except PermissionError:
        return (f"priority {priority} (nice {nice}) needs privilege the wrapper does not have; "
                f"the task runs at nice {os.getpriority(os.PRIO_PROCESS, 0)}")
    except ProcessLookupError:
        pass  # it has already ended
    return None


class HostTaskError(Exception):
    """A host task cannot be started; the message says which file or setting is wrong."""


@dataclass(frozen=True)
class HostResult:
    """How a host task ended.

    :param code: exit status, or None when a signal ended it.
    :param signal: the signal that ended it, or None.
    :param wall_time: seconds from start to end (suspended time included).
    :param timed_out: its ``time_limit`` was reached (counts as success).
    :param stopped: the wrapper stopped it (quit, abort, end of the job's daemons).
    """

    code: int | None
    signal: int | None
    wall_time: float
    timed_out: bool = False
    stopped: bool = False

    @property
    def succeeded(self) -> bool:
        """True when it exited with 0, or was ended by its time limit (BOINC's rule)."""
        return self.timed_out or self.code == 0


@dataclass(frozen=True)
class HostCommand:
    """What is executed for one host task, all paths resolved."""

    argv: list[str]
    cwd: pathlib.Path
    env: dict[str, str]
    stdin: pathlib.Path | None
    stdout: pathlib.Path | None
    stderr: pathlib.Path | None


def host_command(task: Task, job: JobDescription, slot_dir: pathlib.Path,
                 project_dir: str = "", base_env: dict[str, str] | None = None) -> HostCommand:
    """The command for host *task*: macros expanded, logical names resolved in *slot_dir*.

    :raises HostTaskError: the command line cannot be split, or the program is missing.
    """
    task = expand_task(task, macro_values(job, project_dir, str(slot_dir)))
    try:
        arguments = shlex.split(task.command_line)
    except ValueError as exc:
        raise HostTaskError(f"<task> {task.application}: <command_line> cannot be split into "
                            f"arguments ({exc}); check its quotes") from None
    if task.append_cmdline_args:
        arguments += job.flags.passthrough_args
    program = resolve_filename(slot_dir, task.application)
    if not program.is_file():
        raise HostTaskError(f"host task {task.application}: no such file in the slot "
                            f"({program}); it must be a file of the app version")
    if not os.access(program, os.X_OK):
        raise HostTaskError(f"host task {task.application}: {program} is not executable")
    env = dict(os.environ if base_env is None else base_env)
    env.update(dict(task.setenv))
    cwd = slot_dir / task.exec_dir if task.exec_dir else slot_dir
    return HostCommand(
        argv=[os.path.abspath(program), *(_resolve_argument(slot_dir, a) for a in arguments)],
        cwd=cwd, env=env,
        stdin=_slot_file(slot_dir, task.stdin_filename),
        stdout=_slot_file(slot_dir, task.stdout_filename),
        stderr=_slot_file(slot_dir, task.stderr_filename))


def _slot_file(slot_dir: pathlib.Path, name: str) -> pathlib.Path | None:
    return pathlib.Path(os.path.abspath(resolve_filename(slot_dir, name))) if name else None


def _resolve_argument(slot_dir: pathlib.Path, argument: str) -> str:
    """*argument*, or the path it names when it is a soft-link file in the slot."""
    if not argument or "/" in argument or argument in (".", ".."):
        return argument
    if not (slot_dir / argument).is_file():
        return argument
    resolved = resolve_filename(slot_dir, argument)
    return os.path.abspath(resolved) if resolved != slot_dir / argument else argument


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of *pid* and its waited-for children (``/proc``); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text[text.rfind(b")") + 2:].split()
    # fields[0] is the state (field 3); utime..cstime are fields 14..17
    return sum(int(value) for value in fields[11:15]) / _CLOCK_TICKS


def children_cpu_seconds() -> float:
    """CPU seconds of every child this process has reaped so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class _TaskProtocol(protocol.ProcessProtocol):
    """Passes unredirected output on and tells its :class:`HostRun` when the process ends."""

    def __init__(self, run: HostRun) -> None:
        self.run = run

    def connectionMade(self) -> None:
        # the pid now: a child that exits at once is reaped (its transport's pid cleared)
        # before spawnProcess returns
        self.run.pid = self.transport.pid
        if self.run.pid:
            self.run.priority_note = apply_priority(self.run.pid, self.run.task.priority)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.run.on_output("stdout" if childFD == 1 else "stderr", data)

    def processEnded(self, reason: Failure) -> None:
        self.run._ended(reason)


class HostRun:
    """One running host task: suspend, resume, terminate, its CPU time, its end.

    :param clock: ``IReactorTime`` for the time limit and the kill grace.
    :param spawn: ``reactor.spawnProcess``.
    """

    def __init__(self, label: str, task: Task, command: HostCommand, *, clock: Any,
                 spawn: Callable[..., Any], on_output: Callable[[str, bytes], None],
                 usage: _ChildUsage, grace: float = TERMINATE_GRACE) -> None:
        self.label = label
        self.task = task
        self.command = command
        self.clock = clock
        self.on_output = on_output
        self.grace = grace
        self.ended: defer.Deferred[HostResult] = defer.Deferred()
        self.result: HostResult | None = None
        self.cpu = 0.0
        self.suspended = False
        self._usage = usage
        self._sampled_at = clock.seconds()
        self._started_at = clock.seconds()
        self._limit_left = task.time_limit if task.time_limit > 0 else None
        self._limit_call: Any = None
        self._kill_call: Any = None
        self._timed_out = False
        self._stopped = False
        self.pid: int = 0  # set by the protocol as soon as the process exists
        #: why the task's <priority> could not be applied (None: applied)
        self.priority_note: str | None = None
        self.process = self._spawn(spawn)
        if self.result is None:
            self._arm_limit()

    def _spawn(self, spawn: Callable[..., Any]) -> Any:
        files = []
        child_fds: dict[int, Any] = {}
        try:
            for fd, path, mode in ((0, self.command.stdin, os.O_RDONLY),
                                   (1, self.command.stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                   (2, self.command.stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
                if path is None:
                    child_fds[fd] = "w" if fd == 0 else "r"
                    continue
                try:
                    opened = os.open(path, mode, 0o644)
                except OSError as exc:
                    raise HostTaskError(f"{self.label}: cannot open {path} for "
                                        f"{('stdin', 'stdout', 'stderr')[fd]}: "
                                        f"{exc.strerror or exc}") from None
                files.append(opened)
                child_fds[fd] = opened
            if not self.command.cwd.is_dir():
                raise HostTaskError(f"{self.label}: exec_dir {self.command.cwd} is not a directory")
            argv = [SETSID, "--wait", *self.command.argv]
            process = spawn(_TaskProtocol(self), SETSID, argv, env=self.command.env,
                            path=str(self.command.cwd), childFDs=child_fds)
        finally:
            for opened in files:
                os.close(opened)
        if child_fds[0] == "w":
            process.closeStdin()
        return process

    # -- control ---------------------------------------------------------------------------

    def suspend(self) -> None:
        """SIGSTOP the task's process group; its time limit stops counting."""
        if self.result is not None or self.suspended:
            return
        self.suspended = True
        self._disarm_limit()
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the task's process group."""
        if self.result is not None or not self.suspended:
            return
        self.suspended = False
        self._signal_group(signal.SIGCONT)
        self._arm_limit()

    def terminate(self) -> defer.Deferred[HostResult]:
        """SIGTERM the group now, SIGKILL after the grace period; fires with the result."""
        self._stopped = True
        self._kill_politely()
        return self.ended

    def _kill_politely(self) -> None:
        if self.result is not None:
            return
        self._disarm_limit()
        self._signal_group(signal.SIGTERM)
        self._signal_group(signal.SIGCONT)
        if self._kill_call is None:
            self._kill_call = self.clock.callLater(self.grace, self._signal_group, signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        """*signum* to the task's group; to its process alone if it has not made the group yet
        (a signal sent in the first instant after the start)."""
        if self.pid <= 0:  # never 0: that would signal the wrapper's own group
            return
        try:
            os.killpg(self.pid, signum)
            return
        except (ProcessLookupError, PermissionError):
            pass
        if self.result is None:
            try:
                os.kill(self.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    # -- time limit ------------------------------------------------------------------------

    def _arm_limit(self) -> None:
        if self._limit_left is None or self._limit_call is not None:
            return
        self._limit_armed_at = self.clock.seconds()
        self._limit_call = self.clock.callLater(self._limit_left, self._time_up)

    def _disarm_limit(self) -> None:
        if self._limit_call is None:
            return
        if self._limit_call.active():
            self._limit_call.cancel()
        self._limit_call = None
        assert self._limit_left is not None
        self._limit_left = max(0.0, self._limit_left - (self.clock.seconds()
                                                        - self._limit_armed_at))

    def _time_up(self) -> None:
        self._limit_call = None
        self._limit_left = 0.0
        self._timed_out = True
        self._kill_politely()

    # -- CPU time and the end ----------------------------------------------------------------

    def sample_cpu(self) -> float:
        """The task's CPU seconds so far (read from ``/proc`` while it runs)."""
        if self.result is None:
            value = process_cpu_seconds(self.pid)
            if value is not None and value >= self.cpu:
                self.cpu = value
                self._sampled_at = self.clock.seconds()
        return self.cpu

    def _ended(self, reason: Failure) -> None:
        self._disarm_limit()
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        try:  # whatever the task left behind in its group (never the bare pid: it is reaped)
            if self.pid > 0:
                os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        growth = self._usage.take()
        slack = max(0.0, self.clock.seconds() - self._sampled_at) * (os.cpu_count() or 1) + 0.5
        self.cpu = min(max(growth, self.cpu), self.cpu + slack)
        value = reason.value
        code = getattr(value, "exitCode", None)
        signum = getattr(value, "signal", None)
        if isinstance(value, error.ProcessDone):
            code, signum = 0, None
        self.result = HostResult(code=code, signal=signum,
                                 wall_time=self.clock.seconds() - self._started_at,
                                 timed_out=self._timed_out, stopped=self._stopped)
        self.ended.callback(self.result)


class _ChildUsage:
    """The wrapper's reaped-children CPU total, handed out as growth since the last ask."""

    def __init__(self, read: Callable[[], float] = children_cpu_seconds) -> None:
        self._read = read
        self._seen = read()

    def take(self) -> float:
        now = self._read()
        growth, self._seen = max(0.0, now - self._seen), now
        return growth


class HostTasks:
    """Every host task of one wrapper run: starts them, relays control, sums their CPU.

    :param spawn: ``reactor.spawnProcess``.
    :param clock: ``IReactorTime`` (a ``task.Clock`` in unit tests).
    :param slot_dir: the slot; logical names are resolved in it.
    :param project_dir: the project directory (``$PROJECT_DIR``).
    :param log: one line to stderr.txt.
    """

    def __init__(self, *, spawn: Callable[..., Any], clock: Any, job: JobDescription,
                 slot_dir: pathlib.Path, project_dir: str, log: Callable[[str], None],
                 grace: float = TERMINATE_GRACE) -> None:
        self.spawn = spawn
        self.clock = clock
        self.job = job
        self.slot_dir = slot_dir
        self.project_dir = project_dir
        self.grace = grace
        self._log = log
        self._usage = _ChildUsage()
        self._finished_cpu = 0.0
        self.runs: list[HostRun] = []
        self.suspended = False

    def start(self, index: int, on_output: Callable[[str, bytes], None]) -> HostRun:
        """Start host task *index* of the job (suspended at once if the job is).

        :raises HostTaskError: it cannot be started (the message says why).
        """
        task = self.job.task[index]
        label = f"task {index + 1}"
        if self.spawn is None:
            raise HostTaskError(f"{label}: this wrapper was built without a way to start "
                                "processes (its clock is not a reactor)")
        command = host_command(task, self.job, self.slot_dir, self.project_dir)
        try:
            run = HostRun(label, task, command, clock=self.clock, spawn=self.spawn,
                          on_output=on_output, usage=self._usage, grace=self.grace)
        except OSError as exc:
            raise HostTaskError(f"{label}: cannot start {command.argv[0]}: "
                                f"{exc.strerror or exc}") from None
        if run.priority_note:
            self._log(f"{label}: {run.priority_note}")
        self.runs.append(run)
        run.ended.addCallback(self._forget, run)
        if self.suspended:
            run.suspend()
        return run

    def _forget(self, result: HostResult, run: HostRun) -> HostResult:
        if run in self.runs:
            self.runs.remove(run)
            self._finished_cpu += run.cpu
        return result

    def cpu_seconds(self) -> float:
        """CPU seconds of every host task of this run, finished or running."""
        return self._finished_cpu + sum(run.sample_cpu() for run in self.runs)

    def suspend(self) -> None:
        self.suspended = True
        for run in self.runs:
            run.suspend()

    def resume(self) -> None:
        self.suspended = False
        for run in self.runs:
            run.resume()

    def stop_all(self) -> defer.Deferred[Any]:
        """Terminate every running task; fires when all have ended."""
        endings = [run.terminate() for run in list(self.runs)]
        return defer.DeferredList(endings, consumeErrors=True)

    def fraction_done(self, task: Task) -> float | None:
        """*task*'s ``fraction_done_filename`` value, if it names one and holds a number."""
        name = task.fraction_done_filename
        if not name:
            return None
        return read_fraction_done(resolve_filename(self.slot_dir, name))

    def checkpoint_mtime(self, task: Task) -> float | None:
        """The mtime of *task*'s ``checkpoint_filename`` (None: none named, or no file)."""
        name = task.checkpoint_filename
        if not name:
            return None
        try:
            return resolve_filename(self.slot_dir, name).stat().st_mtime
        except OSError:
            return None

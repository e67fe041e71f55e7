"""Run one command in its own session and report output, exit status and rusage.

Why not ``reactor.spawnProcess``: it cannot start the child in a new session
(we need a process group to kill the whole tree on ``kill``/timeout) and it
reaps with ``waitpid``, which loses the child's resource usage.  So the child
is started with :class:`subprocess.Popen` (``start_new_session=True``), its
pipes are read by the reactor, and its exit is noticed through a Linux pidfd
(``os.pidfd_open``, Linux >= 5.3) that becomes readable when the child dies;
it is then reaped with ``os.wait4``, which returns the rusage.

Only the standard library and Twisted: this runs inside the appliance.
"""

# -*- test-case-name: tests.unit.vmcontroller.test_guest_process -*-

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFDSet, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["CommandResult", "RunningCommand", "rusage_dict"]

log = Logger()

_RUSAGE_FIELDS = (
    "ru_utime",
    "ru_stime",
    "ru_maxrss",
    "ru_minflt",
    "ru_majflt",
    "ru_inblock",
    "ru_oublock",
    "ru_nvcsw",
    "ru_nivcsw",
)


def rusage_dict(usage: Any) -> dict[str, float]:
    """The useful fields of a ``struct rusage`` as a JSON-friendly dict."""
    return {name: getattr(usage, name) for name in _RUSAGE_FIELDS}


@dataclass
class CommandResult:
    """How a command ended (see :class:`vmcontroller.protocol.Exit`)."""

    code: int | None
    signal: int | None
    rusage: dict[str, float] = field(default_factory=dict)
    wall_time: float = 0.0
    timed_out: bool = False
    killed: bool = False


class _Reader:
    """IReadDescriptor for one non-blocking fd: pipe or pidfd.

    The reactor reports a hung-up pipe with no data left through
    ``connectionLost`` rather than ``doRead``: both end in ``on_read``, which
    then reads the EOF itself.
    """

    def __init__(self, fd: int, on_read: Callable[[int], None], name: str) -> None:
        self.fd = fd
        self.on_read = on_read
        self.name = name

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self.on_read(self.fd)

    def connectionLost(self, reason: Failure) -> None:
        self.on_read(self.fd)

    def logPrefix(self) -> str:
        return self.name


class _Writer:
    """IWriteDescriptor feeding a child's stdin, then closing it."""

    def __init__(self, fd: int, data: bytes, on_done: Callable[[], None]) -> None:
        self.fd = fd
        self.data = memoryview(data)
        self.on_done = on_done

    def fileno(self) -> int:
        return self.fd

    def doWrite(self) -> None:
        try:
            written = os.write(self.fd, self.data[: 64 * 1024])
        except BlockingIOError:
            return
        except OSError:  # the child closed its stdin: stop feeding it
            self.data = self.data[:0]
        else:
            self.data = self.data[written:]
        if not self.data:
            self.on_done()

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "stdin"


class RunningCommand:
    """One spawned command.

    :param on_output: ``on_output(stream, data)`` with stream ``"stdout"`` or
        ``"stderr"``, as the bytes arrive (batching is the caller's business).
    :param timeout: seconds before the whole process group gets SIGTERM, and
        ``kill_grace`` seconds later SIGKILL.
    :attr finished: fires with a :class:`CommandResult` once the child is
        reaped and both pipes are drained (or ``linger`` seconds after the
        child died, when a grandchild keeps a pipe open).
    :raises OSError: from the constructor, when the command cannot start.
    """

    def __init__(
        self,
        reactor: Any,
        argv: list[str],
        on_output: Callable[[str, bytes], None],
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: bytes = b"",
        timeout: float | None = None,
        kill_grace: float = 2.0,
        linger: float = 1.0,
        clock: IReactorTime | None = None,
    ) -> None:
        self.reactor: IReactorFDSet = reactor
        self.clock: IReactorTime = clock or reactor
        self.on_output = on_output
        self.kill_grace = kill_grace
        self.linger = linger
        self.finished: defer.Deferred[CommandResult] = defer.Deferred()
        self._timed_out = False
        self._killed = False
        self._status: tuple[int, Any] | None = None
        self._open_pipes: dict[int, _Reader] = {}
        self._timers: list[Any] = []
        self._started = time.monotonic()
        self._popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        self.pid = self._popen.pid
        for stream, pipe in (("stdout", self._popen.stdout), ("stderr", self._popen.stderr)):
            assert pipe is not None
            fd = os.dup(pipe.fileno())
            pipe.close()
            os.set_blocking(fd, False)
            reader = _Reader(fd, self._pipe_reader(stream), stream)
            self._open_pipes[fd] = reader
            self.reactor.addReader(reader)
        self._stdin_fd = -1
        assert self._popen.stdin is not None
        if stdin:
            self._stdin_fd = os.dup(self._popen.stdin.fileno())
            self._popen.stdin.close()
            os.set_blocking(self._stdin_fd, False)
            self._stdin_writer: _Writer | None = _Writer(self._stdin_fd, stdin, self._close_stdin)
            self.reactor.addWriter(self._stdin_writer)
        else:
            self._popen.stdin.close()
            self._stdin_writer = None
        self._pidfd = os.pidfd_open(self.pid)
        self._pid_reader = _Reader(self._pidfd, self._child_exited, "pidfd")
        self.reactor.addReader(self._pid_reader)
        if timeout is not None:
            self._timers.append(self.clock.callLater(timeout, self._on_timeout))

    # --- control ---------------------------------------------------------------

    def signal_group(self, signum: int) -> bool:
        """Send ``signum`` to the command's whole process group; False if it is gone."""
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def kill(self, signum: int = signal.SIGTERM) -> None:
        """Signal the group now, and SIGKILL it ``kill_grace`` seconds later."""
        self._killed = True
        self.signal_group(signum)
        if signum != signal.SIGKILL:
            self._timers.append(self.clock.callLater(self.kill_grace, self._kill_hard))

    def _on_timeout(self) -> None:
        self._timed_out = True
        self.kill(signal.SIGTERM)

    def _kill_hard(self) -> None:
        self.signal_group(signal.SIGKILL)

    # --- I/O -------------------------------------------------------------------

    def _pipe_reader(self, stream: str) -> Callable[[int], None]:
        def read(fd: int) -> None:
            if fd not in self._open_pipes:
                return
            try:
                data = os.read(fd, 256 * 1024)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                self.on_output(stream, data)
            else:
                self._close_pipe(fd)

        return read

    def _close_pipe(self, fd: int) -> None:
        reader = self._open_pipes.pop(fd, None)
        if reader is not None:
            self.reactor.removeReader(reader)
            os.close(fd)
        self._maybe_finish()

    def _close_stdin(self) -> None:
        if self._stdin_writer is not None:
            self.reactor.removeWriter(self._stdin_writer)
            self._stdin_writer = None
            os.close(self._stdin_fd)
            self._stdin_fd = -1

    def _child_exited(self, fd: int) -> None:
        if self._status is not None:
            return
        try:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:  # somebody else reaped it: no status to report
            pid, status, usage = self.pid, 255 << 8, None
        if pid == 0:
            return
        self._popen.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap it
        self.reactor.removeReader(self._pid_reader)
        os.close(self._pidfd)
        self._close_stdin()
        self._status = (status, usage)
        if self._killed:
            self.signal_group(signal.SIGKILL)  # leftovers of a killed tree go too
        if self._open_pipes:
            self._timers.append(self.clock.callLater(self.linger, self._drop_pipes))
        self._maybe_finish()

    def _drop_pipes(self) -> None:
        """A grandchild still holds a pipe after the child died: stop waiting for it."""
        for fd in list(self._open_pipes):
            self._close_pipe(fd)

    def _maybe_finish(self) -> None:
        if self._status is None or self._open_pipes or self.finished.called:
            return
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        status, usage = self._status
        code = os.waitstatus_to_exitcode(status)
        result = CommandResult(
            code=code if code >= 0 else None,
            signal=-code if code < 0 else None,
            rusage=rusage_dict(usage) if usage is not None else {},
            wall_time=time.monotonic() - self._started,
            timed_out=self._timed_out,
            killed=self._killed and not self._timed_out,
        )
        self.finished.callback(result)

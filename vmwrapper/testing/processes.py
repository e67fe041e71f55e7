"""Find and kill the processes a BOINC data dir owns, and nothing else.

The client ``chdir``s into its data dir and runs each task in ``slots/N/``,
so "every process whose cwd is inside the data dir" is exactly the client and
its applications (and whatever they started there). Other people's clients on
the same machine have other dirs and are never touched.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time
from collections.abc import Callable, Iterable


def cwd_of(pid: int) -> pathlib.Path | None:
    """The current directory of ``pid``, or None if it is gone or not ours to see."""
    try:
        return pathlib.Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in (b"Z", b"X")


def pids_inside(directory: pathlib.Path) -> list[int]:
    """PIDs of processes whose cwd is ``directory`` or below it (never our own)."""
    root = directory.resolve()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        cwd = cwd_of(int(entry))
        if cwd is not None and (cwd == root or root in cwd.parents) and is_running(int(entry)):
            found.append(int(entry))
    return sorted(found)


def wait_until_gone(pids: Iterable[int], timeout: float, clock: Callable[[], float] = time.monotonic,
                    pause: Callable[[float], None] = time.sleep) -> list[int]:
    """Wait for ``pids`` to exit; return those still running after ``timeout`` s."""
    deadline = clock() + timeout
    left = [pid for pid in pids if is_running(pid)]
    while left and clock() < deadline:
        pause(0.05)
        left = [pid for pid in left if is_running(pid)]
    return left


def session_of(pid: int) -> int | None:
    """The session id of ``pid``, or None if it is gone."""
    try:
        return os.getsid(pid)
    except OSError:
        return None


def kill_all(find: Callable[[], list[int]], timeout: float = 10, what: str = "processes") -> list[int]:
    """SIGKILL what ``find()`` returns, again and again, until it returns nothing.

    Repeats because a dying client may still fork an app. Returns the PIDs
    killed; raises RuntimeError naming the survivors if some will not die.
    """
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        pids = find()
        if not pids:
            return killed
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        left = wait_until_gone(pids, max(0.1, deadline - time.monotonic()))
        if left and time.monotonic() >= deadline:
            raise RuntimeError(f"{what} {left} survived SIGKILL for {timeout} s")


def kill_all_inside(directory: pathlib.Path, timeout: float = 10) -> list[int]:
    """SIGKILL every process whose cwd is in ``directory`` until none is left."""
    return kill_all(lambda: pids_inside(directory), timeout, f"processes in {directory}")

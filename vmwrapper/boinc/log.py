"""The one stderr logger of the project, in BOINC wrapper style.

The client appends the app's stderr to ``slots/N/stderr.txt`` and sends its last
64 KB to the server, where project admins read it next to vboxwrapper's output.
So every line looks like BOINC's wrappers write them::

    2026-11-25 12:40:01 (4242): message

Local time, the PID of the writing process, one line per message line.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO


class StderrLog:
    """Writes timestamped lines to a stream (stderr by default).

    :param stream: where to write; ``None`` means ``sys.stderr`` looked up at each
        write, so redirections done after construction (pytest's capsys) work.
    :param now: wall-clock seconds since the epoch (injected in tests).
    :param pid: the PID shown; ``None`` means ``os.getpid()`` at each write, so a
        forked child logs its own PID.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        now: Callable[[], float] = time.time,
        pid: int | None = None,
    ) -> None:
        self._stream = stream
        self._now = now
        self._pid = pid

    def prefix(self) -> str:
        """The ``YYYY-MM-DD HH:MM:SS (PID):`` part of a line, for the current time."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._now()))
        pid = os.getpid() if self._pid is None else self._pid
        return f"{stamp} ({pid}):"

    def __call__(self, message: str) -> None:
        """Write *message*; each of its lines gets the prefix. Flushed at once."""
        prefix = self.prefix()
        lines = str(message).splitlines() or [""]
        text = "".join(f"{prefix} {line}\n" for line in lines)
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(text)
        stream.flush()


#: The process-wide logger; ``log("...")`` is what everyone calls.
log = StderrLog()

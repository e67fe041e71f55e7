"""Log lines in the format of BOINC's server daemons (lib/msg_log.cpp, lib/sched_msgs.h).

``YYYY-MM-DD HH:MM:SS.ffff UTC [kind] text``: the kind is ``[CRITICAL]``, ``[warning]``, nothing
for normal messages, or ``[debug]``. ``-d LEVEL`` selects 1 critical, 2 warning, 3 normal (default)
or 4 debug, which also prints each SQL statement as BOINC's ``-d 4`` does. Admins grep these logs
with the same patterns as for every other daemon of their project.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

CRITICAL, WARNING, NORMAL, DEBUG = 1, 2, 3, 4
_KIND = {CRITICAL: "[CRITICAL] ", WARNING: "[warning] ", NORMAL: "", DEBUG: "[debug] "}


def format_line(when: float, level: int, text: str) -> str:
    """One log line (with its newline) for ``text`` logged at ``level`` at unix time ``when``."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))
    frac = int((when % 1) * 10000)
    return f"{stamp}.{frac:04d} UTC {_KIND[level]}{text}\n"


class BoincLog:
    """Writes lines at or below ``level`` to ``stream``; ``clock`` gives the time of each line."""

    def __init__(
        self,
        level: int = NORMAL,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if level < CRITICAL:
            raise ValueError(f"-d must be at least {CRITICAL}, got {level}")
        self.level = level
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock

    def enabled(self, level: int) -> bool:
        return level <= self.level

    def log(self, level: int, text: str) -> None:
        if level <= self.level:
            self.stream.write(format_line(self.clock(), min(level, DEBUG), text))
            self.stream.flush()

    def critical(self, text: str) -> None:
        self.log(CRITICAL, text)

    def warning(self, text: str) -> None:
        self.log(WARNING, text)

    def normal(self, text: str) -> None:
        self.log(NORMAL, text)

    def debug(self, text: str) -> None:
        self.log(DEBUG, text)

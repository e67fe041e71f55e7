"""Fraction done: a task's progress file, and the job's weighted progress over its tasks.

Both follow BOINC's wrapper (``samples/wrapper/wrapper.cpp``), so a program
written for it reports progress the same way under vmwrapper:

* a task's ``fraction_done_filename`` is read from its last 32 bytes; of the
  lines there, the last one that starts with a number wins, clamped to 0..1
  (the first line may be the tail of a longer one, as in BOINC: write short
  lines such as ``0.42``, or a long last line is misread);
* the job's fraction is (weights of finished tasks + current task's fraction x
  its weight) / total weight, daemons excluded.

Unlike BOINC we ignore ``nan`` and say "no value" (None) for a missing or empty
file, so the caller picks the fallback (BOINC's wrapper uses 0; vboxwrapper
0.001, so the client does not estimate from elapsed time itself).
"""

from __future__ import annotations

import math
import os
import pathlib
import re
from collections.abc import Sequence

from vmwrapper.job.model import Task

#: How much of the end of the file is read (BOINC's ``fseek(f, -32, SEEK_END)``).
TAIL_BYTES = 32

# What sscanf("%lf") takes at the start of a line (hexadecimal floats aside).
_LEADING_NUMBER = re.compile(
    rb"\s*([+-]?(?:inf(?:inity)?|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))", re.IGNORECASE)


def parse_fraction_done(tail: bytes) -> float | None:
    """The fraction in the *tail* of a progress file, clamped to 0..1; None if it has none."""
    fraction = None
    for line in tail.split(b"\n"):
        match = _LEADING_NUMBER.match(line)
        if match is None:
            continue
        value = float(match.group(1))
        if not math.isnan(value):
            fraction = value
    if fraction is None:
        return None
    return min(max(fraction, 0.0), 1.0)


def read_fraction_done(path: str | pathlib.Path) -> float | None:
    """The fraction in the progress file at *path*; None when it is missing or holds no number."""
    try:
        with open(path, "rb") as progress:
            size = progress.seek(0, os.SEEK_END)
            progress.seek(max(size - TAIL_BYTES, 0))
            tail = progress.read(TAIL_BYTES)
    except OSError:
        return None
    return parse_fraction_done(tail)


def overall_fraction_done(tasks: Sequence[Task], completed: int, current: float = 0.0) -> float:
    """The job's fraction done: *completed* work tasks finished, the next one at *current*.

    Daemons carry no weight; *completed* counts non-daemon tasks in order.

    :raises ValueError: *completed* is not between 0 and the number of work tasks.
    """
    weights = [task.weight for task in tasks if not task.daemon]
    if not 0 <= completed <= len(weights):
        raise ValueError(f"completed={completed} but the job has {len(weights)} work task(s)")
    total = sum(weights)
    if total <= 0:
        return 0.0
    done = sum(weights[:completed])
    if completed < len(weights):
        done += min(max(current, 0.0), 1.0) * weights[completed]
    return min(done / total, 1.0)

"""The last lines of every run in ``stderr.txt``: how it ended and what it did.

Admins read ``stderr.txt`` on the project's result page, where only its last
64 KB arrive; the summary is written last so it is always in them, in a fixed
shape that is easy to grep::

    ----- vmwrapper summary -----
    exit: temporary exit, restart in 300 s: the VM did not come online
    CPU time: 1 h 02 min 05 s (3725.4 s)
    checkpoints: 3 (last at 1 h 00 min 00 s CPU)
    trickles: 2 sent, 3600.0 s of CPU time reported for credit
    -----------------------------
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from vmwrapper.boinc.log import log as default_log
from vmwrapper.status.model import format_duration

HEADER = "----- vmwrapper summary -----"
FOOTER = "-" * len(HEADER)


@dataclass(frozen=True)
class RunSummary:
    """What one run of the wrapper did.

    :param exit_reason: how it ended, one line (``Outcome.describe()``).
    :param cpu_time: cumulative CPU seconds of the VM (all runs of the task).
    :param checkpoints: checkpoints written in this run.
    :param last_checkpoint_cpu: CPU seconds at the last checkpoint, None if none.
    :param trickles_sent: CPU-time trickles sent in this run.
    :param cpu_reported: CPU seconds the last trickle reported (0 if none).
    """

    exit_reason: str
    cpu_time: float
    checkpoints: int = 0
    last_checkpoint_cpu: float | None = None
    trickles_sent: int = 0
    cpu_reported: float = 0.0

    def __post_init__(self) -> None:
        if not self.exit_reason.strip():
            raise ValueError("a summary needs the exit reason")
        for name in ("cpu_time", "cpu_reported"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}={value!r} must be a number >= 0")
        for name in ("checkpoints", "trickles_sent"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def lines(self) -> list[str]:
        reason = " ".join(self.exit_reason.split())
        last = ("" if self.last_checkpoint_cpu is None
                else f" (last at {format_duration(self.last_checkpoint_cpu)} CPU)")
        return [
            HEADER,
            f"exit: {reason}",
            f"CPU time: {format_duration(self.cpu_time)} ({self.cpu_time:.1f} s)",
            f"checkpoints: {self.checkpoints}{last}",
            f"trickles: {self.trickles_sent} sent, {self.cpu_reported:.1f} s of CPU time "
            "reported for credit",
            FOOTER,
        ]

    def write(self, log: Callable[[str], None] = default_log) -> None:
        """Write the summary through the project's stderr logger."""
        for line in self.lines():
            log(line)

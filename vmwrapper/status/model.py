"""What the status page shows: one immutable snapshot of the job, and the guest's last lines.

The wrapper owns the facts; the page only shows them. A *provider* is any
callable returning a :class:`StatusSnapshot`; the server calls it once a
second and pushes the snapshot to open pages when it changed. Snapshots are
plain values (compared with ``==``), so "did anything change" is cheap and
the page never sees half an update.

:meth:`StatusSnapshot.to_public` is the only way a snapshot leaves the
process: it rounds numbers for display and sends every text through the
:class:`~vmwrapper.status.secrets.SecretFilter`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from vmwrapper.status.secrets import SecretFilter

#: Lines of guest output a page shows.
OUTPUT_LINES = 20
#: Longest guest output line shown (the rest is cut).
OUTPUT_LINE_CHARS = 300

#: VM states as the page names them, with the sentence a volunteer reads.
#: Driver states (``VMState.value``) and wrapper phases both map here.
STATE_TEXT: dict[str, str] = {
    "starting": "Starting up",
    "booting": "Booting the virtual machine",
    "restoring": "Restoring the last checkpoint",
    "running": "Running",
    "paused": "Suspended (by BOINC, or the computer is in use)",
    "saving": "Saving a checkpoint",
    "stopped": "Stopped",
    "crashed": "The virtual machine stopped unexpectedly",
    "finished": "Finished",
    "absent": "Not started yet",
}


class SnapshotError(ValueError):
    """A snapshot field has a value the page cannot show; the message names it."""


@dataclass(frozen=True)
class StatusSnapshot:
    """The job as the volunteer should see it at one moment.

    :param vm_state: a key of :data:`STATE_TEXT` (e.g. ``"running"``, ``"paused"``).
    :param task: name of the task the guest is running (empty between tasks).
    :param task_progress: the current task's fraction done 0..1, None when unknown.
    :param fraction_done: the whole job's fraction done 0..1 (what BOINC Manager shows).
    :param cpu_time: cumulative CPU seconds of the VM across every run of the task.
    :param checkpoints: checkpoints written so far.
    :param last_checkpoint_cpu: CPU seconds at the last checkpoint (None: none yet).
    :param trickles_sent: CPU-time trickles sent to the project.
    :param cpu_reported: CPU seconds reported for credit by the last trickle.
    :param guest_output: the last lines of the guest's output, oldest first.
    :param hypervisor: one line, e.g. ``"QEMU 7.2.0, KVM"``.
    :param message: anything the volunteer should know now (e.g. why it waits).
    """

    vm_state: str = "starting"
    task: str = ""
    task_progress: float | None = None
    fraction_done: float = 0.0
    cpu_time: float = 0.0
    checkpoints: int = 0
    last_checkpoint_cpu: float | None = None
    trickles_sent: int = 0
    cpu_reported: float = 0.0
    guest_output: tuple[str, ...] = ()
    hypervisor: str = ""
    message: str = ""

    def __post_init__(self) -> None:
        if self.vm_state not in STATE_TEXT:
            raise SnapshotError(f"vm_state {self.vm_state!r} is not one of: "
                                f"{', '.join(sorted(STATE_TEXT))}")
        for name in ("fraction_done", "task_progress"):
            value = getattr(self, name)
            if value is not None and not (_finite(value) and 0.0 <= value <= 1.0):
                raise SnapshotError(f"{name}={value!r} must be a number from 0 to 1")
        for name in ("cpu_time", "cpu_reported", "last_checkpoint_cpu"):
            value = getattr(self, name)
            if value is not None and not (_finite(value) and value >= 0):
                raise SnapshotError(f"{name}={value!r} must be a number >= 0")
        for name in ("checkpoints", "trickles_sent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SnapshotError(f"{name}={value!r} must be a whole number >= 0")
        object.__setattr__(self, "guest_output", tuple(self.guest_output))

    def but(self, **changes: Any) -> StatusSnapshot:
        """A copy with *changes* (validated like a new snapshot)."""
        return replace(self, **changes)

    def to_public(self, secrets: SecretFilter | None = None) -> dict[str, Any]:
        """The snapshot as JSON-ready values for the page, secrets masked."""
        hide = secrets or SecretFilter()
        return {
            "vm_state": self.vm_state,
            "state_text": STATE_TEXT[self.vm_state],
            "task": hide(self.task),
            "task_progress": _percent(self.task_progress),
            "fraction_done": _percent(self.fraction_done),
            "cpu_time": round(self.cpu_time, 1),
            "cpu_time_text": format_duration(self.cpu_time),
            "checkpoints": self.checkpoints,
            "last_checkpoint_text": ("none yet" if self.last_checkpoint_cpu is None
                                     else f"at {format_duration(self.last_checkpoint_cpu)} CPU"),
            "trickles_sent": self.trickles_sent,
            "cpu_reported_text": format_duration(self.cpu_reported),
            "guest_output": [hide(line)[:OUTPUT_LINE_CHARS] for line in self.guest_output],
            "hypervisor": hide(self.hypervisor),
            "message": hide(self.message),
        }


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 1)


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1 h 02 min 05 s"``: how the page and the summary show times."""
    whole = int(max(seconds, 0.0))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


@dataclass
class GuestOutputTail:
    """Keeps the last *lines* complete lines of the guest's output for the page.

    Feed it raw bytes as they arrive (``feed``), e.g. from the same
    ``on_output`` callback that writes ``stderr.txt``; a partial line waits for
    its end (or is cut at :data:`OUTPUT_LINE_CHARS`).
    """

    lines: int = OUTPUT_LINES
    _tail: deque[str] = field(init=False)
    _partial: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if self.lines < 1:
            raise ValueError(f"lines={self.lines}: keep at least one line")
        self._tail = deque(maxlen=self.lines)

    def feed(self, data: bytes | str) -> None:
        """Add output; complete lines enter the tail."""
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
        *complete, self._partial = (self._partial + text).split("\n")
        if len(self._partial) > OUTPUT_LINE_CHARS:
            complete.append(self._partial)
            self._partial = ""
        for line in complete:
            self._tail.append(line.rstrip("\r")[:OUTPUT_LINE_CHARS])

    def on_output(self) -> Callable[[str, bytes], None]:
        """An ``on_output(stream, data)`` callback (the guest channel's shape)."""
        return lambda _stream, data: self.feed(data)

    def tee(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """A logger that writes through *log* and also keeps each line here.

        For ``CappedOutput(tail.tee(log))``: guest lines reach stderr.txt and the page.
        """

        def write(message: str) -> None:
            log(message)
            self.feed(message + "\n")

        return write

    def snapshot(self) -> tuple[str, ...]:
        """The kept lines, oldest first."""
        return tuple(self._tail)

    def extend(self, lines: Iterable[str]) -> None:
        """Add whole lines (e.g. from a console log read at once)."""
        for line in lines:
            self.feed(line + "\n")

"""CPU-time trickle-ups: the project's evidence of the work the VM does.

Every ``trickle_period`` seconds of running time (suspended time does not
count; 0 disables them) and once at the end, the wrapper sends a trickle-up of
variety ``cpu_time`` whose body is ``<cpu_time>S</cpu_time>``: the VM's
*cumulative* CPU seconds across every run of the task (the checkpoint state
carries the earlier runs'), so a repeat after a restart is harmless to the
server (``credit_rules.md``: the server caps it with its own clock).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

VARIETY = "cpu_time"


def cpu_time_body(seconds: float) -> str:
    """The trickle body for *seconds* of cumulative CPU time."""
    return f"<cpu_time>{max(seconds, 0.0):.3f}</cpu_time>\n"


class CpuTrickles:
    """Decides when a periodic trickle is due and sends it.

    :param send: ``send_trickle_up(variety, body) -> Deferred`` (the BOINC runtime's).
    :param cumulative_cpu: returns the cumulative CPU seconds to report.
    :param period: seconds of running time between trickles; 0 disables the periodic ones.
    """

    def __init__(self, send: Callable[[str, str], defer.Deferred[Any]],
                 cumulative_cpu: Callable[[], float], period: float) -> None:
        if period < 0:
            raise ValueError(f"trickle period {period} s is negative; use 0 to disable")
        self._send = send
        self._cumulative_cpu = cumulative_cpu
        self.period = period
        self._next_due = period
        self.sent: list[float] = []

    def due(self, running_seconds: float) -> bool:
        """True when a periodic trickle should go out at *running_seconds* of running time."""
        return self.period > 0 and running_seconds >= self._next_due

    def maybe_send(self, running_seconds: float) -> defer.Deferred[Any] | None:
        """Send the periodic trickle if it is due; returns its Deferred, else None."""
        if not self.due(running_seconds):
            return None
        while self._next_due <= running_seconds:
            self._next_due += self.period
        return self.send_now()

    def send_now(self) -> defer.Deferred[Any]:
        """Send a trickle with the current cumulative CPU time (the final one, or a periodic one)."""
        seconds = self._cumulative_cpu()
        self.sent.append(seconds)
        return self._send(VARIETY, cpu_time_body(seconds))

"""Batch a command's output by size and time, cut on line boundaries.

A chatty command must not turn every ``write()`` into a broker message, and a
quiet one must not sit on its last lines.  :class:`OutputBatcher` collects
bytes and hands them to ``flush`` when

* ``max_bytes`` are buffered (cut after the last newline within them, or
  hard at ``max_bytes`` for one giant line),
* ``max_delay`` seconds passed since the first unsent byte (complete lines
  only; a partial line waits up to ``partial_delay`` for its newline),
* the stream ends (:meth:`close`: everything).
"""

# -*- test-case-name: tests.unit.vmcontroller.test_guest_output -*-

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

__all__ = ["OutputBatcher"]


class OutputBatcher:
    """Collects one stream's bytes and flushes them in line-aligned batches."""

    def __init__(
        self,
        clock: IReactorTime,
        flush: Callable[[bytes], None],
        max_bytes: int = 64 * 1024,
        max_delay: float = 0.05,
        partial_delay: float = 0.5,
    ) -> None:
        if max_bytes < 1 or max_delay < 0 or partial_delay < max_delay:
            raise ValueError(
                f"need max_bytes >= 1 and 0 <= max_delay <= partial_delay; got "
                f"{max_bytes}, {max_delay}, {partial_delay}"
            )
        self.clock = clock
        self._flush = flush
        self.max_bytes = max_bytes
        self.max_delay = max_delay
        self.partial_delay = partial_delay
        self._buffer = bytearray()
        self._since = 0.0  # when the oldest unsent byte arrived
        self._timer: Any = None
        self.closed = False

    def feed(self, data: bytes) -> None:
        """Add output; may flush at once when the buffer is full."""
        if self.closed:
            raise ValueError("feed() after close()")
        if not data:
            return
        if not self._buffer:
            self._since = self.clock.seconds()
        self._buffer += data
        while len(self._buffer) >= self.max_bytes:
            window = self._buffer[: self.max_bytes]
            cut = window.rfind(b"\n") + 1 or self.max_bytes
            self._emit(cut)
        if self._buffer and self._timer is None:
            self._timer = self.clock.callLater(self.max_delay, self._on_timer)

    def close(self) -> None:
        """The stream ended: flush everything and stop the timer."""
        self._cancel()
        if self._buffer:
            self._emit(len(self._buffer))
        self.closed = True

    def _on_timer(self) -> None:
        self._timer = None
        if not self._buffer:
            return
        waited = self.clock.seconds() - self._since
        cut = self._buffer.rfind(b"\n") + 1
        if waited >= self.partial_delay:
            cut = len(self._buffer)
        if cut:
            self._emit(cut)
        if self._buffer:
            delay = max(self.partial_delay - (self.clock.seconds() - self._since), self.max_delay)
            self._timer = self.clock.callLater(delay, self._on_timer)

    def _emit(self, cut: int) -> None:
        chunk = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        self._since = self.clock.seconds()
        self._flush(chunk)

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

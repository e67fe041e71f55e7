"""Progress for admin commands that take long: image copies, appliance builds, deploys.

Two helpers, both writing to stderr (stdout stays for results scripts read):

* :class:`ProgressBar` for work measured in units (bytes copied): on a
  terminal one line redrawn in place (at most every ``min_interval``
  seconds) with percent, amount, rate and time left; in a log file or CI
  (not a terminal) one plain line per 10 % so logs stay short.
* :class:`StepProgress` for work done in named steps (the appliance build's
  ``log`` callback): ``[2/5 0:37] installing the kernel``, with the time each
  step took.

:func:`copy_with_progress` copies a file (a multi-GB disk image) with a bar.
Time comes from an injected ``clock`` so tests need no sleeps.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

#: Bytes read and written per step of :func:`copy_with_progress`.
COPY_CHUNK = 4 * 1024 * 1024


def format_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover - the loop always returns


def format_clock(seconds: float) -> str:
    """``125`` -> ``"2:05"``, ``3725`` -> ``"1:02:05"``."""
    whole = int(max(seconds, 0))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """A progress bar for *total* units of work (None: unknown total).

    :param label: what is being done ("copying appliance.qcow2").
    :param total: units of work in all; None shows amount and rate only.
    :param unit: ``"bytes"`` (shown as KiB/MiB/GiB) or a word ("files").
    :param stream: where to draw (default stderr, looked up at each draw).
    :param tty: draw in place; default: whether *stream* is a terminal.
    :param clock: seconds, monotonic (injected in tests).
    :param min_interval: least seconds between two redraws on a terminal.
    """

    def __init__(self, label: str, total: float | None = None, unit: str = "bytes",
                 stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, width: int = 24,
                 min_interval: float = 0.1) -> None:
        if total is not None and total < 0:
            raise ValueError(f"total={total}: must be >= 0 (or None when unknown)")
        self.label = label
        self.total = total
        self.unit = unit
        self._stream = stream
        self._tty = tty
        self._clock = clock
        self.width = width
        self.min_interval = min_interval
        self.done = 0.0
        self._started = clock()
        self._last_draw = float("-inf")
        self._last_decile = -1
        self._finished = False

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @property
    def tty(self) -> bool:
        if self._tty is None:
            isatty = getattr(self.stream, "isatty", None)
            self._tty = bool(isatty and isatty())
        return self._tty

    def advance(self, amount: float) -> None:
        """*amount* more units are done."""
        self.update(self.done + amount)

    def update(self, done: float) -> None:
        """*done* units are done in all; redraws when due."""
        self.done = max(0.0, done if self.total is None else min(done, self.total))
        now = self._clock()
        if self.tty:
            if now - self._last_draw >= self.min_interval:
                self._last_draw = now
                self._write("\r" + self.render(now) + "\x1b[K")
            return
        if self.total:
            decile = int(10 * self.done / self.total)
            if decile > self._last_decile and decile < 10:
                self._last_decile = decile
                self._write(self.render(now) + "\n")

    def finish(self, message: str = "done") -> None:
        """Draw the final state with *message*; later calls do nothing."""
        if self._finished:
            return
        self._finished = True
        if self.total is not None:
            self.done = self.total
        now = self._clock()
        prefix = "\r" if self.tty else ""
        self._write(f"{prefix}{self.render(now)}: {message}" + ("\x1b[K\n" if self.tty else "\n"))

    def render(self, now: float | None = None) -> str:
        """The bar's text at *now* (without line control characters)."""
        elapsed = max((self._clock() if now is None else now) - self._started, 1e-9)
        rate = self.done / elapsed
        amount = self._amount(self.done)
        if not self.total:
            return f"{self.label}: {amount} ({self._amount(rate)}/s, {format_clock(elapsed)})"
        fraction = self.done / self.total
        filled = int(round(fraction * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = f"{format_clock(left)} left" if left is not None and fraction < 1 else (
            f"in {format_clock(elapsed)}" if fraction >= 1 else "-:-- left")
        return (f"{self.label} [{bar}] {100 * fraction:5.1f}% "
                f"{amount}/{self._amount(self.total)} {self._amount(rate)}/s {eta}")

    def _amount(self, value: float) -> str:
        return format_bytes(value) if self.unit == "bytes" else f"{value:.0f} {self.unit}"

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def copy_with_progress(source: str | os.PathLike[str], target: str | os.PathLike[str],
                       bar: ProgressBar | None = None, chunk: int = COPY_CHUNK) -> int:
    """Copy the file *source* to *target* (mode bits too), showing *bar*; returns bytes copied.

    The data goes to ``target.part`` first and is renamed when complete and on
    disk, so an interrupted copy never leaves a truncated image under the real
    name.

    :raises OSError: reading or writing failed (the partial file is removed).
    """
    source, target = Path(source), Path(target)
    size = source.stat().st_size
    bar = bar or ProgressBar(f"copying {source.name}", total=size)
    partial = target.with_name(target.name + ".part")
    copied = 0
    try:
        with open(source, "rb") as reader, open(partial, "wb") as writer:
            while block := reader.read(chunk):
                writer.write(block)
                copied += len(block)
                bar.update(copied)
            writer.flush()
            os.fsync(writer.fileno())
        shutil.copymode(source, partial)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        bar.finish("failed")
        raise
    bar.finish()
    return copied


class StepProgress:
    """Progress of work done in named steps; call it with each step's name.

    Fits any ``log(text)`` callback (``vmwrapper.appliance.builder.build``).

    :param label: the command ("appliance").
    :param expected: steps a full run takes (shown as ``n/expected``; a run may
        take fewer when parts are cached).
    """

    def __init__(self, label: str, expected: int | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.expected = expected
        self._stream = stream
        self._clock = clock
        self._started = clock()
        self._step_started = self._started
        self.steps = 0

    def __call__(self, text: str) -> None:
        now = self._clock()
        previous = (f" (previous step {format_clock(now - self._step_started)})"
                    if self.steps else "")
        self.steps += 1
        self._step_started = now
        count = f"{self.steps}/{max(self.expected, self.steps)}" if self.expected else str(
            self.steps)
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(f"{self.label} [{count} {format_clock(now - self._started)}] "
                     f"{text}{previous}\n")
        stream.flush()

"""Guest task output streamed into the slot's ``stderr.txt``, with a size cap.

The client sends only the last 64 KB of ``stderr.txt`` to the project and the
file lives on the volunteer's disk, so a chatty job must not fill it: after
:data:`DEFAULT_CAP` bytes of guest output the rest is counted, not written,
and one line says how much was dropped. Lines are prefixed with the task's
name; a partial line waits (up to :data:`MAX_LINE` bytes) for its end.
"""

from __future__ import annotations

from collections.abc import Callable

from vmwrapper.boinc.log import log as default_log

#: Bytes of guest output written to stderr.txt per wrapper run.
DEFAULT_CAP = 1024 * 1024
#: A line longer than this is cut.
MAX_LINE = 4096


class CappedOutput:
    """Collects output batches and writes whole lines through *log* until the cap.

    :param log: writes one message (default: the project's stderr logger).
    :param cap: bytes of output to write in total (shared by every stream).
    """

    def __init__(self, log: Callable[[str], None] = default_log, cap: int = DEFAULT_CAP) -> None:
        self._log = log
        self.cap = cap
        self.written = 0
        self.dropped = 0
        self._partial: dict[str, bytes] = {}

    def stream(self, label: str) -> Callable[[str, bytes], None]:
        """A ``on_output(stream, data)`` callback for the task called *label*."""

        def on_output(stream: str, data: bytes) -> None:
            self.feed(f"{label} {stream}", data)

        return on_output

    def feed(self, key: str, data: bytes) -> None:
        """Add *data* of the stream *key*; complete lines are written now."""
        buffered = self._partial.get(key, b"") + data
        *lines, rest = buffered.split(b"\n")
        if len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = b""
        self._partial[key] = rest
        for line in lines:
            self._write(key, line)

    def flush(self) -> None:
        """Write every partial line and, once, how much was dropped."""
        for key, rest in list(self._partial.items()):
            if rest:
                self._write(key, rest)
        self._partial.clear()
        if self.dropped:
            self._log(f"[guest output: {self.dropped} more bytes not shown "
                      f"(cap {self.cap} bytes)]")
            self.dropped = 0

    def _write(self, key: str, line: bytes) -> None:
        size = len(line) + 1
        if self.written + size > self.cap:
            self.dropped += size
            return
        self.written += size
        self._log(f"[{key}] {line.decode('utf-8', errors='replace')}")

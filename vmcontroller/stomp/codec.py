"""A bytes-only STOMP 1.0/1.1/1.2 frame codec with no I/O.

One codec serves every STOMP speaker in the project: the Twisted host and
guest-agent clients and the embedded broker.  It exists because the parsers
we could reuse are wrong in ways that matter on a long-lived connection
(coilmq 1.1.0 dies on frames split across reads and on ``:`` in header
values, stalls on heart-beat newlines and never frees consumed bytes;
stomper is str-only and mangles bodies).  This module is pure: it turns
bytes into :class:`Frame` objects and back, and knows nothing of sockets,
reactors or threads.

Wire format reminders (STOMP 1.2 spec, "Frames and headers")::

    COMMAND EOL
    header1:value1 EOL
    ...
    EOL
    body NUL

* EOL is ``\\n`` or ``\\r\\n``.  Bare EOLs between frames are heart-beats.
* Headers split on the *first* ``:``; values may contain ``:``.
* From 1.1 on, header names and values are escaped (``\\\\``, ``\\n``, ``\\c``,
  plus ``\\r`` in 1.2), except in CONNECT and CONNECTED frames.
* A repeated header: only the first occurrence counts.
* ``content-length`` gives the body size (the body may contain NUL);
  without it the body runs to the first NUL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from vmcontroller.stomp.heap import unfilled_bytearray

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_HEADERS",
    "DIRECT_BODY_SIZE",
    "HEARTBEAT",
    "SUPPORTED_VERSIONS",
    "Frame",
    "FrameError",
    "FrameParser",
    "FrameTooLarge",
    "MalformedFrame",
    "encode_frame",
    "encode_head",
]

#: What one side sends to show it is alive when it has nothing else to say.
HEARTBEAT = b"\n"

#: Protocol versions this codec speaks, oldest first.
SUPPORTED_VERSIONS = ("1.0", "1.1", "1.2")

#: Largest frame (header block + body) a parser accepts by default.
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
#: Largest header block (command line and headers) accepted by default.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
#: Most headers one frame may carry by default.
DEFAULT_MAX_HEADERS = 128
#: Bodies announced by ``content-length`` from this size on are received
#: straight into a buffer of their own (see :meth:`FrameParser.body_sink`).
DIRECT_BODY_SIZE = 64 * 1024

# Frames whose headers are never escaped (STOMP 1.1/1.2 keep them
# readable by 1.0 peers during negotiation).
_UNESCAPED_COMMANDS = frozenset({"CONNECT", "CONNECTED"})

_ESCAPES_11 = {ord("\\"): "\\\\", ord("\n"): "\\n", ord(":"): "\\c"}
_ESCAPES_12 = {**_ESCAPES_11, ord("\r"): "\\r"}
_UNESCAPES = {
    "1.1": {"\\": "\\", "n": "\n", "c": ":"},
    "1.2": {"\\": "\\", "n": "\n", "c": ":", "r": "\r"},
}

# Characters that force the slow, escaping path of encode_frame (the
# first ':' of each line, the name/value separator, is removed before the
# check; a ':' left over is one inside a name or value).
_SPECIAL_11 = re.compile(r"[\\\n:]")
_SPECIAL_12 = re.compile(r"[\\\n:\r]")
_KNOWN_COMMANDS = frozenset(
    {
        "CONNECT",
        "STOMP",
        "CONNECTED",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
        "MESSAGE",
        "RECEIPT",
        "ERROR",
    }
)

_NUL = 0
_LF = 0x0A
_CR = 0x0D


@dataclass
class Frame:
    """One STOMP frame.

    ``headers`` keeps insertion order; the parser stores only the first
    occurrence of a repeated header, as the spec requires.  ``body`` is
    bytes, or a bytearray for a large body the parser received in place
    (:data:`DIRECT_BODY_SIZE`; it compares equal to the same bytes and works
    wherever a buffer does): decoding is the application's business.
    """

    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | bytearray = b""


class FrameError(ValueError):
    """A frame could not be parsed or built.

    ``code`` is a stable machine-readable identifier (for logs, ERROR frames
    and tests); ``message`` is for people.  After a parser raises one, the
    byte stream is out of sync and the connection must be closed.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        #: Frames completed in the failing ``feed()`` call before the bad
        #: bytes, in order: a peer still gets them processed, exactly as if
        #: the stream had arrived one byte at a time.
        self.frames: list[Frame] = []


class MalformedFrame(FrameError):
    """The bytes do not form a valid STOMP frame."""


class FrameTooLarge(FrameError):
    """A frame, its header block or its header count exceeds a limit."""


def _check_version(version: str) -> str:
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(
            f"unsupported STOMP version {version!r}; valid versions: "
            + ", ".join(SUPPORTED_VERSIONS)
        )
    return version


def encode_frame(frame: Frame, version: str = "1.2") -> bytes:
    """Serialise ``frame`` for a peer that negotiated ``version``.

    Header names and values are escaped for 1.1/1.2 (never in CONNECT or
    CONNECTED).  ``content-length`` is set to the real body size whenever
    there is a body, replacing any value the caller put there, so binary
    bodies with NUL bytes always survive.

    :raises ValueError: for an unknown version, an empty or multi-line
        command, or a header that cannot be represented (a newline in a
        1.0 or CONNECT header, a ``:`` in a 1.0 header name).
    """
    return encode_head(frame, version) + frame.body + b"\x00"


def encode_head(frame: Frame, version: str = "1.2") -> bytes:
    """Everything :func:`encode_frame` puts before the body.

    ``encode_frame(f, v) == encode_head(f, v) + f.body + b"\\x00"``; writers
    of large bodies send the three parts with one ``sendmsg`` instead of
    copying the body into a new string.
    """
    if version not in SUPPORTED_VERSIONS:
        _check_version(version)
    command = frame.command
    if command not in _KNOWN_COMMANDS and not (command.isascii() and command.isalpha()):
        raise ValueError(f"invalid STOMP command {command!r}: ASCII letters only")
    lines = [f"{name}:{value}" for name, value in frame.headers.items() if name != "content-length"]
    # Fast path: most frames have nothing to escape (one scan of all headers).
    special = _SPECIAL_12 if version == "1.2" else _SPECIAL_11
    if special.search("\x01".join(lines).replace(":", "", len(lines))) is not None:
        lines = _escaped_header_lines(frame, version)
    if frame.body:
        lines.append(f"content-length:{len(frame.body)}")
    return "\n".join([command, *lines, "", ""]).encode("utf-8")


def _escaped_header_lines(frame: Frame, version: str) -> list[str]:
    """Header lines with 1.1/1.2 escaping, or an error where none is allowed."""
    command = frame.command
    if version == "1.0" or command in _UNESCAPED_COMMANDS:
        for name, value in frame.headers.items():
            if "\n" in name or "\n" in value or ":" in name or "\r" in name:
                raise ValueError(
                    f"header {name!r}: {value!r} cannot be sent unescaped "
                    f"(STOMP {version} {command}): no newlines, no ':' in names"
                )
        return [f"{n}:{v}" for n, v in frame.headers.items() if n != "content-length"]
    escapes = _ESCAPES_12 if version == "1.2" else _ESCAPES_11
    return [
        f"{name.translate(escapes)}:{value.translate(escapes)}"
        for name, value in frame.headers.items()
        if name != "content-length"
    ]


class FrameParser:
    """Incremental STOMP frame parser: bytes in, :class:`Frame` objects out.

    ``feed()`` accepts data cut at any byte boundary and returns every frame
    completed so far.  Bare EOLs between frames are heart-beats: they are
    counted in :attr:`heartbeats_seen` and reported to ``on_heartbeat``.
    Consumed bytes are discarded after each call, so the buffer never holds
    more than one partial frame, and limits are checked *before* a large
    body is buffered (an announced ``content-length`` over the limit fails
    at once).

    :param version: the negotiated protocol version; decides header
        unescaping.  Settable later through :attr:`version` (a client starts
        at "1.2" and switches once CONNECTED says otherwise; a broker starts
        at "1.0" and switches after CONNECT).
    :param max_frame_size: largest header block plus body, in bytes.
    :param max_header_bytes: largest command line plus header lines.
    :param max_headers: most header lines in one frame.
    :param on_heartbeat: called with no argument for every heart-beat EOL.
    :param pause_after: commands after which ``feed()`` stops and keeps the
        rest buffered until the next call (``feed(b"")`` resumes).  A broker
        passes ``{"CONNECT", "STOMP"}`` so frames pipelined behind CONNECT
        are unescaped with the version CONNECT negotiates.

    Large bodies (``content-length`` of :data:`DIRECT_BODY_SIZE` or more)
    skip the shared buffer: once the header block is parsed, the body is
    copied once into a bytearray of its final size, which becomes
    ``Frame.body``.  A reader that owns its socket can even receive into it
    directly (:meth:`body_sink`, then :meth:`body_received`), so the body
    is never copied in user space at all.
    """

    def __init__(
        self,
        version: str = "1.2",
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
        on_heartbeat: Callable[[], None] | None = None,
        pause_after: Collection[str] = (),
    ) -> None:
        self.version = version
        self.pause_after = frozenset(pause_after)
        for name, limit in (
            ("max_frame_size", max_frame_size),
            ("max_header_bytes", max_header_bytes),
            ("max_headers", max_headers),
        ):
            if limit < 1:
                raise ValueError(f"{name} must be a positive integer, got {limit!r}")
        self.max_frame_size = max_frame_size
        self.max_header_bytes = min(max_header_bytes, max_frame_size)
        self.max_headers = max_headers
        self.on_heartbeat = on_heartbeat
        #: Heart-beat EOLs received between frames since creation.
        self.heartbeats_seen = 0
        self._buffer = bytearray()
        # Parse state of the frame at the front of the buffer:
        self._scan = 0  # where to resume looking for the end of the header block
        self._pending: Frame | None = None  # header block parsed, body not yet complete
        self._frame_start = 0
        self._body_start = 0
        self._body_length: int | None = None  # from content-length
        self._frame_end = 0  # set by _read_body: just past the NUL
        # A large body received in place: the part still filling, its fill
        # level, then the finished body waiting for its NUL.
        self._direct: bytearray | None = None
        self._direct_filled = 0
        self._direct_done: bytearray | None = None
        self._failed: FrameError | None = None

    @property
    def version(self) -> str:
        """The protocol version used to unescape headers."""
        return self._version

    @version.setter
    def version(self, value: str) -> None:
        self._version = _check_version(value)

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (bounded by the limits)."""
        return len(self._buffer) + (self._direct_filled if self._direct is not None else 0)

    def body_sink(self) -> memoryview | None:
        """Where the rest of a large body goes, or None when no body is filling.

        A reader may ``recv_into()`` this view and then report the byte
        count to :meth:`body_received`, instead of passing the bytes to
        :meth:`feed`: the body then travels from the kernel into its final
        buffer with no copy in between.
        """
        if self._direct is None or self._failed is not None:
            return None
        return memoryview(self._direct)[self._direct_filled :]

    def body_received(self, count: int) -> list[Frame]:
        """``count`` bytes were written into :meth:`body_sink`; like ``feed``."""
        if self._direct is None or not 0 <= count <= len(self._direct) - self._direct_filled:
            raise ValueError(f"body_received({count}) does not match the body being received")
        self._direct_filled += count
        return self.feed(b"")

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add received bytes; return the frames they complete, in order.

        ``data`` is copied, so the caller may reuse its receive buffer.

        :raises FrameError: on malformed or oversized input, carrying the
            frames completed before it in ``.frames``.  The parser then
            stays failed: every later call raises the same error.
        """
        if self._failed is not None:
            failed = self._failed
            raise type(failed)(failed.code, failed.message)
        frames: list[Frame] = []
        if self._direct is not None:
            data = self._fill_direct(data)
            if self._direct is not None:
                return frames  # the body is still incomplete
        buf = self._buffer
        buf += data
        pos = 0
        try:
            while True:
                if self._pending is None:
                    pos = self._skip_heartbeats(pos)
                    if pos >= len(buf) or not self._read_header_block(pos):
                        break
                    if self._start_direct():
                        return frames  # the buffer was emptied into the body
                frame = self._read_body()
                if frame is None:
                    break
                frames.append(frame)
                pos = self._frame_end
                self._pending = None
                self._scan = pos
                if frame.command in self.pause_after:
                    break
        except FrameError as error:
            error.frames = frames
            self._failed = error
            buf.clear()
            self._direct = self._direct_done = None
            raise
        # Drop consumed bytes so a long-lived connection stays bounded.
        if pos:
            del buf[:pos]
            self._scan -= pos
            if self._pending is not None:
                self._body_start -= pos
                self._frame_start -= pos
        return frames

    def _start_direct(self) -> bool:
        """Move a large, incomplete body out of the shared buffer (True if done)."""
        length = self._body_length
        buf = self._buffer
        start = self._body_start
        if length is None or length < DIRECT_BODY_SIZE or len(buf) - start > length:
            return False  # small, unannounced, or already complete with its NUL
        body = unfilled_bytearray(length)  # filled below and by the next reads
        have = len(buf) - start
        with memoryview(buf) as view:
            body[:have] = view[start:]
        buf.clear()
        self._scan = self._body_start = self._frame_start = 0
        self._direct = body
        self._direct_filled = have
        self._fill_direct(b"")  # a body whose last byte came just now completes here
        return True

    def _fill_direct(self, data: bytes | bytearray | memoryview) -> memoryview:
        """Copy ``data`` into the body being filled; return what follows the body."""
        body = self._direct
        assert body is not None
        view = memoryview(data)
        take = min(len(view), len(body) - self._direct_filled)
        if take:
            body[self._direct_filled : self._direct_filled + take] = view[:take]
            self._direct_filled += take
        if self._direct_filled == len(body):
            self._direct_done, self._direct = body, None
        return view[take:]

    def _skip_heartbeats(self, pos: int) -> int:
        buf = self._buffer
        end = len(buf)
        while pos < end:
            byte = buf[pos]
            if byte == _LF:
                pos += 1
            elif byte == _CR:
                if pos + 1 >= end:
                    break  # wait: the LF of a CRLF heart-beat may follow
                if buf[pos + 1] != _LF:
                    raise MalformedFrame("bad-eol", "carriage return not followed by newline")
                pos += 2
            else:
                break
            self.heartbeats_seen += 1
            if self.on_heartbeat is not None:
                self.on_heartbeat()
        self._scan = max(self._scan, pos)
        return pos

    def _read_header_block(self, start: int) -> bool:
        """Parse the header block starting at ``start`` if it is complete."""
        buf = self._buffer
        end = buf.find(b"\n\n", self._scan)
        # Look for a CRLF blank line only before the LF one: searching the
        # whole buffer for every frame would make a read of many frames O(n^2).
        crlf_end = buf.find(b"\n\r\n", self._scan, len(buf) if end == -1 else end + 2)
        if crlf_end != -1 and (end == -1 or crlf_end < end):
            block_end, body_start = crlf_end, crlf_end + 3
        elif end != -1:
            block_end, body_start = end, end + 2
        else:
            # Incomplete: resume the search just before the tail next time.
            self._scan = max(start, len(buf) - 2)
            if len(buf) - start > self.max_header_bytes:
                raise FrameTooLarge(
                    "headers-too-large",
                    f"header block exceeds {self.max_header_bytes} bytes",
                )
            return False
        if block_end - start > self.max_header_bytes:
            raise FrameTooLarge(
                "headers-too-large", f"header block exceeds {self.max_header_bytes} bytes"
            )
        try:
            text = buf[start:block_end].decode("utf-8")
        except UnicodeDecodeError as error:
            raise MalformedFrame("bad-encoding", f"header block is not UTF-8: {error}") from None
        lines = text.split("\n")
        command = lines[0].rstrip("\r")
        if not command or not command.isascii() or not command.isalpha():
            raise MalformedFrame("bad-command", f"invalid command line {command[:40]!r}")
        if len(lines) - 1 > self.max_headers:
            raise FrameTooLarge(
                "too-many-headers", f"{len(lines) - 1} headers; the limit is {self.max_headers}"
            )
        unescape = (
            None
            if self._version == "1.0" or command in _UNESCAPED_COMMANDS
            else _UNESCAPES[self._version]
        )
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line.endswith("\r"):
                line = line[:-1]
            name, sep, value = line.partition(":")
            if not sep:
                raise MalformedFrame("bad-header", f"header line without ':': {line[:80]!r}")
            if unescape is not None and ("\\" in line):
                name = _unescape(name, unescape)
                value = _unescape(value, unescape)
            if name not in headers:
                headers[name] = value
        body_length = None
        if "content-length" in headers:
            raw = headers["content-length"]
            if not raw.isdigit() or not raw.isascii():
                raise MalformedFrame("bad-content-length", f"content-length {raw[:40]!r}")
            body_length = int(raw)
            if body_start - start + body_length + 1 > self.max_frame_size:
                raise FrameTooLarge(
                    "frame-too-large",
                    f"content-length {body_length} exceeds the frame limit "
                    f"of {self.max_frame_size} bytes",
                )
        self._pending = Frame(command, headers)
        self._body_start = body_start
        self._body_length = body_length
        self._scan = body_start
        self._frame_start = start
        return True

    def _read_body(self) -> Frame | None:
        """Complete the pending frame's body, or return None to wait."""
        buf = self._buffer
        frame = self._pending
        assert frame is not None
        start = self._body_start
        if self._direct_done is not None:
            if not buf:
                return None
            if buf[start] != _NUL:
                raise MalformedFrame(
                    "missing-nul", "body is not followed by NUL at its content-length"
                )
            frame.body, self._direct_done = self._direct_done, None
            self._frame_end = start + 1
            return frame
        if self._body_length is not None:
            nul = start + self._body_length
            if len(buf) <= nul:
                return None
            if buf[nul] != _NUL:
                raise MalformedFrame(
                    "missing-nul", "body is not followed by NUL at its content-length"
                )
        else:
            nul = buf.find(b"\x00", self._scan)
            if nul == -1:
                self._scan = len(buf)
                if len(buf) - self._frame_start > self.max_frame_size:
                    raise FrameTooLarge(
                        "frame-too-large", f"frame exceeds {self.max_frame_size} bytes"
                    )
                return None
            if nul - self._frame_start + 1 > self.max_frame_size:
                raise FrameTooLarge("frame-too-large", f"frame exceeds {self.max_frame_size} bytes")
        with memoryview(buf) as view:  # one copy (buf[a:b] would copy twice)
            frame.body = view[start:nul].tobytes()
        self._frame_end = nul + 1
        return frame


def _unescape(text: str, table: dict[str, str]) -> str:
    """Undo 1.1/1.2 header escaping; unknown sequences are fatal (spec)."""
    out = []
    i = 0
    while True:
        j = text.find("\\", i)
        if j == -1:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        replacement = table.get(text[j + 1 : j + 2])
        if replacement is None:
            raise MalformedFrame(
                "bad-escape", f"undefined escape sequence {text[j : j + 2]!r} in header"
            )
        out.append(replacement)
        i = j + 2

"""Chunked, flow-controlled, resumable file transfer over the message broker.

One transfer has a :class:`TransferSender` on one side and a
:class:`TransferReceiver` on the other; both are used in either direction
(host -> agent for ``put``, agent -> host for ``get``) and neither touches the
wire: the owner passes a ``send(message, payload)`` callable and routes the
other side's messages to ``on_*`` methods.

How it works (see :mod:`vmcontroller.protocol` for the messages):

* The sender reads ``chunk_size`` bytes at a time (default 256 KiB) and keeps
  at most ``window`` chunks unacknowledged: a slow receiver slows the sender
  instead of filling the broker.
* The receiver writes chunks strictly in order into a temporary file next to
  the destination and acknowledges each (:class:`DataAck` with the next
  offset it needs).  A chunk from the future (one was lost) draws one
  ``sync`` ack; duplicates (a resend raced a late original) are ignored,
  which is safe because a chunk at a given offset always holds the same bytes.
* Resume: after a reconnect, or when acknowledgements stop for
  ``sync_after`` seconds, the sender asks the receiver where it stands
  (``request_sync``) and rewinds to the answer, the last acknowledged byte.
  A broker that lost every queued message (the embedded one restarted) costs
  at most one window.
* When every byte is acknowledged the sender sends :class:`DataEnd` with the
  sha256; the receiver compares it with the hash of what it wrote, then
  renames the temporary file into place (atomic: readers see the old file or
  the whole new one) and answers :class:`TransferDone`.
* ``max_size`` bounds what a receiver accepts.

Only the standard library and Twisted: the guest agent uses this module.
"""

# -*- test-case-name: tests.unit.vmcontroller.test_transfer -*-

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from vmcontroller.protocol import (
    Data,
    DataAck,
    DataEnd,
    DataSync,
    ErrorCode,
    Message,
    TransferDone,
    TransferFailed,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_WINDOW",
    "TransferError",
    "TransferReceiver",
    "TransferResult",
    "TransferSender",
    "temp_path_for",
]

#: Bytes per data message unless configured otherwise.
DEFAULT_CHUNK_SIZE = 256 * 1024
#: Chunks a sender may have unacknowledged at once.
DEFAULT_WINDOW = 8
#: Seconds without progress before a side asks the other where it stands.
DEFAULT_SYNC_AFTER = 5.0
#: Seconds without progress before a transfer is abandoned.
DEFAULT_GIVE_UP_AFTER = 300.0

#: ``send(message, payload)``: how a transfer side puts a message on the wire.
SendFunction = Callable[[Message, bytes], None]


@dataclass(frozen=True)
class TransferResult:
    """A completed transfer: bytes moved and their sha256 (hex)."""

    size: int
    sha256: str


class TransferError(Exception):
    """A transfer failed; ``code`` is an :class:`~vmcontroller.protocol.ErrorCode`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def temp_path_for(final_path: str, transfer_id: str) -> str:
    """Where a receiver keeps the partial file: hidden, next to the target."""
    head, tail = os.path.split(final_path)
    return os.path.join(head, f".{tail}.{transfer_id}.part")


def _safe_send(send: SendFunction, message: Message, payload: bytes = b"") -> bool:
    """Send, treating a down connection as "try again after the next sync"."""
    try:
        send(message, payload)
    except ConnectionError:  # includes the STOMP session's NotConnectedError
        return False
    return True


class _Watchdog:
    """Calls ``on_stall`` after ``sync_after`` s without progress, ``on_give_up`` much later."""

    def __init__(
        self,
        clock: IReactorTime,
        sync_after: float,
        give_up_after: float,
        on_stall: Callable[[], None],
        on_give_up: Callable[[], None],
    ) -> None:
        self.clock = clock
        self.sync_after = sync_after
        self.give_up_after = give_up_after
        self.on_stall = on_stall
        self.on_give_up = on_give_up
        self._last_progress = clock.seconds()
        self._call: Any = None

    def start(self) -> None:
        self.progress()
        self._call = self.clock.callLater(self.sync_after, self._tick)

    def progress(self) -> None:
        self._last_progress = self.clock.seconds()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _tick(self) -> None:
        self._call = None
        quiet = self.clock.seconds() - self._last_progress
        if quiet >= self.give_up_after:
            self.on_give_up()
            return
        if quiet >= self.sync_after:
            self.on_stall()
            delay = self.sync_after
        else:
            delay = self.sync_after - quiet
        self._call = self.clock.callLater(delay, self._tick)


class TransferSender:
    """The side that owns the file and pushes it.

    :param request_sync: asks the receiver for its offset (the owner sends a
        repeated ``put`` or a :class:`DataSync`); the answer must be routed to
        :meth:`on_ack`.
    :attr done: fires with a :class:`TransferResult` on :class:`TransferDone`,
        errbacks with :class:`TransferError`.
    """

    def __init__(
        self,
        transfer_id: str,
        path: str,
        send: SendFunction,
        request_sync: Callable[[], None] | None,
        clock: IReactorTime,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        window: int = DEFAULT_WINDOW,
        sync_after: float = DEFAULT_SYNC_AFTER,
        give_up_after: float = DEFAULT_GIVE_UP_AFTER,
    ) -> None:
        if chunk_size < 1 or window < 1:
            raise ValueError(f"chunk_size ({chunk_size}) and window ({window}) must be >= 1")
        self.transfer_id = transfer_id
        self.path = path
        self.chunk_size = chunk_size
        self.window = window
        self._send = send
        self._request_sync = request_sync or self._send_data_sync
        self.done: defer.Deferred[TransferResult] = defer.Deferred()
        self._fd = os.open(path, os.O_RDONLY)  # OSError propagates: the owner reports it
        self.size = os.fstat(self._fd).st_size
        self._hasher = hashlib.sha256()
        self._hashed = 0  # bytes fed to the hasher, always a prefix of the file
        self._acked = 0
        self._next = 0
        self._started = False
        self._end_sent = False
        #: Payload bytes sent so far, resends included (how much resuming saved).
        self.bytes_sent = 0
        self._watchdog = _Watchdog(clock, sync_after, give_up_after, self.resync, self._give_up)

    @property
    def acked(self) -> int:
        """Bytes the receiver confirmed."""
        return self._acked

    def start(self, offset: int | None = None) -> None:
        """Begin: ask the receiver where to start, or start at ``offset`` if known."""
        self._watchdog.start()
        if offset is None:
            self._request_sync()
        else:
            self._rewind(offset)

    def resync(self) -> None:
        """Ask the receiver where it stands (after a reconnect or a stall)."""
        if not self.done.called:
            self._request_sync()

    def on_ack(self, ack: DataAck) -> None:
        """The receiver confirmed everything before ``ack.offset``."""
        if self.done.called:
            return
        if ack.offset > self.size or ack.offset < 0:
            self._fail(
                ErrorCode.BAD_REQUEST, f"receiver acknowledged offset {ack.offset} of {self.size}"
            )
            return
        if ack.sync:
            self._rewind(ack.offset)
            return
        if ack.offset > self._acked:
            self._acked = ack.offset
            self._watchdog.progress()
            self._pump()

    def on_done(self, message: TransferDone) -> None:
        """The receiver verified and committed the file."""
        if self.done.called:
            return
        self._close()
        if message.sha256 != self._hasher.hexdigest() or message.size != self.size:
            self.done.errback(
                Failure(TransferError(ErrorCode.CHECKSUM, "receiver confirmed other bytes"))
            )
            return
        self.done.callback(TransferResult(self.size, message.sha256))

    def on_failed(self, message: TransferFailed) -> None:
        """The receiver gave up."""
        if not self.done.called:
            self._close()
            self.done.errback(Failure(TransferError(message.code, message.message)))

    def cancel(self, code: str, message: str) -> None:
        """Abandon the transfer, telling the receiver."""
        if not self.done.called:
            _safe_send(self._send, TransferFailed(self.transfer_id, code, message))
            self._fail(code, message)

    # --- internals -----------------------------------------------------------

    def _send_data_sync(self) -> None:
        _safe_send(self._send, DataSync(self.transfer_id))

    def _rewind(self, offset: int) -> None:
        if offset > self.size or offset < 0:
            self._fail(ErrorCode.BAD_REQUEST, f"cannot resume at offset {offset} of {self.size}")
            return
        self._started = True
        self._watchdog.progress()
        self._acked = max(self._acked, offset)
        self._next = offset
        self._end_sent = False
        self._pump()

    def _pump(self) -> None:
        if not self._started or self.done.called:
            return
        limit = self._acked + self.window * self.chunk_size
        while self._next < self.size and self._next < limit:
            offset = self._next
            chunk = os.pread(self._fd, min(self.chunk_size, self.size - offset), offset)
            if not chunk:
                self._fail(
                    ErrorCode.IO_ERROR, f"{self.path} shrank to {offset} bytes while sending"
                )
                return
            if offset + len(chunk) > self._hashed:
                self._hasher.update(memoryview(chunk)[self._hashed - offset :])
                self._hashed = offset + len(chunk)
            if not _safe_send(self._send, Data(self.transfer_id, offset), chunk):
                return  # connection down: the next sync rewinds us
            self.bytes_sent += len(chunk)
            self._next = offset + len(chunk)
        if self._acked >= self.size and not self._end_sent:
            self._end_sent = _safe_send(
                self._send, DataEnd(self.transfer_id, self.size, self._hasher.hexdigest())
            )

    def _give_up(self) -> None:
        self.cancel(ErrorCode.IO_ERROR, "no progress: transfer abandoned")

    def _fail(self, code: str, message: str) -> None:
        self._close()
        if not self.done.called:
            self.done.errback(Failure(TransferError(code, message)))

    def _close(self) -> None:
        self._watchdog.stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class TransferReceiver:
    """The side that writes the file.

    :param final_path: where the file lands once verified (already checked
        by the owner: this class trusts it).
    :param request_resend: called when data stops arriving for
        ``sync_after`` seconds (the host re-sends its ``get``); None on the
        side where the sender drives (the agent during a ``put``).
    :attr done: fires with a :class:`TransferResult` once the file is in
        place; errbacks with :class:`TransferError`.
    """

    def __init__(
        self,
        transfer_id: str,
        final_path: str,
        send: SendFunction,
        clock: IReactorTime,
        max_size: int | None = None,
        mode: int = 0o644,
        request_resend: Callable[[int], None] | None = None,
        sync_after: float = DEFAULT_SYNC_AFTER,
        give_up_after: float = DEFAULT_GIVE_UP_AFTER,
    ) -> None:
        self.transfer_id = transfer_id
        self.final_path = final_path
        self.temp_path = temp_path_for(final_path, transfer_id)
        self.max_size = max_size
        self._send = send
        self.done: defer.Deferred[TransferResult] = defer.Deferred()
        self._result: TransferResult | None = None
        self._fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode & 0o777)
        self.offset = 0
        self._hasher = hashlib.sha256()
        self._gap_reported_at = -1
        self._request_resend = request_resend
        #: Payload bytes received, duplicates included (how much resuming saved).
        self.bytes_received = 0
        self._watchdog = _Watchdog(
            clock,
            sync_after,
            give_up_after,
            (lambda: request_resend(self.offset)) if request_resend else (lambda: None),
            lambda: self.fail(ErrorCode.IO_ERROR, "no data: transfer abandoned"),
        )
        self._watchdog.start()

    @property
    def finished(self) -> bool:
        return self.done.called

    def on_data(self, message: Data, payload: bytes) -> None:
        """A chunk arrived; write it if it is the next one, ack, or report a gap."""
        if self.done.called:
            return
        self.bytes_received += len(payload)
        if message.offset == self.offset:
            new_offset = self.offset + len(payload)
            if self.max_size is not None and new_offset > self.max_size:
                self.fail(ErrorCode.TOO_LARGE, f"file exceeds the {self.max_size}-byte limit")
                return
            try:
                view = memoryview(payload)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
            except OSError as problem:
                self.fail(ErrorCode.IO_ERROR, f"cannot write {self.final_path}: {problem.strerror}")
                return
            self._hasher.update(payload)
            self.offset = new_offset
            self._watchdog.progress()
            _safe_send(self._send, DataAck(self.transfer_id, self.offset))
        elif message.offset > self.offset and self._gap_reported_at != self.offset:
            self._gap_reported_at = self.offset
            _safe_send(self._send, DataAck(self.transfer_id, self.offset, sync=True))

    def resync(self) -> None:
        """Our connection came back: ask the sender to go on from our offset."""
        if not self.done.called and self._request_resend is not None:
            self._request_resend(self.offset)

    def on_sync(self, message: DataSync | None = None) -> None:
        """The sender asks where to resume."""
        if self.done.called:
            if self._result is not None:
                self._confirm()
            return
        self._gap_reported_at = -1
        _safe_send(self._send, DataAck(self.transfer_id, self.offset, sync=True))

    def on_end(self, message: DataEnd) -> None:
        """All data was sent: verify, commit, confirm."""
        if self._result is not None:
            self._confirm()  # our confirmation was lost: say it again
            return
        if self.done.called:
            return
        if message.size != self.offset:
            self.on_sync()  # we are missing data the sender thinks we have
            return
        digest = self._hasher.hexdigest()
        if digest != message.sha256:
            self.fail(
                ErrorCode.CHECKSUM,
                f"sha256 of the received bytes {digest} != sender's {message.sha256}",
            )
            return
        try:
            os.close(self._fd)
            self._fd = -1
            os.replace(self.temp_path, self.final_path)
        except OSError as problem:
            self.fail(ErrorCode.IO_ERROR, f"cannot commit {self.final_path}: {problem.strerror}")
            return
        self._watchdog.stop()
        self._result = TransferResult(self.offset, digest)
        self._confirm()
        self.done.callback(self._result)

    def on_failed(self, message: TransferFailed) -> None:
        """The sender gave up."""
        self._abort()
        if not self.done.called:
            self.done.errback(Failure(TransferError(message.code, message.message)))

    def fail(self, code: str, message: str) -> None:
        """Abandon the transfer, remove the partial file and tell the sender."""
        if self.done.called:
            return
        self._abort()
        _safe_send(self._send, TransferFailed(self.transfer_id, code, message))
        self.done.errback(Failure(TransferError(code, message)))

    def _confirm(self) -> None:
        assert self._result is not None
        _safe_send(
            self._send, TransferDone(self.transfer_id, self._result.size, self._result.sha256)
        )

    def _abort(self) -> None:
        self._watchdog.stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass

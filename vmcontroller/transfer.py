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
  the destination and acknowledges them cumulatively (:class:`DataAck` with
  the next offset it needs): once per reactor turn, for every chunk that
  turn delivered, and at the latest every ``ack_every`` chunks.  A socket
  read of 1 MiB carries up to four 256 KiB chunks, so this sends a fraction
  of the acks one per chunk would; each ack is a frame that the sender's
  process, the broker and the receiver's process all parse and route, on a
  relay that is CPU-bound.  A window larger than ``ack_every`` chunks never
  drains before an ack.  A chunk from the future (one was lost) draws one
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
* Hashing runs on a thread of its own when the owner passes a
  :class:`ThreadedSha256` (the host and agent do, with their reactor):
  sha256 costs about as much CPU as the rest of the relay together, and
  hashlib releases the GIL, so the reactor thread keeps moving bytes while
  another core hashes them.  Tests on a Clock use the default,
  :class:`Sha256`, which hashes in place.

Only the standard library and Twisted: the guest agent uses this module.
"""

# -*- test-case-name: tests.unit.vmcontroller.test_transfer -*-

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

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
    "DEFAULT_ACK_EVERY",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_WINDOW",
    "HASH_BATCH_BYTES",
    "Sha256",
    "ThreadedSha256",
    "digest_for",
    "TransferError",
    "TransferReceiver",
    "TransferResult",
    "TransferSender",
    "temp_path_for",
]

#: Bytes per data message unless configured otherwise.
DEFAULT_CHUNK_SIZE = 256 * 1024
#: Chunks a sender may have unacknowledged at once.
DEFAULT_WINDOW = 16
#: Chunks a receiver takes before it acknowledges without waiting for the
#: end of the reactor turn (a quarter of the default window).
DEFAULT_ACK_EVERY = 4
#: Bytes a :class:`ThreadedSha256` gathers before waking its thread.
HASH_BATCH_BYTES = 1024 * 1024
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


class Digest(Protocol):
    """An incremental sha256 whose result may come later (see the two below)."""

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data``; the caller must not change it afterwards."""

    def hexdigest(self) -> defer.Deferred[str]:
        """Fires with the hex digest of everything added so far; no updates after."""

    def close(self) -> None:
        """Release what the digest holds (idempotent)."""


class Sha256:
    """Hashes in the caller's thread; ``hexdigest`` has already fired."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)

    def hexdigest(self) -> defer.Deferred[str]:
        return defer.succeed(self._hash.hexdigest())

    def close(self) -> None:
        pass


class ThreadedSha256:
    """Hashes on a worker thread, in order; the result comes back through the reactor.

    ``update`` only keeps a reference to ``data`` (no copy: the caller
    hands over buffers it will not touch again), so the reactor thread
    never waits for the hash.  References are handed to the thread in
    batches of ``batch_bytes``: each hand-over wakes the thread, which
    then takes the GIL from the reactor thread, and that costed the agent
    a fifth of its reactor time with one hand-over per 256 KiB chunk.  One
    thread per transfer, started on first use and ended by
    :meth:`hexdigest` or :meth:`close`.

    :param call_from_thread: the reactor's ``callFromThread``.
    :param batch_bytes: bytes gathered before the thread is woken.
    """

    _DONE = object()

    def __init__(
        self, call_from_thread: Callable[..., Any], batch_bytes: int = HASH_BATCH_BYTES
    ) -> None:
        self._call_from_thread = call_from_thread
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._result: defer.Deferred[str] | None = None
        self.batch_bytes = batch_bytes
        self._batch: list[bytes | bytearray | memoryview] = []
        self._batch_size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._result is not None:
            raise RuntimeError("sha256 already finished")
        self._batch.append(data)
        self._batch_size += len(data)
        if self._batch_size >= self.batch_bytes:
            self._hand_over()

    def hexdigest(self) -> defer.Deferred[str]:
        if self._result is None:
            self._result = defer.Deferred()
            self._hand_over()
            if self._thread is None:  # nothing was hashed: no thread needed
                self._result.callback(hashlib.sha256().hexdigest())
            else:
                self._queue.put(self._result)
        return _chain(self._result)

    def _hand_over(self) -> None:
        """Give the gathered buffers to the thread (started on first use)."""
        if not self._batch:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
            self._thread.start()
        self._queue.put(self._batch)
        self._batch, self._batch_size = [], 0

    def close(self) -> None:
        self._batch, self._batch_size = [], 0
        if self._result is None:
            self._result = defer.Deferred()  # never fires: the transfer is over
            if self._thread is not None:
                self._queue.put(self._DONE)

    def _run(self) -> None:
        digest = hashlib.sha256()
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, defer.Deferred):
                self._call_from_thread(item.callback, digest.hexdigest())
                return
            for data in item:
                digest.update(data)


def digest_for(clock: Any) -> Digest:
    """A :class:`ThreadedSha256` if ``clock`` is a reactor with threads, else a :class:`Sha256`.

    A :class:`twisted.internet.task.Clock` has no ``callFromThread``: tests
    driven by one stay single-threaded and deterministic.
    """
    call_from_thread = getattr(clock, "callFromThread", None)
    return ThreadedSha256(call_from_thread) if call_from_thread else Sha256()


def _chain(deferred: defer.Deferred[str]) -> defer.Deferred[str]:
    """A new Deferred with ``deferred``'s result, leaving ``deferred`` reusable."""
    copy: defer.Deferred[str] = defer.Deferred()
    deferred.addCallback(lambda value: (copy.callback(value), value)[1])
    return copy


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
    :param fd: the file already open for reading (the sender owns it from
        now on); the agent opens it confined to its work directory, so a
        symlink swapped in later cannot redirect the read.  ``path`` then
        only names it in messages.
    :param when_drained: ``when_drained(callback)``: True if the connection
        takes a chunk straight to the kernel now, else False and
        ``callback()`` once it does (see
        :meth:`vmcontroller.stomp.client.StompSession.when_drained`).  A chunk
        is sent only then, within the window: queued behind others in
        Twisted's buffer it would be copied and sent in smaller pieces.
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
        digest: Digest | None = None,
        fd: int | None = None,
        when_drained: Callable[[Callable[[], None]], bool] | None = None,
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
        # OSError propagates: the owner reports it
        self._fd = fd if fd is not None else os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size
        self._hasher: Digest = digest or Sha256()
        self._hashed = 0  # bytes fed to the hasher, always a prefix of the file
        self._sha256: str | None = None  # once every byte was hashed
        self._end_pending = False  # DataEnd waits for the hash
        self._acked = 0
        self._next = 0
        self._started = False
        self._end_sent = False
        self._when_drained = when_drained
        self._awaiting_drain = False  # a when_drained callback is pending
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
        if message.sha256 != self._sha256 or message.size != self.size:
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
        self._awaiting_drain = False  # a wait from a lost connection never ends
        self._watchdog.progress()
        self._acked = max(self._acked, offset)
        self._next = offset
        self._end_sent = False
        self._pump()

    def _hashed_all(self, sha256: str) -> None:
        self._sha256 = sha256
        self._end_pending = False
        self._pump()

    def _drained(self) -> None:
        self._awaiting_drain = False
        self._pump()

    def _pump(self) -> None:
        if not self._started or self.done.called or self._awaiting_drain:
            return
        limit = self._acked + self.window * self.chunk_size
        while self._next < self.size and self._next < limit:
            if self._when_drained is not None and not self._when_drained(self._drained):
                self._awaiting_drain = True
                return
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
            if self._sha256 is None:
                if not self._end_pending:
                    self._end_pending = True
                    self._hasher.hexdigest().addCallback(self._hashed_all)
                return
            self._end_sent = _safe_send(
                self._send, DataEnd(self.transfer_id, self.size, self._sha256)
            )

    def _give_up(self) -> None:
        self.cancel(ErrorCode.IO_ERROR, "no progress: transfer abandoned")

    def _fail(self, code: str, message: str) -> None:
        self._close()
        if not self.done.called:
            self.done.errback(Failure(TransferError(code, message)))

    def _close(self) -> None:
        self._watchdog.stop()
        self._hasher.close()
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
    :param ack_every: chunks written before an ack goes out at once; fewer
        are acknowledged together at the end of the reactor turn
        (``clock.callLater(0)``).
    :param dir_fd: descriptor of the target's directory (the receiver owns
        it from now on): the temporary file is created, renamed onto the last
        component of ``final_path`` and removed relative to it, never by a
        path a swapped-in symlink could redirect (the agent's confinement).
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
        digest: Digest | None = None,
        ack_every: int = DEFAULT_ACK_EVERY,
        dir_fd: int | None = None,
    ) -> None:
        if ack_every < 1:
            raise ValueError(f"ack_every must be >= 1 chunk, got {ack_every!r}")
        self.transfer_id = transfer_id
        self.final_path = final_path
        self.temp_path = temp_path_for(final_path, transfer_id)
        self.max_size = max_size
        self._send = send
        self.done: defer.Deferred[TransferResult] = defer.Deferred()
        self._result: TransferResult | None = None
        self._dir_fd = dir_fd
        if dir_fd is not None:  # names relative to it, never through a symlink
            self._final_name = os.path.basename(final_path)
            self._temp_name = os.path.basename(self.temp_path)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        else:
            self._final_name, self._temp_name = final_path, self.temp_path
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            self._fd = os.open(self._temp_name, flags, mode & 0o777, dir_fd=dir_fd)
        except OSError:
            self._close_dir()
            raise
        self._temp_exists = True  # until renamed into place or removed
        self.offset = 0
        self._hasher: Digest = digest or Sha256()
        self._verifying = False  # DataEnd arrived, waiting for our hash
        self._gap_reported_at = -1
        self._request_resend = request_resend
        self._clock = clock
        self.ack_every = ack_every
        self._unacked_chunks = 0  # written since the last ack
        self._ack_call: Any = None  # the end-of-turn ack, while scheduled
        #: Payload bytes received, duplicates included (how much resuming saved).
        self.bytes_received = 0
        #: In-order acks sent (sync answers not included).
        self.acks_sent = 0
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
            self._unacked_chunks += 1
            if self._unacked_chunks >= self.ack_every:
                self._ack()
            elif self._ack_call is None:
                self._ack_call = self._clock.callLater(0, self._ack)
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
        if not self._verifying:
            self._verifying = True
            self._hasher.hexdigest().addCallback(self._verify, message)

    def _verify(self, digest: str, message: DataEnd) -> None:
        """Our hash of every written byte is ready: compare, commit, confirm."""
        if self.done.called:
            return
        if digest != message.sha256:
            self.fail(
                ErrorCode.CHECKSUM,
                f"sha256 of the received bytes {digest} != sender's {message.sha256}",
            )
            return
        try:
            os.close(self._fd)
            self._fd = -1
            os.replace(
                self._temp_name, self._final_name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd
            )
            self._temp_exists = False
            self._close_dir()
        except OSError as problem:
            self.fail(ErrorCode.IO_ERROR, f"cannot commit {self.final_path}: {problem.strerror}")
            return
        self._watchdog.stop()
        self._cancel_ack()
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

    def _ack(self) -> None:
        """Acknowledge every chunk written so far, in one message."""
        self._cancel_ack()
        self._unacked_chunks = 0
        if not self.done.called:
            self.acks_sent += 1
            _safe_send(self._send, DataAck(self.transfer_id, self.offset))

    def _cancel_ack(self) -> None:
        if self._ack_call is not None:
            if self._ack_call.active():
                self._ack_call.cancel()
            self._ack_call = None

    def _confirm(self) -> None:
        assert self._result is not None
        _safe_send(
            self._send, TransferDone(self.transfer_id, self._result.size, self._result.sha256)
        )

    def _abort(self) -> None:
        self._watchdog.stop()
        self._cancel_ack()
        self._hasher.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._temp_exists:
            self._temp_exists = False
            try:
                os.unlink(self._temp_name, dir_fd=self._dir_fd)
            except FileNotFoundError:
                pass
        self._close_dir()

    def _close_dir(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

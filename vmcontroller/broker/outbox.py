"""Per-connection sending: a bounded queue drained by one writer thread.

coilmq delivers by calling ``sendall`` on the *producer's* thread while a
module-global lock is held, so one slow consumer stalls every producer.
Here a producer only appends a frame to the consumer's outbox; the
consumer's writer thread encodes whatever has piled up and sends it with
one write, so bursts become large writes.  The queue is bounded in bytes.
Queue delivery checks :meth:`Outbox.has_room` first and leaves messages in
their queue for a full outbox (refilled on :attr:`Outbox.on_drain`), so a
slow consumer never blocks its producers; topic delivery and broker frames
block (with a deadline) only the producer feeding *that* consumer, and a
consumer stuck past the deadline is disconnected.  The writer also sends
heart-beat EOLs when the connection has been quiet.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

from vmcontroller.stomp.codec import HEARTBEAT, Frame, encode_head

__all__ = ["Outbox", "OutboxClosed"]

log = logging.getLogger(__name__)

# Largest number of bytes handed to one write call.
_MAX_WRITE = 1024 * 1024
# Buffers per sendmsg() call (the kernel's IOV_MAX is 1024).
_MAX_BUFFERS = 900
# Bodies from this size on are sent from where they are, not copied.
_LARGE_BODY = 8 * 1024


#: What a frame's headers count against the outbox limit, roughly.
FRAME_OVERHEAD = 256


def item_size(item: Frame | bytes) -> int:
    """What a queued item counts against the outbox limit (bytes)."""
    return len(item) if isinstance(item, bytes) else len(item.body) + FRAME_OVERHEAD


class OutboxClosed(Exception):
    """The connection is closing: nothing more can be queued."""


class Outbox:
    """Frames waiting to be written to one client socket.

    :param sock: the connected client socket.
    :param version: negotiated STOMP version (decides header escaping);
        settable once CONNECT is processed.
    :param max_bytes: queued bytes beyond which :meth:`put` blocks.
    :param put_timeout: seconds a blocked :meth:`put` waits before the
        consumer is declared stuck and its connection closed.
    :param clock: monotonic time source, for the heart-beat schedule.
    :param name: thread name, for debugging.
    """

    def __init__(
        self,
        sock: socket.socket,
        version: str = "1.0",
        max_bytes: int = 8 * 1024 * 1024,
        put_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "stomp-writer",
    ) -> None:
        self.sock = sock
        self.version = version
        self.max_bytes = max_bytes
        self.put_timeout = put_timeout
        self.clock = clock
        self.heartbeat_interval: float | None = None
        self._items: list[Frame | bytes] = []
        self._queued = 0  # bytes of the frames in _items
        self._reserved = 0  # bytes reserved for frames about to be put
        self._closing = False
        self._cond = threading.Condition(threading.Lock())
        self._last_write = clock()
        #: Called on the writer thread when the queue has just been emptied
        #: after :meth:`want_drain_notice` (the broker refills from its queues).
        self.on_drain: Callable[[], None] | None = None
        self._drain_wanted = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def has_room(self) -> bool:
        """Whether a frame queued now would be sent without waiting (approximate)."""
        return self._queued + self._reserved <= self.max_bytes and not self._closing

    def want_drain_notice(self) -> None:
        """Ask for one :attr:`on_drain` call once the queue empties.

        Queue delivery skips a full outbox (the message waits in its queue)
        and asks for this, so producers never block on a slow consumer.
        """
        self._drain_wanted = True

    def put(self, item: Frame | bytes) -> None:
        """Queue a frame (or raw bytes) for sending.

        :raises OutboxClosed: if the connection is closing or the consumer
            stayed stuck for ``put_timeout`` seconds (the connection is then
            closed).
        """
        size = item_size(item)
        with self._cond:
            if self._closing:
                raise OutboxClosed()
            if self._wait_for_room():
                self._append(item, size)
                return
            if self._closing:
                raise OutboxClosed()
            self._closing = True
            self._cond.notify_all()
        # Stuck: the writer is blocked in a send the client never reads, and
        # only shutting the socket down frees it (and the reader).
        log.warning("consumer stuck for %ss: closing its connection", self.put_timeout)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise OutboxClosed()

    def reserve(self, body_size: int) -> None:
        """Book room for a frame with a ``body_size`` body; :meth:`put_reserved` follows.

        Queue delivery reserves while it holds the queue manager's lock, so
        :meth:`has_room` turns False as soon as enough is on its way.
        """
        with self._cond:
            self._reserved += body_size + FRAME_OVERHEAD

    def put_reserved(self, item: Frame | bytes) -> None:
        """Queue a frame whose room was booked with :meth:`reserve`: never waits.

        :raises OutboxClosed: if the connection is closing.
        """
        size = item_size(item)
        with self._cond:
            self._reserved = max(0, self._reserved - size)
            if self._closing:
                raise OutboxClosed()
            self._append(item, size)

    def _append(self, item: Frame | bytes, size: int) -> None:
        self._items.append(item)
        self._queued += size
        if len(self._items) == 1:
            self._cond.notify_all()

    def _wait_for_room(self) -> bool:
        """With the lock held: wait until the queue is under its limit (False: gave up)."""
        deadline = time.monotonic() + self.put_timeout
        while self._queued + self._reserved > self.max_bytes and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._cond.wait(remaining)
        return not self._closing

    def set_heartbeat(self, interval: float | None) -> None:
        """Send an EOL whenever nothing was written for ``interval`` seconds."""
        with self._cond:
            self.heartbeat_interval = interval
            self._cond.notify_all()

    def close(self) -> None:
        """Flush what is queued, then shut the socket down for writing."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the writer thread to end."""
        self._thread.join(timeout)

    @property
    def closing(self) -> bool:
        return self._closing

    def _next_batch(self) -> list[Frame | bytes] | None:
        with self._cond:
            while not self._items and not self._closing:
                interval = self.heartbeat_interval
                if interval is None:
                    self._cond.wait()
                    continue
                due = self._last_write + interval - self.clock()
                if due <= 0:
                    self._items.append(HEARTBEAT)
                    break
                self._cond.wait(due)
            if not self._items:
                return None  # closing and flushed
            batch, self._items = self._items, []
            self._queued = 0
            self._cond.notify_all()  # wake producers blocked on a full outbox
            return batch

    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    break
                # _queued is 0 now: let the broker refill while this batch is written.
                if self._drain_wanted and self.on_drain is not None:
                    self._drain_wanted = False
                    self.on_drain()
                self._write(batch)
        except OSError as error:
            log.debug("writer stopped: %s", error)
        except Exception:
            log.exception("writer failed: closing the connection")
        finally:
            with self._cond:
                self._closing = True
                self._items.clear()
                self._cond.notify_all()
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _write(self, batch: list[Frame | bytes]) -> None:
        """Send a batch: small frames packed together, large bodies never copied."""
        version = self.version
        buffers: list[bytes] = []
        packed = bytearray()
        size = 0
        for item in batch:
            if isinstance(item, bytes):
                packed += item
                continue
            try:
                head = encode_head(item, version)
            except ValueError:
                # A broker bug, not the client's: drop this frame, keep the connection.
                log.exception("cannot encode a %s frame for STOMP %s", item.command, version)
                continue
            if len(item.body) < _LARGE_BODY:
                packed += head
                packed += item.body
                packed += b"\x00"
            else:
                if packed:
                    buffers.append(bytes(packed))
                    packed.clear()
                buffers += (head, item.body, b"\x00")
                size += len(item.body)
            if size + len(packed) >= _MAX_WRITE or len(buffers) > _MAX_BUFFERS:
                if packed:
                    buffers.append(bytes(packed))
                    packed.clear()
                _send_all(self.sock, buffers)
                buffers, size = [], 0
        if packed:
            buffers.append(bytes(packed))
        if buffers:
            _send_all(self.sock, buffers)
        self._last_write = self.clock()


def _send_all(sock: socket.socket, buffers: list[bytes]) -> None:
    """sendmsg() every buffer, resuming after partial writes."""
    if len(buffers) == 1:
        sock.sendall(buffers[0])
        return
    views = [memoryview(b) for b in buffers]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]

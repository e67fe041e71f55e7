"""One client connection of the embedded broker (a coilmq request handler).

``BrokerRequestHandler`` subclasses coilmq's ``StompRequestHandler`` and
swaps its ``FrameBuffer`` for :class:`CodecFrameBuffer`, which runs our
:class:`~vmcontroller.stomp.codec.FrameParser`.  That fixes coilmq 1.1.0's
parsing defects (frames split across reads, ``:`` in header values,
heart-beat EOLs, a buffer that never shrinks) and adds size limits: an
oversized or malformed frame gets an ERROR frame and this connection is
closed while the broker keeps serving everyone else.

Threads: the socketserver thread running :meth:`handle` reads and
processes frames; an :class:`~vmcontroller.broker.outbox.Outbox` thread
writes.  Nothing else touches the socket.
"""

from __future__ import annotations

import itertools
import logging
import select
import socket
import uuid
from collections.abc import Iterator

from coilmq.engine import StompEngine
from coilmq.exception import ProtocolError
from coilmq.protocol import protocol_class_from_first_frame
from coilmq.server.socket_server import StompRequestHandler
from coilmq.util.frames import Frame as CoilFrame

from vmcontroller.broker.credentials import Login
from vmcontroller.broker.outbox import Outbox, OutboxClosed
from vmcontroller.broker.protocol import PROTOCOLS
from vmcontroller.stomp.codec import DIRECT_BODY_SIZE, HEARTBEAT, Frame, FrameError, FrameParser
from vmcontroller.stomp.sockets import enlarge_buffers

__all__ = ["BrokerRequestHandler", "CodecFrameBuffer"]

log = logging.getLogger(__name__)

_connection_numbers = itertools.count(1)

# Bytes asked of each recv(): large, so a burst of frames costs few syscalls.
_RECV_SIZE = 256 * 1024
# Bytes asked of the recv() after a large body: a file chunk usually
# follows, and this reads its header block (plus a little body) without
# pulling the rest of the body into the shared buffer, from which the parser
# would have to copy it; the body then goes straight into its own buffer.
_HEAD_RECV_SIZE = 8 * 1024
# The parser stops after these so the negotiated version applies to what follows.
_PAUSE_AFTER = frozenset({"CONNECT", "STOMP"})


class CodecFrameBuffer:
    """coilmq's ``FrameBuffer`` interface on top of our :class:`FrameParser`.

    ``append(data)`` then iterate: yields ``coilmq.util.frames.Frame``
    objects (what coilmq's engine and stores expect).  Raises
    :class:`~vmcontroller.stomp.codec.FrameError` on bad input.
    """

    def __init__(self, parser: FrameParser) -> None:
        self.parser = parser
        self._ready: list[Frame] = []
        #: The last frame parsed had a large (directly received) body.
        self.last_was_large = False

    def append(self, data: bytes) -> None:
        """Parse ``data``; on FrameError, frames completed before it stay ready."""
        try:
            frames = self.parser.feed(data)
        except FrameError as error:
            self._ready.extend(error.frames)
            raise
        if frames:
            self.last_was_large = len(frames[-1].body) >= DIRECT_BODY_SIZE
            self._ready.extend(frames)

    def body_sink(self) -> memoryview | None:
        """Where a large body being received may be read into (see the parser)."""
        return self.parser.body_sink()

    def body_received(self, count: int) -> None:
        """``count`` bytes were read into :meth:`body_sink`; like :meth:`append`."""
        try:
            frames = self.parser.body_received(count)
        except FrameError as error:
            self._ready.extend(error.frames)
            raise
        if frames:
            self.last_was_large = len(frames[-1].body) >= DIRECT_BODY_SIZE
            self._ready.extend(frames)

    def buffer_len(self) -> int:
        return self.parser.buffered

    def __iter__(self) -> Iterator[CoilFrame]:
        ready, self._ready = self._ready, []
        for frame in ready:
            coil_frame = CoilFrame(frame.command, frame.headers)
            coil_frame.body = frame.body  # CoilFrame() would turn b"" into ""
            yield coil_frame


class BrokerRequestHandler(StompRequestHandler):
    """Reads, checks and dispatches one client's frames (see module doc)."""

    #: The account this connection logged in with (set by CONNECT).
    account: Login | None = None

    def setup(self) -> None:
        super().setup()
        config = self.server.config
        self.number = next(_connection_numbers)
        self.session_id = str(uuid.uuid4())
        self.version = "1.0"
        self.subscriptions: dict[str, str] = {}
        self.receive_timeout: float | None = None
        self.buffer = CodecFrameBuffer(
            FrameParser(
                version="1.0",
                max_frame_size=config.max_frame_size,
                max_header_bytes=config.max_header_bytes,
                max_headers=config.max_headers,
                pause_after=_PAUSE_AFTER,
            )
        )
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        enlarge_buffers(self.request)
        self.request.settimeout(None)
        self.last_seen = config.clock()
        self.outbox = Outbox(
            self.request,
            max_bytes=config.outbox_max_bytes,
            put_timeout=config.slow_consumer_timeout,
            clock=config.clock,
            name=f"vmc-broker-writer-{self.number}",
        )
        self.outbox.on_drain = self._refill
        self.engine: StompEngine | None = None
        self.server.register(self)

    def handle(self) -> None:
        try:
            for frame in self.iter_frames():
                if self.engine is None:
                    self._start_engine(frame)
                    if self.engine is None:
                        break
                self.engine.process_frame(frame)
                if self.outbox.closing:
                    break
        finally:
            if self.engine is not None:
                self.engine.unbind()

    def finish(self) -> None:
        self.outbox.close()
        self.outbox.join(self.server.config.close_timeout)
        self.server.unregister(self)

    def iter_frames(self) -> Iterator[CoilFrame]:
        """Frames from the socket until EOF, an error, or a missed deadline.

        Deadlines (CONNECT within ``connect_timeout``, client heart-beats)
        are waited for with poll(), never with a socket timeout: the writer
        thread shares the socket and must not time out on a slow reader.
        """
        clock = self.server.config.clock
        sock = self.request
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        # recv_into a reused buffer: recv(256 KiB) would allocate (mmap) and
        # shrink a fresh 256 KiB object on every call, ~10 us each.
        buffer = bytearray(_RECV_SIZE)
        view = memoryview(buffer)
        after_body = False  # the last read filled or ended a large body
        while not self.outbox.closing:
            wait = self._read_deadline()
            if wait is not None and not poller.poll(max(0.0, wait - clock()) * 1000):
                if clock() < wait:
                    continue
                if self.engine is None:
                    self.fail("no CONNECT frame received in time")
                else:
                    log.info("connection %s: client heart-beats stopped", self.number)
                    self.close()
                return
            # A large body being received goes from the kernel straight into
            # the buffer that becomes the frame's body (and is sent on from
            # there): no copy of file chunks in the broker's user space.
            sink = self.buffer.body_sink()
            if sink is not None:
                target = sink
            else:
                target = view[:_HEAD_RECV_SIZE] if after_body else view
            try:
                size = sock.recv_into(target)
            except OSError:
                return
            finally:
                if sink is not None:
                    sink.release()
            if not size:
                return
            self.last_seen = clock()
            if sink is not None:
                yield from self._frames_from(b"", body_bytes=size)
            else:
                yield from self._frames_from(view[:size])
            # After a body, and after the read that brought its NUL (the next
            # chunk's header may not have come yet), read a header block: a
            # full read would carry the next body through the shared buffer.
            after_body = sink is not None or self.buffer.last_was_large

    def _frames_from(self, data, body_bytes: int = 0) -> Iterator[CoilFrame]:
        """Frames completed by ``data`` (or by ``body_bytes`` read into the body sink).

        Resumes parsing after a CONNECT pause: the parser pauses after
        CONNECT so that the frames pipelined behind it are parsed only once
        :meth:`_start_engine` has set the version.
        """
        while True:
            try:
                if body_bytes:
                    self.buffer.body_received(body_bytes)
                    body_bytes = 0
                else:
                    self.buffer.append(data)
            except FrameError as error:
                yield from self.buffer  # frames completed before the bad bytes
                self.fail(error.message, code=error.code)
                return
            ready = list(self.buffer)
            yield from ready
            if not ready or ready[-1].cmd not in _PAUSE_AFTER or self.outbox.closing:
                return
            data = b""

    def _read_deadline(self) -> float | None:
        """When silence from the client becomes fatal (clock time), or None."""
        if self.engine is None:
            return self.last_seen + self.server.config.connect_timeout
        if self.receive_timeout:
            return self.last_seen + self.receive_timeout
        return None

    def _start_engine(self, first: CoilFrame) -> None:
        try:
            protocol_class = PROTOCOLS[protocol_class_from_first_frame(first)]
        except ProtocolError as error:
            self.fail(str(error), first)
            return
        self.version = protocol_class.version
        self.buffer.parser.version = self.version
        self.outbox.version = self.version
        self.engine = StompEngine(
            connection=self,
            authenticator=self.server.authenticator,
            queue_manager=self.server.queue_manager,
            topic_manager=self.server.topic_manager,
            protocol=protocol_class,
        )

    # used by the protocol adaptors and managers ---------------------------

    def deliver(self, frame: Frame) -> None:
        """Queue a MESSAGE for this client (raises OutboxClosed when closing)."""
        self.outbox.put(frame)

    def deliver_reserved(self, frame: Frame) -> None:
        """Queue a MESSAGE whose room was reserved (never waits)."""
        self.outbox.put_reserved(frame)

    def reserve(self, body_size: int) -> None:
        self.outbox.reserve(body_size)

    def has_room(self) -> bool:
        return self.outbox.has_room()

    def want_drain_notice(self) -> None:
        self.outbox.want_drain_notice()

    def _refill(self) -> None:
        """Writer thread, outbox just emptied: take what waits in our queues."""
        queues = [d for d in list(self.subscriptions.values()) if d.startswith("/queue/")]
        if queues:
            self.server.queue_manager.pump(queues)

    def send_control(self, command: str, headers: dict[str, str], body: bytes = b"") -> None:
        """Queue a broker-generated frame (CONNECTED, RECEIPT, ERROR)."""
        try:
            self.outbox.put(Frame(command, headers, body))
        except OutboxClosed:
            pass

    def fail(self, message: str, frame: CoilFrame | None = None, code: str | None = None) -> None:
        """Send an ERROR frame about ``frame`` and close the connection."""
        headers = {"message": message.replace("\n", " ")[:200], "content-type": "text/plain"}
        if code:
            headers["code"] = code
        body = message
        if frame is not None:
            receipt = frame.headers.get("receipt")
            if receipt:
                headers["receipt-id"] = receipt
            body = f"{message}\n(in reply to a {frame.cmd} frame)"
        log.info("connection %s: ERROR %s", self.number, message)
        self.send_control("ERROR", headers, body.encode("utf-8"))
        self.close()

    def close(self) -> None:
        """Flush queued frames, then close (the read loop ends at EOF)."""
        self.outbox.close()

    def set_send_heartbeat(self, interval: float) -> None:
        self.outbox.set_heartbeat(interval)

    def set_receive_heartbeat(self, interval: float) -> None:
        # Tolerate one late beat, as coilmq and most brokers do.
        self.receive_timeout = 2 * interval

    # coilmq StompConnection API ---------------------------------------------

    def send_frame(self, frame: CoilFrame) -> None:
        """coilmq-built frames (from inherited code paths) go through our encoder."""
        headers = {str(k): str(v) for k, v in frame.headers.items() if k != "content-length"}
        body = (
            frame.body if isinstance(frame.body, (bytes, bytearray)) else str(frame.body).encode()
        )
        self.send_control(frame.cmd, headers, body)

    def send_heartbeat(self) -> None:
        try:
            self.outbox.put(HEARTBEAT)
        except OutboxClosed:
            pass

    def shutdown_socket(self) -> None:
        """Called by the server on stop: unblock the reader and writer."""
        self.outbox.close()
        try:
            self.request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

"""A Twisted STOMP 1.1/1.2 client, and a reconnecting session built on it.

:class:`StompClientProtocol` speaks one connection: CONNECT/CONNECTED
(offering 1.2 and 1.1, whichever the broker prefers: RabbitMQ, the embedded
broker and coilmq all differ), heart-beats both ways, SUBSCRIBE, SEND and
ACK.  Heart-beats matter more than usual here: after a VM is restored from a
snapshot, its TCP connection to the broker is dead but nothing tells the
guest; only the missing heart-beats do, and the protocol then aborts the
connection so the session reconnects.

:class:`StompSession` keeps a connection up with
:class:`twisted.application.internet.ClientService` (exponential back-off
with jitter), replays the subscriptions on every new connection and tells
listeners when the connection comes and goes.

Imports only the standard library, Twisted and the project's pure codec,
because the guest agent uses it inside the appliance.
"""

# -*- test-case-name: tests.unit.vmcontroller.test_stomp_client -*-

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet import defer, error, main
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from vmcontroller.stomp.codec import (
    DIRECT_BODY_SIZE,
    HEARTBEAT,
    Frame,
    FrameError,
    FrameParser,
    encode_frame,
    encode_head,
)
from vmcontroller.stomp.sockets import enlarge_buffers, write_now, write_parts_now

__all__ = [
    "NotConnectedError",
    "StompClientProtocol",
    "StompConfig",
    "StompError",
    "StompSession",
    "backoff_delay",
]

log = Logger()

#: Bytes read from the socket per reactor wake-up.
READ_SIZE = 1024 * 1024
#: Bytes read right after a large body was received in place: the next
#: chunk's header block, so its body is received in place too, not copied
#: out of a large read.
HEAD_READ_SIZE = 8 * 1024

#: A frame handler: gets each MESSAGE frame of one subscription.
MessageHandler = Callable[[Frame], None]


class StompError(Exception):
    """The broker refused us (an ERROR frame), or the connection is unusable."""


class NotConnectedError(StompError, ConnectionError):
    """A frame was to be sent while no broker connection is up."""


@dataclass(frozen=True)
class StompConfig:
    """How to log in to a broker.

    :param vhost: the ``host`` header: RabbitMQ wants its vhost (``/``), the
        embedded broker ignores it, coilmq wants its fqdn.
    :param heartbeat: seconds between heart-beats we offer to send and want
        to receive; 0 disables them.  A peer silent for ``heartbeat_grace``
        times the negotiated interval is declared dead.
    :param max_frame_size: largest frame accepted from the broker.
    """

    login: str
    passcode: str
    vhost: str = "/"
    heartbeat: float = 10.0
    heartbeat_grace: float = 2.5
    max_frame_size: int = 16 * 1024 * 1024


def backoff_delay(
    attempt: int,
    initial: float = 0.2,
    factor: float = 2.0,
    maximum: float = 30.0,
    jitter: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0 = first retry).

    Exponential (``initial * factor**attempt``, capped at ``maximum``) plus up
    to 25 % random jitter, so a broker restart is not met by every guest at
    the same instant.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    delay = min(maximum, initial * factor ** min(attempt, 64))
    return delay * (1.0 + 0.25 * jitter())


class StompClientProtocol(Protocol):
    """One STOMP connection from the client side.

    :attr:`handshake` fires with the protocol once CONNECTED arrives (or
    errbacks with :class:`StompError` on an ERROR frame or an early close).
    MESSAGE frames go to the handler registered for their subscription;
    ERROR frames after CONNECTED are logged and end the connection (brokers
    close after sending one anyway).
    """

    def __init__(
        self,
        config: StompConfig,
        clock: IReactorTime,
        on_lost: Callable[[StompClientProtocol, Failure], None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.on_lost = on_lost
        self.version = "1.2"
        self.handshake: defer.Deferred[StompClientProtocol] = defer.Deferred()
        self.is_connected = False
        # Any bytes, heart-beat EOLs included, prove the broker alive:
        # dataReceived notes the time, so the parser needs no heart-beat hook.
        self._parser = FrameParser("1.2", max_frame_size=config.max_frame_size)
        self._handlers: dict[str, tuple[MessageHandler, str]] = {}
        self._sub_ids = itertools.count(1)
        self._send_every = 0.0
        self._expect_every = 0.0
        self._last_sent = 0.0
        self._last_heard = 0.0
        self._timer: Any = None
        self._beat_on_data = False  # send heart-beats when woken by the broker's data
        self._lost = False
        self._receipt_ids = itertools.count(1)
        self._receipts: dict[str, defer.Deferred[None]] = {}
        # ack:client subscriptions -> the last MESSAGE handled in this read
        # (one cumulative ACK per subscription per read; see subscribe()).
        self._unacked: dict[str, Frame] = {}
        # The last read completed a large body: the next read, even in a
        # later wake-up, takes only a header block (see _read).
        self._after_body = False
        # Callbacks waiting for Twisted's write buffer to empty (when_drained).
        self._drain_waiters: list[Callable[[], None]] = []

    # --- connection life -----------------------------------------------------

    def connectionMade(self) -> None:
        # Requests and replies are small and latency-bound: without this,
        # Nagle + delayed ACK add ~40 ms to a round trip.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            enlarge_buffers(sock)  # a transfer window fits in the kernel
        if hasattr(self.transport, "bufferSize"):
            # Read up to 1 MiB per wake-up (Twisted's default is 64 KiB): a
            # 256 KiB file chunk then usually arrives in one dataReceived.
            self.transport.bufferSize = READ_SIZE
        if sock is not None and callable(getattr(self.transport, "doRead", None)):
            # One reused read buffer: recv(1 MiB) would map and unmap a fresh
            # 1 MiB object on every read, even for a 200-byte heartbeat.
            self._read_view = memoryview(bytearray(READ_SIZE))
            self.transport.doRead = self._read  # see _read: bodies received in place
        hb = int(self.config.heartbeat * 1000)
        headers = {
            "accept-version": "1.1,1.2",
            "host": self.config.vhost,
            "login": self.config.login,
            "passcode": self.config.passcode,
            "heart-beat": f"{hb},{hb}",
        }
        self._write(Frame("CONNECT", headers))
        self._last_heard = self.clock.seconds()

    def _read(self) -> Any:
        """The transport's doRead: drain the socket, bodies straight into place.

        Large bodies (file chunks) are received with ``recv_into`` the
        parser's body buffer, never into a fresh bytes object to be copied
        over; after one, only a header block is read (so the next body is
        received in place too), also when it ended the previous wake-up: a
        1 MiB read there was copied into the parser's buffer and then, body
        by body, out of it (perf: most of the receiver's memmove).  Up to
        ``READ_SIZE`` bytes per wake-up, like a plain read; acks and the
        heart-beat follow once, at the end.
        """
        sock = self.transport.socket
        parser = self._parser
        budget = READ_SIZE
        after_body = self._after_body
        try:
            while budget > 0 and not self._lost:
                sink = parser.body_sink()
                if sink is not None:
                    try:
                        count = sock.recv_into(sink)
                        wanted = len(sink)
                    finally:
                        sink.release()
                    if count:
                        self._last_heard = self.clock.seconds()
                        frames = parser.body_received(count)
                        after_body = parser.body_sink() is None
                else:
                    wanted = HEAD_READ_SIZE if after_body else budget
                    count = sock.recv_into(self._read_view[:wanted])
                    if count:
                        self._last_heard = self.clock.seconds()
                        frames = parser.feed(self._read_view[:count])  # copied: reusable
                        # A large body's NUL often comes in this read: a
                        # chunk's header (and body) probably follows.
                        after_body = bool(frames) and len(frames[-1].body) >= DIRECT_BODY_SIZE
                if not count:
                    return main.CONNECTION_DONE
                budget -= count
                self._after_body = after_body
                self._handle_frames(frames)
                if count < wanted:
                    break  # the socket is drained
        except (BlockingIOError, InterruptedError):
            pass
        except FrameError as problem:
            log.error("broker sent a bad frame ({problem}): closing", problem=problem)
            self.transport.abortConnection()
            return None
        except OSError:
            return main.CONNECTION_LOST
        self._after_read()
        return None

    def dataReceived(self, data: bytes) -> None:
        self._last_heard = self.clock.seconds()
        try:
            frames = self._parser.feed(data)
        except FrameError as problem:
            log.error("broker sent a bad frame ({problem}): closing", problem=problem)
            self.transport.abortConnection()
            return
        self._handle_frames(frames)
        self._after_read()

    def _handle_frames(self, frames: list[Frame]) -> None:
        for frame in frames:
            if self._lost:
                return
            self._frame_received(frame)

    def _after_read(self) -> None:
        """Once per read: the cumulative ACKs, and our heart-beat if it is half due."""
        if self._unacked and not self._lost:
            unacked, self._unacked = self._unacked, {}
            for frame in unacked.values():
                self.ack(frame)
        if (
            self._beat_on_data
            and not self._lost
            and self._last_heard - self._last_sent >= self._send_every / 2
        ):
            self._send_heartbeat(self._last_heard)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self._lost = True
        self._drain_waiters.clear()  # their owners resync on the next connection
        receipts, self._receipts = self._receipts, {}
        for confirmed in receipts.values():
            confirmed.errback(Failure(ConnectionError("connection lost before the receipt")))
        self.is_connected = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if not self.handshake.called:
            self.handshake.errback(
                Failure(StompError(f"connection closed before CONNECTED: {reason.value}"))
            )
        if self.on_lost is not None:
            self.on_lost(self, reason)

    # --- frames in -----------------------------------------------------------

    def _frame_received(self, frame: Frame) -> None:
        command = frame.command
        if command == "MESSAGE":
            entry = self._handlers.get(frame.headers.get("subscription", ""))
            if entry is None:
                log.warn("MESSAGE for unknown subscription {headers}", headers=frame.headers)
                return
            handler, ack = entry
            try:
                handler(frame)
            except Exception:
                log.failure(
                    "message handler failed for {dest}", dest=frame.headers.get("destination")
                )
            if ack == "client":
                self._unacked[frame.headers["subscription"]] = frame
            elif ack == "client-individual":
                self.ack(frame)
        elif command == "CONNECTED":
            self._on_connected(frame)
        elif command == "ERROR":
            message = frame.headers.get("message", "") or frame.body.decode("utf-8", "replace")
            log.error("broker ERROR: {message}", message=message)
            if not self.handshake.called:
                self.handshake.errback(Failure(StompError(f"broker refused: {message}")))
            self.transport.loseConnection()
        elif command == "RECEIPT":
            confirmed = self._receipts.pop(frame.headers.get("receipt-id", ""), None)
            if confirmed is not None:
                confirmed.callback(None)
        else:
            log.warn("unexpected {command} frame from the broker", command=command)

    def _on_connected(self, frame: Frame) -> None:
        version = frame.headers.get("version", "1.0")
        if version not in ("1.0", "1.1", "1.2"):
            log.error("broker chose unknown STOMP version {version}", version=version)
            self.transport.loseConnection()
            return
        self.version = version
        self._parser.version = version
        self._setup_heartbeats(frame.headers.get("heart-beat", "0,0"))
        self.is_connected = True
        self.handshake.callback(self)

    def _setup_heartbeats(self, server: str) -> None:
        try:
            sx, sy = (int(part) for part in server.split(","))
        except ValueError:
            sx = sy = 0
        ours = int(self.config.heartbeat * 1000)
        if ours and sy:
            self._send_every = max(ours, sy) / 1000.0
        if ours and sx:
            self._expect_every = max(ours, sx) / 1000.0
        # The broker then writes to us at least every _expect_every: answering
        # its data (when half our interval has passed) keeps our heart-beats
        # within 1.5 intervals (the embedded broker allows 2) and needs no
        # timer of our own, so an idle connection wakes only for the broker.
        self._beat_on_data = bool(
            self._send_every and self._expect_every and self._expect_every <= self._send_every
        )
        if self._send_every or self._expect_every:
            self._timer = self.clock.callLater(self._next_tick(self.clock.seconds()), self._tick)

    def _tick(self) -> None:
        """One timer for both directions: an idle agent wakes as rarely as possible."""
        now = self.clock.seconds()
        if self._expect_every:
            silent = now - self._last_heard
            if silent >= self._expect_every * self.config.heartbeat_grace:
                log.warn("broker silent for {silent:.1f}s: connection presumed dead", silent=silent)
                self._timer = None
                self.transport.abortConnection()
                return
        if self._send_every and now - self._last_sent >= self._send_every * 0.99:
            self._send_heartbeat(now)
        self._timer = self.clock.callLater(self._next_tick(now), self._tick)

    def _send_heartbeat(self, now: float) -> None:
        write_now(self.transport, HEARTBEAT)  # no extra reactor turn for one byte
        self._last_sent = now

    def _next_tick(self, now: float) -> float:
        """Seconds until a heart-beat is due or the broker's silence becomes fatal.

        Rounded up to a grid (a whole second for 10 s heart-beats), the one
        the host controller's liveness timer uses, so both fire in one wake-up.
        """
        due = []
        if self._send_every and not self._beat_on_data:
            due.append(self._last_sent + self._send_every)
        if self._expect_every:
            due.append(self._last_heard + self._expect_every * self.config.heartbeat_grace)
        intervals = [i for i in (self._send_every, self._expect_every) if i]
        grid = min(1.0, 0.1 * min(intervals))
        when = math.ceil(min(due) / grid) * grid
        return max(when - now, 0.01)

    # --- frames out ----------------------------------------------------------

    def _write(self, frame: Frame) -> None:
        if len(frame.body) >= DIRECT_BODY_SIZE:
            # A file chunk: write the parts (encode_frame would copy the body).
            write_parts_now(self.transport, (encode_head(frame, self.version), frame.body, b"\x00"))
        else:
            self.transport.write(encode_frame(frame, self.version))
        self._last_sent = self.clock.seconds()

    def _write_parts(self, frame: Frame, parts: tuple[bytes, ...]) -> None:
        """Write ``frame`` with ``parts`` back to back as its body, never joined.

        File chunks come as (message header, payload): joining them here would
        copy every chunk once more; :func:`write_parts_now` hands them to the
        kernel in one ``sendmsg`` (Twisted would join them into its buffer).
        """
        size = sum(len(part) for part in parts)
        head = encode_head(frame, self.version)  # body-less: ends in the blank line
        if size:
            head = b"%bcontent-length:%d\n\n" % (head[:-1], size)
        write_parts_now(self.transport, (head, *parts, b"\x00"))
        self._last_sent = self.clock.seconds()

    def when_drained(self, callback: Callable[[], None]) -> bool:
        """True if Twisted holds no unsent bytes; else False, and ``callback()`` once it does.

        A file sender paces itself with this: a chunk written while
        Twisted's buffer is empty goes to the kernel with one ``sendmsg``,
        a chunk queued behind is copied (Twisted joins its buffer, then
        sends it 128 KiB per syscall).  Waiting for the drain keeps the
        window in the kernel's socket buffer instead.  ``callback`` is
        dropped if the connection is lost first.
        """
        if not _has_backlog(self.transport) or self._lost:
            return True
        self._drain_waiters.append(callback)
        if len(self._drain_waiters) == 1:
            # A pull producer: Twisted calls resumeProducing whenever its
            # buffer has just emptied (and once now).
            self.transport.registerProducer(_DrainNotice(self), False)
        return False

    def _drained(self) -> None:
        """From the transport (via _DrainNotice): call the waiters if the buffer is empty."""
        if _has_backlog(self.transport) and not self._lost:
            return  # the call made at registration, or more was written meanwhile
        self.transport.unregisterProducer()
        waiters, self._drain_waiters = self._drain_waiters, []
        for callback in waiters:
            try:
                callback()
            except Exception:
                log.failure("drain callback failed")

    def subscribe(
        self,
        destination: str,
        handler: MessageHandler,
        ack: str = "auto",
        headers: dict[str, str] | None = None,
    ) -> str:
        """Subscribe; ``handler`` gets every MESSAGE.  Returns the subscription id.

        With ``ack="client-individual"`` each message is acknowledged after
        its handler returned, so a message that arrived on a connection that
        then died is redelivered by the broker instead of lost.
        ``ack="client"`` keeps that promise with fewer frames: the messages
        of one socket read are acknowledged together, by one cumulative ACK
        of the last, once every handler of the read has returned (a file
        relay then sends one ACK per read instead of one per chunk).
        """
        if ack not in ("auto", "client", "client-individual"):
            raise ValueError(f"ack mode {ack!r}: use auto, client or client-individual")
        sub_id = f"sub-{next(self._sub_ids)}"
        self._handlers[sub_id] = (handler, ack)
        frame_headers = {"destination": destination, "id": sub_id, "ack": ack}
        frame_headers.update(headers or {})
        self._write(Frame("SUBSCRIBE", frame_headers))
        return sub_id

    def unsubscribe(self, sub_id: str) -> None:
        """End a subscription made by :meth:`subscribe`."""
        self._handlers.pop(sub_id, None)
        self._write(Frame("UNSUBSCRIBE", {"id": sub_id}))

    def send(
        self,
        destination: str,
        body: bytes | tuple[bytes, ...],
        headers: dict[str, str] | None = None,
        receipt: bool = False,
    ) -> defer.Deferred[None] | None:
        """SEND ``body`` to ``destination`` (content-length is always set).

        ``body`` may be a tuple of parts (see :func:`vmcontroller.protocol.encode_parts`):
        they are written one after the other as one body, without joining them.

        Every frame claims ``user-id: <our login>``: RabbitMQ passes it on only
        when the sender sets it (and refuses a false one), the embedded broker
        stamps it anyway, so receivers can always tell which login sent what.

        With ``receipt``, returns a Deferred that fires when the broker
        confirms the frame, or errbacks if the connection ends first: the
        only proof a frame did not vanish into a dead connection.
        """
        frame_headers = {
            "destination": destination,
            "content-type": "application/json",
            "user-id": self.config.login,
        }
        frame_headers.update(headers or {})
        confirmed: defer.Deferred[None] | None = None
        if receipt:
            receipt_id = f"r-{next(self._receipt_ids)}"
            frame_headers["receipt"] = receipt_id
            confirmed = defer.Deferred()
            self._receipts[receipt_id] = confirmed
        if isinstance(body, tuple):
            self._write_parts(Frame("SEND", frame_headers), body)
        else:
            self._write(Frame("SEND", frame_headers, body))
        return confirmed

    def ack(self, frame: Frame) -> None:
        """Acknowledge a MESSAGE received on a client-ack subscription."""
        if self.version == "1.2":
            headers = {"id": frame.headers.get("ack", frame.headers.get("message-id", ""))}
        else:
            headers = {
                "message-id": frame.headers.get("message-id", ""),
                "subscription": frame.headers.get("subscription", ""),
            }
        self._write(Frame("ACK", headers))

    def disconnect(self) -> None:
        """Say DISCONNECT and close (no receipt: we are leaving anyway)."""
        if self.is_connected:
            self._write(Frame("DISCONNECT", {}))
        self.transport.loseConnection()


def _has_backlog(transport: Any) -> bool:
    """Whether Twisted's buffers of ``transport`` hold bytes not yet in the kernel."""
    return bool(getattr(transport, "dataBuffer", b"") or getattr(transport, "_tempDataBuffer", ()))


class _DrainNotice:
    """A pull producer whose only job is to hear that the transport's buffer emptied."""

    def __init__(self, protocol: StompClientProtocol) -> None:
        self.protocol = protocol

    def resumeProducing(self) -> None:
        self.protocol._drained()

    def stopProducing(self) -> None:
        pass  # connection lost: connectionLost drops the waiters


class _SessionFactory(Factory):
    def __init__(self, session: StompSession) -> None:
        self.session = session

    def buildProtocol(self, addr: Any) -> StompClientProtocol:
        session = self.session
        return StompClientProtocol(session.config, session.clock, on_lost=session._lost)


@dataclass
class _Subscription:
    destination: str
    handler: MessageHandler
    ack: str
    headers: dict[str, str]


class StompSession:
    """A broker connection that comes back by itself.

    Subscriptions registered with :meth:`subscribe` are made on every new
    connection; :meth:`send` raises :class:`NotConnectedError` while the
    connection is down (callers decide whether to retry, queue or fail).
    ``on_connect(protocol)`` and ``on_disconnect(reason)`` listeners are
    called on each transition.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        config: StompConfig,
        clock: IReactorTime,
        backoff: Callable[[int], float] = backoff_delay,
    ) -> None:
        self.config = config
        self.clock = clock
        self.protocol: StompClientProtocol | None = None
        self._subscriptions: list[_Subscription] = []
        self._connect_listeners: list[Callable[[StompClientProtocol], None]] = []
        self._disconnect_listeners: list[Callable[[Failure], None]] = []
        self._service = ClientService(
            endpoint,
            _SessionFactory(self),
            retryPolicy=backoff,
            clock=clock,
            prepareConnection=self._prepare,
        )

    def add_listener(
        self,
        on_connect: Callable[[StompClientProtocol], None] | None = None,
        on_disconnect: Callable[[Failure], None] | None = None,
    ) -> None:
        """Be told whenever the connection comes up or goes down."""
        if on_connect is not None:
            self._connect_listeners.append(on_connect)
        if on_disconnect is not None:
            self._disconnect_listeners.append(on_disconnect)

    def subscribe(
        self,
        destination: str,
        handler: MessageHandler,
        ack: str = "auto",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Subscribe now (if connected) and on every later connection."""
        sub = _Subscription(destination, handler, ack, dict(headers or {}))
        self._subscriptions.append(sub)
        if self.protocol is not None:
            self.protocol.subscribe(sub.destination, sub.handler, sub.ack, sub.headers)

    def send(
        self,
        destination: str,
        body: bytes | tuple[bytes, ...],
        headers: dict[str, str] | None = None,
        receipt: bool = False,
    ) -> defer.Deferred[None] | None:
        """Send one frame; :class:`NotConnectedError` when the connection is down.

        ``receipt``: see :meth:`StompClientProtocol.send`.
        """
        if self.protocol is None:
            raise NotConnectedError(f"not connected to the broker; cannot send to {destination}")
        return self.protocol.send(destination, body, headers, receipt)

    def when_drained(self, callback: Callable[[], None]) -> bool:
        """See :meth:`StompClientProtocol.when_drained`; True while disconnected."""
        if self.protocol is None:
            return True  # sends fail now anyway; the owner resyncs on reconnect
        return self.protocol.when_drained(callback)

    @property
    def is_connected(self) -> bool:
        return self.protocol is not None

    def start(self) -> None:
        """Begin connecting (and keep reconnecting until :meth:`stop`)."""
        self._service.startService()

    def when_connected(self, fail_after: int | None = None) -> defer.Deferred[StompClientProtocol]:
        """A Deferred firing with the protocol once connected (now, if already)."""
        return self._service.whenConnected(failAfterFailures=fail_after)

    def stop(self) -> defer.Deferred[None]:
        """Disconnect politely and stop reconnecting."""
        if self.protocol is not None:
            self.protocol.disconnect()
        return self._service.stopService()

    # --- ClientService hooks -------------------------------------------------

    def _prepare(self, protocol: StompClientProtocol) -> defer.Deferred[None]:
        def ready(proto: StompClientProtocol) -> None:
            self.protocol = proto
            for sub in self._subscriptions:
                proto.subscribe(sub.destination, sub.handler, sub.ack, sub.headers)
            for listener in list(self._connect_listeners):
                try:
                    listener(proto)
                except Exception:
                    log.failure("connect listener failed")

        return protocol.handshake.addCallback(ready)

    def _lost(self, protocol: StompClientProtocol, reason: Failure) -> None:
        if protocol is not self.protocol:
            return
        self.protocol = None
        for listener in list(self._disconnect_listeners):
            try:
                listener(reason)
            except Exception:
                log.failure("disconnect listener failed")

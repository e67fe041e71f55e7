"""An in-memory broker and sessions with the StompSession interface, for unit tests.

Messages are queued and delivered only by :meth:`MemoryBroker.flush`, so tests
decide when traffic moves (and nothing recurses).  ``/queue/...`` messages wait
for a connected subscriber; ``/topic/...`` messages reach only current ones.
:meth:`MemoryBroker.restart` drops every queued message and disconnects every
session, as killing the embedded broker does.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from vmcontroller.stomp.client import NotConnectedError
from vmcontroller.stomp.codec import Frame


class MemorySession:
    """Implements the parts of StompSession that the agent and host use."""

    def __init__(self, broker: MemoryBroker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.is_connected = False
        self.started = False
        self.subscriptions: list[tuple[str, Callable[[Frame], None]]] = []
        self._on_connect: list[Callable[[Any], None]] = []
        self._on_disconnect: list[Callable[[Failure], None]] = []
        self.sent: list[tuple[str, bytes]] = []
        self.receipts: list[defer.Deferred[None]] = []  # held, when the broker holds them

    def subscribe(
        self,
        destination: str,
        handler: Callable[[Frame], None],
        ack: str = "auto",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.subscriptions.append((destination, handler))

    def add_listener(
        self,
        on_connect: Callable[[Any], None] | None = None,
        on_disconnect: Callable[[Failure], None] | None = None,
    ) -> None:
        if on_connect:
            self._on_connect.append(on_connect)
        if on_disconnect:
            self._on_disconnect.append(on_disconnect)

    def send(
        self,
        destination: str,
        body: bytes | tuple[bytes, ...],
        headers: dict[str, str] | None = None,
        receipt: bool = False,
    ) -> defer.Deferred[None] | None:
        if not self.is_connected:
            raise NotConnectedError("memory session is down")
        if isinstance(body, tuple):  # parts (encode_parts): one body, as on the wire
            body = b"".join(body)
        self.sent.append((destination, body))
        self.broker.publish(destination, body, login=self.name)
        if not receipt:
            return None
        confirmed: defer.Deferred[None] = defer.Deferred()
        if self.broker.hold_receipts:
            self.receipts.append(confirmed)
        else:
            confirmed.callback(None)
        return confirmed

    def start(self) -> None:
        self.started = True
        self.connect()

    def stop(self) -> defer.Deferred[None]:
        self.disconnect()
        self.started = False
        return defer.succeed(None)

    def when_connected(self, fail_after: int | None = None) -> defer.Deferred[Any]:
        return defer.succeed(self)

    def connect(self) -> None:
        if self.is_connected:
            return
        self.is_connected = True
        for listener in list(self._on_connect):
            listener(self)
        self.broker.wake()

    def disconnect(self) -> None:
        if not self.is_connected:
            return
        self.is_connected = False
        receipts, self.receipts = self.receipts, []
        for confirmed in receipts:
            confirmed.errback(Failure(ConnectionError("connection lost before the receipt")))
        for listener in list(self._on_disconnect):
            listener(Failure(ConnectionError("memory connection dropped")))


class MemoryBroker:
    """Routes bodies between :class:`MemorySession` objects on demand."""

    def __init__(self) -> None:
        self.sessions: list[MemorySession] = []
        self.queues: dict[str, collections.deque[tuple[bytes, str]]] = collections.defaultdict(
            collections.deque
        )
        self.topic_backlog: collections.deque[tuple[str, bytes, str]] = collections.deque()
        #: Called with (destination, body); return False to drop the message.
        self.filter: Callable[[str, bytes], bool] = lambda destination, body: True
        self.delivered = 0
        #: When True, sessions keep their receipts pending (a frozen broker).
        self.hold_receipts = False

    def session(self, name: str) -> MemorySession:
        session = MemorySession(self, name)
        self.sessions.append(session)
        return session

    def publish(self, destination: str, body: bytes, login: str = "") -> None:
        """Queue a message; ``login`` becomes its ``user-id`` (brokers stamp it)."""
        if destination.startswith("/queue/"):
            self.queues[destination].append((body, login))
        else:
            self.topic_backlog.append((destination, body, login))

    def wake(self) -> None:
        """Nothing: delivery happens in flush()."""

    def _handlers(self, destination: str) -> list[Callable[[Frame], None]]:
        return [
            handler
            for session in self.sessions
            if session.is_connected
            for dest, handler in session.subscriptions
            if dest == destination
        ]

    def flush(self, limit: int = 100_000, strict: bool = True) -> int:
        """Deliver until nothing deliverable is left (or ``limit`` messages moved).

        With ``strict``, hitting the limit means traffic never settles: an error.
        """
        count = 0
        while count < limit:
            moved = False
            while self.topic_backlog:
                destination, body, login = self.topic_backlog.popleft()
                for handler in self._handlers(destination):
                    self._deliver(handler, destination, body, login)
                count += 1
                moved = True
            for destination, queue in self.queues.items():
                handlers = self._handlers(destination)
                if queue and handlers:
                    body, login = queue.popleft()
                    self._deliver(handlers[0], destination, body, login)
                    count += 1
                    moved = True
                    break
            if not moved:
                break
        else:
            if strict:
                raise AssertionError("memory broker: traffic did not settle")
        return count

    def _deliver(
        self, handler: Callable[[Frame], None], destination: str, body: bytes, login: str
    ) -> None:
        if self.filter(destination, body):
            self.delivered += 1
            headers = {"destination": destination, "subscription": "s", "user-id": login}
            handler(Frame("MESSAGE", headers, body))

    def restart(self) -> None:
        """Lose every queued message and drop every connection."""
        self.queues.clear()
        self.topic_backlog.clear()
        for session in self.sessions:
            session.disconnect()

    def reconnect_all(self) -> None:
        for session in self.sessions:
            if session.started:
                session.connect()

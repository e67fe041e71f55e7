"""Queue and topic managers for the embedded broker.

These plug into coilmq through its manager extension points
(``ThreadedStompServer(queue_manager=..., topic_manager=...)``) and
replace coilmq 1.1.0's delivery logic, which serialises every connection
on one module-global lock, writes to sockets while holding it, allows one
un-acked message per connection, has no NACK and breaks STOMP 1.2 ACK.

Semantics (kept close to RabbitMQ's, the broker used at scale):

* ``/queue/...``: store-and-forward, each message to one subscriber
  (round robin among subscribers with room).  Messages wait in the coilmq
  ``QueueStore`` (:class:`RedeliveryFirstQueue` by default) while nobody
  can take them.
* anything else is a topic: a copy to every current subscriber, nothing
  stored.
* ``ack:auto`` (default): delivered = done.  ``ack:client``: cumulative
  ACK/NACK (everything delivered up to that message); ``client-individual``:
  one message.  Un-acked messages count against the subscription's
  ``prefetch-count`` header (0 or absent = unlimited, as on RabbitMQ).
* NACK, and disconnecting with un-acked messages, requeue queue messages
  (marked ``redelivered:true``) at the head of the queue, in their original
  order (with the default store); topic messages are dropped.
* The MESSAGE ``ack`` header (STOMP 1.2) carries the message id, so every
  version acknowledges by the same key.
* A STOMP 1.0 consumer does not get headers 1.0 cannot represent (a
  newline anywhere, a ``:`` in a name) of messages sent with 1.1/1.2.

Locking: one lock per manager guards subscription and pending state and is
held only for bookkeeping; frames are handed to the consumer's
:class:`~vmcontroller.broker.outbox.Outbox` after the lock is released.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from coilmq.queue import QueueManager
from coilmq.store.memory import MemoryQueue
from coilmq.store.memory import lock as memory_queue_lock
from coilmq.topic import TopicManager
from coilmq.util.frames import Frame as CoilFrame

from vmcontroller.broker.outbox import OutboxClosed
from vmcontroller.stomp.codec import Frame

__all__ = [
    "ACK_MODES",
    "DeliveryError",
    "DeliveryQueueManager",
    "BroadcastTopicManager",
    "Subscriber",
    "Subscription",
]

log = logging.getLogger(__name__)

#: Valid values of the SUBSCRIBE ``ack`` header.
ACK_MODES = ("auto", "client", "client-individual")

# Headers of a SEND that are about the SEND itself and never reach consumers.
_SEND_ONLY_HEADERS = frozenset({"transaction", "receipt", "content-length"})


class DeliveryError(Exception):
    """A client asked for something the delivery rules forbid (sent as ERROR)."""


class Subscriber(Protocol):
    """What the managers need from a connection (the request handler)."""

    #: Negotiated STOMP version ("1.0", "1.1", "1.2").
    version: str

    def deliver(self, frame: Frame) -> None:
        """Queue ``frame`` for sending to this client (may wait; may raise OutboxClosed)."""

    def deliver_reserved(self, frame: Frame) -> None:
        """Queue ``frame`` whose size was reserved (never waits; may raise OutboxClosed)."""

    def reserve(self, body_size: int) -> None:
        """Book room in the client's outbox for a MESSAGE, ahead of ``deliver_reserved``."""

    def has_room(self) -> bool:
        """Whether the client's outbox can take a frame without waiting."""

    def want_drain_notice(self) -> None:
        """Call the queue manager's ``pump`` for this client's queues once it drains."""


@dataclass(eq=False)
class Subscription:
    """One SUBSCRIBE of one connection."""

    connection: Subscriber
    id: str
    destination: str
    ack: str = "auto"
    prefetch: int = 0  # 0 = unlimited
    #: message-id -> stored frame, in delivery order (for cumulative acks).
    pending: OrderedDict[str, CoilFrame] = field(default_factory=OrderedDict)

    @property
    def needs_ack(self) -> bool:
        return self.ack != "auto"

    def under_prefetch(self) -> bool:
        """Fewer un-acked messages than ``prefetch-count`` allows."""
        return not self.prefetch or len(self.pending) < self.prefetch

    def has_room(self) -> bool:
        """May a queue message go to this subscription now?

        Needs room under prefetch and in the connection's outbox; when only
        the outbox is full, asks the connection to report when it drains.
        """
        if not self.under_prefetch():
            return False
        if self.connection.has_room():
            return True
        self.connection.want_drain_notice()
        return self.connection.has_room()  # it may have drained meanwhile


class RedeliveryFirstQueue(MemoryQueue):
    """coilmq's ``MemoryQueue``, but a requeued message goes back to the *head*.

    coilmq requeues at the tail, so messages a consumer left un-acked (it
    disconnected, or NACKed them) came back after everything sent since.
    Requeued here in reverse delivery order, they come back first and in
    their original order, as on RabbitMQ.
    """

    def requeue(self, destination, frame) -> None:
        with memory_queue_lock:  # the lock MemoryQueue's own methods take
            # MemoryQueue enqueues with appendleft and dequeues with pop():
            # the right end is the head.
            self._messages[destination].append(frame)


class _Subscriptions:
    """Subscriptions by destination and by (connection, id); not thread-safe."""

    def __init__(self) -> None:
        self.by_destination: dict[str, list[Subscription]] = {}
        self.by_key: dict[tuple[int, str], Subscription] = {}
        self._round_robin: dict[str, int] = {}

    def add(self, sub: Subscription) -> None:
        key = (id(sub.connection), sub.id)
        if key in self.by_key:
            raise DeliveryError(f"subscription id {sub.id!r} is already in use on this connection")
        self.by_key[key] = sub
        self.by_destination.setdefault(sub.destination, []).append(sub)

    def remove(self, connection: Subscriber, sub_id: str) -> Subscription:
        sub = self.by_key.pop((id(connection), sub_id), None)
        if sub is None:
            raise DeliveryError(f"no subscription with id {sub_id!r} on this connection")
        subs = self.by_destination[sub.destination]
        subs.remove(sub)
        if not subs:
            del self.by_destination[sub.destination]
            self._round_robin.pop(sub.destination, None)
        return sub

    def of_connection(self, connection: Subscriber) -> list[Subscription]:
        return [s for (conn, _), s in self.by_key.items() if conn == id(connection)]

    def next_with_room(self, destination: str) -> Subscription | None:
        subs = self.by_destination.get(destination)
        if not subs:
            return None
        start = self._round_robin.get(destination, 0)
        count = len(subs)
        for offset in range(count):
            sub = subs[(start + offset) % count]
            if sub.has_room():
                self._round_robin[destination] = (start + offset + 1) % count
                return sub
        return None


def message_frame(sub: Subscription, message: CoilFrame) -> Frame:
    """The MESSAGE frame ``sub``'s connection receives for a stored SEND."""
    message_id = message.headers["message-id"]
    headers = {
        "destination": sub.destination,
        "message-id": message_id,
        "subscription": sub.id,
    }
    if sub.needs_ack and sub.connection.version == "1.2":
        headers["ack"] = message_id
    legacy = sub.connection.version == "1.0"
    for name, value in message.headers.items():
        if name in headers or name in _SEND_ONLY_HEADERS:
            continue
        if legacy and ("\n" in name or "\n" in value or ":" in name):
            continue  # STOMP 1.0 cannot carry it (no escaping): the consumer goes without
        headers[name] = value
    return Frame("MESSAGE", headers, message.body)


class _MessageIds:
    """Unique, cheap message ids: kind letter, random broker prefix, counter.

    The kind letter (``q`` queue, ``t`` topic) tells the protocol layer
    which manager an ACK or NACK belongs to without asking both.
    """

    def __init__(self, kind: str) -> None:
        self._prefix = f"{kind}-{secrets.token_hex(4)}-"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter)}"


class _AckTracking:
    """Shared ACK/NACK bookkeeping for both managers (caller holds the lock)."""

    #: First letter of the message ids this manager hands out.
    kind = "?"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs = _Subscriptions()
        # connection id -> {message-id: subscription} for un-acked deliveries
        self._awaiting: dict[int, dict[str, Subscription]] = {}
        self._ids = _MessageIds(self.kind)

    def _track(self, sub: Subscription, message: CoilFrame) -> None:
        message_id = message.headers["message-id"]
        sub.pending[message_id] = message
        self._awaiting.setdefault(id(sub.connection), {})[message_id] = sub

    def _settle(self, connection: Subscriber, message_id: str) -> tuple[Subscription, list]:
        """Remove ``message_id`` (and, for ack:client, all before it) from pending."""
        awaiting = self._awaiting.get(id(connection), {})
        sub = awaiting.get(message_id)
        if sub is None:
            raise DeliveryError(f"no un-acknowledged message with id {message_id!r}")
        settled = []
        if sub.ack == "client":
            while sub.pending:
                mid, frame = sub.pending.popitem(last=False)
                awaiting.pop(mid, None)
                settled.append(frame)
                if mid == message_id:
                    break
        else:
            settled.append(sub.pending.pop(message_id))
            del awaiting[message_id]
        return sub, settled

    def _drop_connection(self, connection: Subscriber) -> list[Subscription]:
        subs = self._subs.of_connection(connection)
        for sub in subs:
            self._subs.remove(connection, sub.id)
        self._awaiting.pop(id(connection), None)
        return subs


def _deliver(
    pairs: list[tuple[Subscription, CoilFrame]], reserved: bool = False
) -> list[tuple[Subscription, CoilFrame]]:
    """Hand frames to outboxes (no lock held); return those that could not go."""
    failed = []
    for sub, message in pairs:
        try:
            if reserved:
                sub.connection.deliver_reserved(message_frame(sub, message))
            else:
                sub.connection.deliver(message_frame(sub, message))
        except OutboxClosed:
            failed.append((sub, message))
    return failed


def _new_subscription(
    connection: Subscriber, destination: str, sub_id: str, headers
) -> Subscription:
    ack = headers.get("ack", "auto")
    if ack not in ACK_MODES:
        raise DeliveryError(f"invalid ack mode {ack!r}; valid modes: {', '.join(ACK_MODES)}")
    raw_prefetch = headers.get("prefetch-count", "0")
    if not (raw_prefetch.isascii() and raw_prefetch.isdigit()):
        raise DeliveryError(f"invalid prefetch-count {raw_prefetch!r}: expected an integer >= 0")
    return Subscription(connection, sub_id, destination, ack, int(raw_prefetch))


class DeliveryQueueManager(_AckTracking, QueueManager):
    """Point-to-point delivery for ``/queue/...`` destinations (see module doc)."""

    kind = "q"

    def __init__(self, store=None, max_queued: int | None = None) -> None:
        QueueManager.__init__(self, store if store is not None else RedeliveryFirstQueue())
        _AckTracking.__init__(self)
        #: Messages a queue may hold; a SEND beyond is refused (None: no limit).
        self.max_queued = max_queued

    # coilmq's QueueManager API ------------------------------------------------

    def subscribe(self, connection, destination, id=None, headers=None):  # noqa: A002
        sub = _new_subscription(connection, destination, id or "0", headers or {})
        with self._lock:
            self._subs.add(sub)
            pairs = self._take_backlog(destination)
        self._hand_over(pairs)

    def unsubscribe(self, connection, destination=None, id=None):  # noqa: A002
        with self._lock:
            sub = self._subs.remove(connection, id or "0")
            self._requeue_pending(sub)
            pairs = self._take_backlog(sub.destination)
        self._hand_over(pairs)

    def disconnect(self, connection):
        with self._lock:
            subs = self._drop_connection(connection)
            pairs = []
            for sub in subs:
                self._requeue_pending(sub)
            for destination in {sub.destination for sub in subs}:
                pairs += self._take_backlog(destination)
        self._hand_over(pairs)

    def send(self, message: CoilFrame) -> None:
        dest = message.headers["destination"]
        message.cmd = "MESSAGE"
        message.headers["message-id"] = self._ids.next()
        with self._lock:
            sub = None
            if not self.store.has_frames(dest):
                sub = self._subs.next_with_room(dest)
            if sub is None:
                if self.max_queued is not None and self.store.size(dest) >= self.max_queued:
                    raise DeliveryError(
                        f"queue {dest} is full ({self.max_queued} messages waiting)"
                    )
                self.store.enqueue(dest, message)
                return
            self._assign(sub, message)
        self._hand_over([(sub, message)])

    def ack(self, connection, message_id: str) -> None:
        """Acknowledge a delivered message (and, for ack:client, those before it)."""
        with self._lock:
            sub, _ = self._settle(connection, message_id)
            pairs = self._take_backlog(sub.destination)
        self._hand_over(pairs)

    def nack(self, connection, message_id: str) -> None:
        """Refuse a message: it goes back to its queue for redelivery."""
        with self._lock:
            sub, settled = self._settle(connection, message_id)
            for message in reversed(settled):  # the first ends up at the head
                self._requeue(sub.destination, message)
            pairs = self._take_backlog(sub.destination)
        self._hand_over(pairs)

    def pump(self, destinations) -> None:
        """Deliver waiting messages of ``destinations`` to subscribers with room."""
        pairs = []
        with self._lock:
            for destination in destinations:
                pairs += self._take_backlog(destination)
        self._hand_over(pairs)

    def queued(self, destination: str) -> int:
        """Messages waiting in the store for ``destination``."""
        return self.store.size(destination)

    # internals (lock held) -----------------------------------------------------

    def _requeue(self, destination: str, message: CoilFrame) -> None:
        message.headers["redelivered"] = "true"
        self.store.requeue(destination, message)

    def _requeue_pending(self, sub: Subscription) -> None:
        awaiting = self._awaiting.get(id(sub.connection), {})
        for message_id, message in reversed(sub.pending.items()):
            awaiting.pop(message_id, None)
            self._requeue(sub.destination, message)
        sub.pending.clear()

    def _take_backlog(self, destination: str) -> list[tuple[Subscription, CoilFrame]]:
        pairs = []
        while self.store.has_frames(destination):
            sub = self._subs.next_with_room(destination)
            if sub is None:
                break
            message = self.store.dequeue(destination)
            if message is None:
                break
            self._assign(sub, message)
            pairs.append((sub, message))
        return pairs

    def _assign(self, sub: Subscription, message: CoilFrame) -> None:
        """``message`` goes to ``sub``: track it for acks, book room in the outbox."""
        if sub.needs_ack:
            self._track(sub, message)
        sub.connection.reserve(len(message.body))

    def _hand_over(self, pairs: list[tuple[Subscription, CoilFrame]]) -> None:
        """Deliver outside the lock; requeue what a closing connection refused."""
        if not pairs:
            return
        failed = _deliver(pairs, reserved=True)
        if failed:
            with self._lock:
                for sub, message in reversed(failed):
                    awaiting = self._awaiting.get(id(sub.connection), {})
                    awaiting.pop(message.headers["message-id"], None)
                    sub.pending.pop(message.headers["message-id"], None)
                    self._requeue(sub.destination, message)


class BroadcastTopicManager(_AckTracking, TopicManager):
    """Broadcast delivery for every non-queue destination (see module doc)."""

    kind = "t"

    def __init__(self) -> None:
        TopicManager.__init__(self)
        _AckTracking.__init__(self)

    def subscribe(self, connection, destination, id=None, headers=None):  # noqa: A002
        sub = _new_subscription(connection, destination, id or "0", headers or {})
        with self._lock:
            self._subs.add(sub)

    def unsubscribe(self, connection, destination=None, id=None):  # noqa: A002
        with self._lock:
            sub = self._subs.remove(connection, id or "0")
            self._forget_pending(sub)

    def disconnect(self, connection):
        with self._lock:
            self._drop_connection(connection)

    def send(self, message: CoilFrame) -> None:
        dest = message.headers["destination"]
        message.cmd = "MESSAGE"
        message.headers["message-id"] = self._ids.next()
        with self._lock:
            pairs = []
            for sub in self._subs.by_destination.get(dest, ()):
                if not sub.under_prefetch():
                    continue  # topics do not wait: a subscriber at its prefetch misses it
                if sub.needs_ack:
                    self._track(sub, message)
                pairs.append((sub, message))
        _deliver(pairs)

    def ack(self, connection, message_id: str) -> None:
        with self._lock:
            self._settle(connection, message_id)

    def nack(self, connection, message_id: str) -> None:
        with self._lock:
            self._settle(connection, message_id)  # nothing to redeliver on a topic

    def _forget_pending(self, sub: Subscription) -> None:
        awaiting = self._awaiting.get(id(sub.connection), {})
        for message_id in sub.pending:
            awaiting.pop(message_id, None)
        sub.pending.clear()

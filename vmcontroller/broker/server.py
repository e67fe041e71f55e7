"""The embedded broker: coilmq's ThreadedStompServer with our handler and managers.

:class:`EmbeddedBroker` runs it in a thread of the calling process (the
wrapper, or a test); :func:`vmcontroller.broker.cli.main` runs it as a
process of its own.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from coilmq.server.socket_server import ThreadedStompServer

from vmcontroller.broker.credentials import (
    Credentials,
    CredentialsAuthenticator,
    load_credentials,
)
from vmcontroller.broker.delivery import BroadcastTopicManager, DeliveryQueueManager
from vmcontroller.broker.handler import BrokerRequestHandler
from vmcontroller.stomp.codec import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
)

__all__ = ["BrokerConfig", "BrokerServer", "EmbeddedBroker"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerConfig:
    """Limits and timings of one broker; the defaults suit a volunteer host."""

    #: Largest frame a client may send (header block + body), bytes.
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    #: Largest header block a client may send, bytes.
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    #: Most headers in one client frame.
    max_headers: int = DEFAULT_MAX_HEADERS
    #: Shortest interval (ms) at which the broker sends heart-beats; 0 = never.
    heartbeat_send_ms: int = 1000
    #: Shortest interval (ms) at which the broker wants heart-beats; 0 = never.
    heartbeat_receive_ms: int = 1000
    #: Seconds a new connection has to send CONNECT.
    connect_timeout: float = 30.0
    #: Bytes queued for one client beyond which queue messages stay in their
    #: queue and topic messages make their producer wait.
    outbox_max_bytes: int = 8 * 1024 * 1024
    #: Seconds a topic producer waits on a stuck consumer before that consumer is dropped.
    slow_consumer_timeout: float = 30.0
    #: Open connections beyond which new ones are closed at once.
    max_connections: int = 256
    #: Subscriptions one connection may hold.
    max_subscriptions: int = 64
    #: Frames one transaction may hold before COMMIT/ABORT; open transactions per connection.
    max_transaction_frames: int = 1000
    max_transactions: int = 16
    #: Messages one queue may hold while nobody takes them; a SEND beyond is refused.
    max_queued_messages: int = 10000
    #: Seconds stop() waits for each connection's threads.
    close_timeout: float = 5.0
    #: Monotonic time source (heart-beat schedules).
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)


class BrokerServer(ThreadedStompServer):
    """coilmq's threaded server, tracking its connections so stop() can end them."""

    daemon_threads = True
    #: listen() backlog: socketserver's default of 5 made 200 guests connecting at once wait
    #: for TCP retransmits (over 100 s for Co-Pilot's 200-pilot benchmark).
    request_queue_size = 128
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        credentials: Credentials,
        config: BrokerConfig,
        store=None,
    ) -> None:
        self.config = config
        self._handlers: set[BrokerRequestHandler] = set()
        self._handlers_lock = threading.Lock()
        self._connection_threads: set[threading.Thread] = set()
        super().__init__(
            address,
            RequestHandlerClass=BrokerRequestHandler,
            timeout=None,
            authenticator=CredentialsAuthenticator(credentials),
            queue_manager=DeliveryQueueManager(store, config.max_queued_messages),
            topic_manager=BroadcastTopicManager(),
        )

    def register(self, handler: BrokerRequestHandler) -> None:
        with self._handlers_lock:
            self._handlers.add(handler)
            self._connection_threads.add(threading.current_thread())

    def unregister(self, handler: BrokerRequestHandler) -> None:
        with self._handlers_lock:
            self._handlers.discard(handler)
            self._connection_threads.discard(threading.current_thread())

    @property
    def connection_count(self) -> int:
        with self._handlers_lock:
            return len(self._handlers)

    def verify_request(self, request, client_address) -> bool:
        """Refuse (close) a connection beyond ``max_connections``, before any thread starts."""
        if self.connection_count >= self.config.max_connections:
            log.warning(
                "refusing connection from %s: %d open", client_address, self.config.max_connections
            )
            return False
        return True

    def close_connections(self, timeout: float) -> None:
        """Shut every client socket and wait for its threads."""
        with self._handlers_lock:
            handlers = list(self._handlers)
            threads = list(self._connection_threads)
        for handler in handlers:
            handler.shutdown_socket()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request, client_address) -> None:
        log.exception("unhandled error on connection from %s", client_address)


class EmbeddedBroker:
    """A STOMP broker in a thread of this process.

    :param listen: address to bind; port 0 picks a free port (read it back
        from :meth:`start`).  Keep it on loopback or a host-only interface.
    :param credentials: a :class:`Credentials` object or a credentials file path.
    :param config: limits and timings.
    :param store: a coilmq ``QueueStore`` (default ``MemoryQueue``).
    """

    def __init__(
        self,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        credentials: Credentials | str | os.PathLike[str] | None = None,
        config: BrokerConfig | None = None,
        store=None,
    ) -> None:
        if credentials is None:
            raise ValueError("the broker requires credentials (a Credentials object or a file)")
        if not isinstance(credentials, Credentials):
            credentials = load_credentials(credentials)
        self.listen = listen
        self.credentials = credentials
        self.config = config or BrokerConfig()
        self.store = store
        self.server: BrokerServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Bind, start serving in a daemon thread; return the bound (host, port)."""
        if self.server is not None:
            raise RuntimeError("broker already started")
        self.server = BrokerServer(self.listen, self.credentials, self.config, self.store)
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            # stop() wakes the loop with a connection: a long poll costs nothing
            # and keeps an idle broker idle.
            kwargs={"poll_interval": 5.0},
            name="vmc-broker-accept",
            daemon=True,
        )
        self._thread.start()
        host, port = self.server.server_address[:2]
        log.info("broker listening on %s:%s", host, port)
        return host, port

    @property
    def address(self) -> tuple[str, int]:
        if self.server is None:
            raise RuntimeError("broker not started")
        return self.server.server_address[:2]

    @property
    def connection_count(self) -> int:
        """Connections currently open."""
        return 0 if self.server is None else self.server.connection_count

    def stop(self) -> None:
        """Stop accepting, close every connection, join every thread."""
        server, self.server = self.server, None
        if server is None:
            return
        server.shutdown_requested.set()
        stopper = threading.Thread(target=server.shutdown, name="vmc-broker-stop", daemon=True)
        stopper.start()
        while stopper.is_alive():  # wake select() now rather than after poll_interval
            _wake(server.server_address[:2])
            stopper.join(0.05)
        self._thread.join()
        server.close_connections(self.config.close_timeout)
        server.server_close()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _wake(address: tuple[str, int]) -> None:
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        pass

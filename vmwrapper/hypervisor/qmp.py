"""A Twisted client for QMP, the QEMU Machine Protocol (JSON lines over a Unix socket).

Protocol facts it handles (``shared/qemu_guest.md`` section 9):

* QEMU greets first (``{"QMP": {...}}``); nothing is accepted before the client
  sends ``qmp_capabilities``;
* every command carries an ``id`` and its reply (``return`` or ``error``) echoes
  it, so replies are matched to their Deferreds by id;
* asynchronous events (``{"event": ...}``) may arrive between a command and its
  reply: they are set aside and handed to the event callback, never mistaken
  for the reply;
* the socket appears shortly after QEMU starts: ``connect_qmp`` retries until a
  deadline;
* HMP commands (``savevm``/``loadvm``) report failure in their returned text,
  not as a QMP error: ``human_monitor`` turns such text into ``QMPError``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

#: Callback for asynchronous events: (event name, data dict, QEMU timestamp seconds).
EventHandler = Callable[[str, dict[str, Any], float], None]


class QMPError(Exception):
    """QEMU refused a command; ``error_class`` is QMP's class (e.g. ``GenericError``)."""

    def __init__(self, command: str, error_class: str, description: str) -> None:
        super().__init__(f"QMP {command}: {error_class}: {description}")
        self.command = command
        self.error_class = error_class
        self.description = description


class QMPDisconnected(Exception):
    """The QMP connection closed (QEMU exited) before the reply came."""


class QMPProtocol(LineOnlyReceiver):
    """One QMP session. ``ready`` fires with the protocol after the capabilities handshake."""

    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self, on_event: EventHandler | None = None) -> None:
        self.on_event = on_event
        self.ready: defer.Deferred[QMPProtocol] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.greeting: dict[str, Any] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[str, tuple[str, defer.Deferred[Any]]] = {}
        self._connected = False

    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        self._connected = True

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 - Twisted API
        line = line.strip()
        if not line:
            return
        try:
            message = json.loads(line)
        except ValueError:
            return  # QEMU never sends this; ignore rather than kill the session
        if "QMP" in message and self.greeting is None:
            self.greeting = message["QMP"]
            self.execute("qmp_capabilities").addCallbacks(
                lambda _: self.ready.callback(self), self.ready.errback)
        elif "event" in message:
            stamp = message.get("timestamp", {})
            when = stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6
            if self.on_event is not None:
                self.on_event(message["event"], message.get("data", {}), when)
        elif "id" in message and message["id"] in self._pending:
            command, waiter = self._pending.pop(message["id"])
            if "error" in message:
                err = message["error"]
                waiter.errback(QMPError(command, err.get("class", "?"), err.get("desc", "")))
            else:
                waiter.callback(message.get("return"))

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802 - Twisted API
        self.transport.loseConnection()

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> defer.Deferred[Any]:
        """Send ``command``; the Deferred fires with its ``return`` value or fails with
        ``QMPError`` / ``QMPDisconnected``."""
        if not self._connected:
            return defer.fail(QMPDisconnected(f"QMP {command}: not connected"))
        ident = f"c{next(self._ids)}"
        waiter: defer.Deferred[Any] = defer.Deferred()
        self._pending[ident] = (command, waiter)
        message: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            message["arguments"] = arguments
        self.sendLine(json.dumps(message).encode())
        return waiter

    @defer.inlineCallbacks
    def human_monitor(self, command_line: str) -> Any:
        """Run an HMP command (e.g. ``savevm tag``); fail with ``QMPError`` when its
        output reports an error (HMP errors come back as text)."""
        text = yield self.execute("human-monitor-command", {"command-line": command_line})
        text = text or ""
        lowered = text.lower()
        if lowered.startswith("error") or "error:" in lowered or "could not" in lowered:
            raise QMPError(command_line.split()[0], "HMPError", text.strip())
        return text

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self._connected = False
        pending, self._pending = self._pending, {}
        for command, waiter in pending.values():
            waiter.errback(QMPDisconnected(f"QMP {command}: connection closed"))
        if not self.ready.called:
            self.ready.errback(QMPDisconnected("QMP closed before the handshake"))
        self.closed.callback(None)

    def close(self) -> None:
        """Close the connection (QEMU keeps running)."""
        if self.transport is not None:
            self.transport.loseConnection()


class _Factory(protocol.Factory):
    def __init__(self, on_event: EventHandler | None) -> None:
        self.on_event = on_event

    def buildProtocol(self, addr: Any) -> QMPProtocol:  # noqa: N802 - Twisted API
        proto = QMPProtocol(self.on_event)
        proto.factory = self
        return proto


def connect_qmp(reactor: Any, socket_path: str, timeout: float = 30.0,
                on_event: EventHandler | None = None,
                retry_interval: float = 0.05) -> defer.Deferred[QMPProtocol]:
    """Connect to QEMU's QMP socket, retrying until ``timeout`` seconds pass.

    Fires with a ``QMPProtocol`` that has completed the capabilities handshake;
    fails with ``TimeoutError`` when the socket never answers. Cancelling the
    Deferred stops the retries.
    """
    deadline = reactor.seconds() + timeout
    endpoint = UNIXClientEndpoint(reactor, socket_path, timeout=max(1.0, timeout))
    state: dict[str, Any] = {"cancelled": False, "call": None, "attempt": None}

    def cancel(_: Any) -> None:
        state["cancelled"] = True
        if state["call"] is not None and state["call"].active():
            state["call"].cancel()
        if state["attempt"] is not None:
            state["attempt"].cancel()

    result: defer.Deferred[QMPProtocol] = defer.Deferred(cancel)

    def attempt() -> None:
        state["call"] = None
        d = endpoint.connect(_Factory(on_event))
        d.addCallback(lambda proto: proto.ready)
        state["attempt"] = d
        d.addCallbacks(succeeded, failed)

    def succeeded(proto: QMPProtocol) -> None:
        if not result.called:
            result.callback(proto)

    def failed(failure: Failure) -> None:
        if state["cancelled"] or result.called:
            return
        retryable = failure.check(error.ConnectError, OSError, QMPDisconnected)
        if retryable and reactor.seconds() + retry_interval < deadline:
            state["call"] = reactor.callLater(retry_interval, attempt)
        elif retryable:
            result.errback(TimeoutError(f"QMP socket {socket_path} did not answer in {timeout} s"))
        else:
            result.errback(failure)

    attempt()
    return result

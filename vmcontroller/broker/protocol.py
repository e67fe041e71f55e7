"""STOMP command handling for the embedded broker (coilmq protocol adaptors).

Subclasses of coilmq's ``STOMP10/11/12`` adaptors, chosen per connection
from the CONNECT frame by coilmq's own negotiation.  They keep coilmq's
transactions (BEGIN/COMMIT/ABORT) and replace the rest:

* CONNECT: login and passcode are required and bind the connection to an
  account (:mod:`vmcontroller.broker.credentials`); any ``host`` header is
  accepted (coilmq insisted on the machine's fqdn); heart-beats are
  negotiated as the spec says and run by the connection's writer thread
  and read timeout, not by a timer thread per beat.
* SEND and SUBSCRIBE are authorised with
  :func:`vmcontroller.destinations.allowed`; every SEND is stamped with
  ``user-id: <login>`` (a different claimed ``user-id`` is refused, as
  RabbitMQ does), so receivers know which login sent a message.
* ACK and NACK work in every version (1.2 by the MESSAGE ``ack`` header,
  1.0/1.1 by ``message-id``).
* Every error is answered with an ERROR frame (``message`` header, the
  offending frame's ``receipt-id``, details in the body) and the
  connection is closed, as the STOMP spec and RabbitMQ do.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from coilmq.exception import AuthError, ProtocolError
from coilmq.protocol.adaptor import STOMP10, STOMP11, STOMP12
from coilmq.util.frames import Frame as CoilFrame

from vmcontroller import __version__
from vmcontroller.broker.delivery import DeliveryError
from vmcontroller.destinations import Action, allowed

if TYPE_CHECKING:
    from vmcontroller.broker.handler import BrokerRequestHandler

__all__ = ["PROTOCOLS", "BrokerSTOMP10", "BrokerSTOMP11", "BrokerSTOMP12"]

log = logging.getLogger(__name__)

SERVER_NAME = f"vmcontroller-broker/{__version__} (coilmq/1.1.0)"

# Commands a connected client may send, and the adaptor method for each.
_COMMANDS = {
    "SEND": "send",
    "SUBSCRIBE": "subscribe",
    "UNSUBSCRIBE": "unsubscribe",
    "ACK": "ack",
    "NACK": "nack",
    "BEGIN": "begin",
    "COMMIT": "commit",
    "ABORT": "abort",
    "DISCONNECT": "disconnect",
}
_TRANSACTION_COMMANDS = frozenset({"BEGIN", "COMMIT", "ABORT"})


class _BrokerRules:
    """The overrides shared by the three version adaptors."""

    #: Negotiated protocol version of this adaptor.
    version = "1.0"
    engine: object

    @property
    def connection(self) -> BrokerRequestHandler:
        return self.engine.connection

    def process_frame(self, frame: CoilFrame) -> None:
        """Dispatch one client frame; any refusal ends the connection."""
        try:
            self._dispatch(frame)
        except (ProtocolError, AuthError, DeliveryError) as error:
            self.connection.fail(str(error), frame)
            return
        except Exception:
            log.exception("internal error on %s frame", frame.cmd)
            self.connection.fail("internal broker error", frame)
            return
        receipt = frame.headers.get("receipt")
        if receipt and frame.cmd not in ("CONNECT", "STOMP"):
            self.connection.send_control("RECEIPT", {"receipt-id": receipt})
        if frame.cmd == "DISCONNECT":
            self.connection.close()

    def _dispatch(self, frame: CoilFrame) -> None:
        command = frame.cmd
        if command in ("CONNECT", "STOMP"):
            if self.engine.connected:
                raise ProtocolError("already connected")
            self.connect(frame)
            return
        if not self.engine.connected:
            raise ProtocolError(f"expected CONNECT, got {command}")
        name = _COMMANDS.get(command)
        if name is None:
            raise ProtocolError(f"unknown or client-forbidden command {command!r}")
        transaction = frame.headers.get("transaction")
        if transaction and command not in _TRANSACTION_COMMANDS and command != "DISCONNECT":
            queued = self.engine.transactions.get(transaction)
            if queued is None:
                raise ProtocolError(f"unknown transaction {transaction!r}")
            if len(queued) >= self.connection.server.config.max_transaction_frames:
                raise ProtocolError(f"transaction {transaction!r} holds too many frames")
            queued.append(frame)
            return
        getattr(self, name)(frame)

    # commands -------------------------------------------------------------

    def connect(self, frame: CoilFrame, response=None) -> None:
        headers = frame.headers
        account = self.engine.authenticator.identify(headers.get("login"), headers.get("passcode"))
        if account is None:
            raise AuthError(f"authentication failed for login {headers.get('login')!r}")
        self.connection.account = account
        reply = {"session": self.connection.session_id, "server": SERVER_NAME}
        if self.version != "1.0":
            reply["version"] = self.version
            reply["heart-beat"] = self._negotiate_heartbeat(headers.get("heart-beat", "0,0"))
        self.engine.connected = True
        self.connection.send_control("CONNECTED", reply)

    def send(self, frame: CoilFrame) -> None:
        destination = self._destination(frame)
        self._authorise(destination, Action.SEND)
        # Stamp the sender's login, as RabbitMQ validates it: receivers can
        # trust ``user-id`` on either broker.
        login = self.connection.account.login
        claimed = frame.headers.get("user-id")
        if claimed is not None and claimed != login:
            raise AuthError(f"user-id {claimed!r} does not match login {login!r}")
        frame.headers["user-id"] = login
        if destination.startswith("/queue/"):
            self.engine.queue_manager.send(frame)
        else:
            self.engine.topic_manager.send(frame)

    def subscribe(self, frame: CoilFrame) -> None:
        destination = self._destination(frame)
        sub_id = self._subscription_id(frame, destination)
        self._authorise(destination, Action.SUBSCRIBE)
        if sub_id in self.connection.subscriptions:
            raise DeliveryError(f"subscription id {sub_id!r} is already in use")
        if len(self.connection.subscriptions) >= self.connection.server.config.max_subscriptions:
            raise DeliveryError("too many subscriptions on this connection")
        manager = self._manager(destination)
        manager.subscribe(self.connection, destination, id=sub_id, headers=frame.headers)
        self.connection.subscriptions[sub_id] = destination

    def unsubscribe(self, frame: CoilFrame) -> None:
        sub_id = self._subscription_id(frame, frame.headers.get("destination"))
        destination = self.connection.subscriptions.pop(sub_id, None)
        if destination is None:
            raise DeliveryError(f"no subscription with id {sub_id!r}")
        self._manager(destination).unsubscribe(self.connection, destination, id=sub_id)

    def ack(self, frame: CoilFrame) -> None:
        message_id = self._acked_id(frame, "ACK")
        self._ack_manager(message_id).ack(self.connection, message_id)

    def nack(self, frame: CoilFrame) -> None:
        message_id = self._acked_id(frame, "NACK")
        self._ack_manager(message_id).nack(self.connection, message_id)

    def begin(self, frame: CoilFrame) -> None:
        if len(self.engine.transactions) >= self.connection.server.config.max_transactions:
            raise ProtocolError("too many open transactions")
        super().begin(frame)

    def commit(self, frame: CoilFrame) -> None:
        # Receipts of the queued frames were sent when they were queued.
        for queued in self.engine.transactions.get(frame.headers.get("transaction"), ()):
            queued.headers.pop("receipt", None)
        super().commit(frame)

    def disconnect(self, frame: CoilFrame) -> None:
        self.engine.unbind()

    # heart-beats ----------------------------------------------------------

    def _negotiate_heartbeat(self, value: str) -> str:
        """Apply the client's ``heart-beat:cx,cy``; return the server's ``sx,sy``."""
        parts = value.split(",")
        if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
            raise ProtocolError(f"malformed heart-beat header {value!r}: expected 'cx,cy'")
        client_send, client_receive = (int(p) for p in parts)
        config = self.connection.server.config
        server_send, server_receive = config.heartbeat_send_ms, config.heartbeat_receive_ms
        if server_send and client_receive:
            self.connection.set_send_heartbeat(max(server_send, client_receive) / 1000)
        if server_receive and client_send:
            self.connection.set_receive_heartbeat(max(server_receive, client_send) / 1000)
        return f"{server_send},{server_receive}"

    def enable_heartbeat(self, cx: int, cy: int) -> tuple[int, int]:  # coilmq API, unused
        raise NotImplementedError("heart-beats are negotiated by _negotiate_heartbeat")

    def disable_heartbeat(self) -> None:
        """Nothing to stop: beats live in the connection's writer and read timeout."""

    # helpers --------------------------------------------------------------

    @staticmethod
    def _destination(frame: CoilFrame) -> str:
        destination = frame.headers.get("destination")
        if not destination:
            raise ProtocolError(f"{frame.cmd} needs a destination header")
        return destination

    def _subscription_id(self, frame: CoilFrame, destination: str | None) -> str:
        sub_id = frame.headers.get("id")
        if sub_id:
            return sub_id
        if self.version == "1.0" and destination:
            return destination  # 1.0 subscriptions may go without an id
        raise ProtocolError(f"{frame.cmd} needs an id header")

    def _authorise(self, destination: str, action: Action) -> None:
        account = self.connection.account
        if not allowed(account.role, account.vm_id, destination, action):
            raise AuthError(f"login {account.login!r} may not {action} {destination}")

    def _manager(self, destination: str):
        if destination.startswith("/queue/"):
            return self.engine.queue_manager
        return self.engine.topic_manager

    def _acked_id(self, frame: CoilFrame, command: str) -> str:
        key = "id" if self.version == "1.2" else "message-id"
        message_id = frame.headers.get(key)
        if not message_id:
            raise ProtocolError(f"{command} needs a {key} header (STOMP {self.version})")
        return message_id

    def _ack_manager(self, message_id: str):
        if message_id.startswith("q-"):
            return self.engine.queue_manager
        if message_id.startswith("t-"):
            return self.engine.topic_manager
        raise DeliveryError(f"no un-acknowledged message with id {message_id!r}")


class BrokerSTOMP10(_BrokerRules, STOMP10):
    """STOMP 1.0 (plus NACK, which 1.0 lacks)."""

    version = "1.0"


class BrokerSTOMP11(_BrokerRules, STOMP11):
    """STOMP 1.1."""

    version = "1.1"


class BrokerSTOMP12(_BrokerRules, STOMP12):
    """STOMP 1.2."""

    version = "1.2"


#: coilmq's negotiated adaptor class -> ours.
PROTOCOLS = {STOMP10: BrokerSTOMP10, STOMP11: BrokerSTOMP11, STOMP12: BrokerSTOMP12}

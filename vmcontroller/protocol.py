"""The vmcontroller wire protocol: typed JSON messages between host and guest agent.

Every STOMP body exchanged by the host controller and the guest agent is one
message: a JSON object with a ``type`` and a protocol version ``v``, optionally
followed by one newline and a binary *payload* (file chunks and process
output travel raw, never base64)::

    {"type": "output", "v": 1, "re": 7, "stream": "stdout"}\\n<raw bytes>

JSON never contains a bare newline, so the first ``\\n`` always ends the header.

Requests (host -> agent) carry a sequence id ``seq``; every answer carries the
request's id in ``re``.  A request that cannot be understood (bad JSON,
unknown type, wrong field types) is answered with an :class:`Error` carrying a
stable :class:`ErrorCode`, never dropped silently.

This module imports only the standard library (simplejson is used when it is
installed, the stdlib ``json`` otherwise) because the guest agent imports it
inside the appliance, where only Python and Twisted are guaranteed.

Protocol version history (bump :data:`PROTOCOL_VERSION` on incompatible change):

* 1 (2026-11): hello/hello_ack/bye/heartbeat/who, ping/pong, run/output/exit/kill,
  put/get with data/data_ack/data_sync/data_end/transfer_done/transfer_failed,
  ok/error.
"""

# -*- test-case-name: tests.unit.vmcontroller.test_protocol -*-

from __future__ import annotations

import dataclasses
import itertools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

try:  # optional: faster, but the guest agent must work without it
    import simplejson as _json  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - depends on the environment
    import json as _json

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = [
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "Bye",
    "ConnectionLostError",
    "Data",
    "DataAck",
    "DataEnd",
    "DataSync",
    "Error",
    "ErrorCode",
    "Exit",
    "Get",
    "Heartbeat",
    "Hello",
    "HelloAck",
    "Kill",
    "Message",
    "Ok",
    "Output",
    "Ping",
    "Pong",
    "ProtocolError",
    "Put",
    "RemoteError",
    "RequestTracker",
    "Run",
    "TransferDone",
    "TransferFailed",
    "Who",
    "decode",
    "encode",
    "encode_parts",
]

#: The version every message carries in ``v``; see the history above.
PROTOCOL_VERSION = 1


class ErrorCode:
    """Stable error codes carried in :class:`Error` and :class:`TransferFailed`."""

    MALFORMED = "malformed"  # not JSON / no header / wrong field types
    UNKNOWN_TYPE = "unknown_type"  # a type this side does not handle
    BAD_VERSION = "bad_version"  # a newer protocol version than this side speaks
    BAD_REQUEST = "bad_request"  # well-formed but invalid arguments
    NOT_FOUND = "not_found"  # no such file / command
    PATH_REFUSED = "path_refused"  # path escapes the agent's work directory
    TOO_LARGE = "too_large"  # a size limit was exceeded
    CHECKSUM = "checksum_mismatch"  # sha256 of the received file differs
    SPAWN_FAILED = "spawn_failed"  # the command could not be started
    IO_ERROR = "io_error"  # the file system said no
    INTERNAL = "internal"  # a bug on the answering side
    FORBIDDEN = "forbidden"  # the sending login may not make this request


class ProtocolError(ValueError):
    """A body could not be decoded into a message; ``code`` is an :class:`ErrorCode`."""

    def __init__(self, code: str, message: str, seq: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        #: The request id, when it could be read, so the error reply can name it.
        self.seq = seq


class RemoteError(Exception):
    """The other side answered a request with an :class:`Error`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionLostError(ConnectionError):
    """A pending request was failed because its connection (or VM) went away."""


@dataclass
class Message:
    """Base of every message; subclasses set ``TYPE`` (the wire name)."""

    TYPE: ClassVar[str] = ""
    #: Whether the message may carry a binary payload after the JSON header.
    HAS_PAYLOAD: ClassVar[bool] = False


# --- presence and liveness ---------------------------------------------------


@dataclass
class Hello(Message):
    """Agent -> host on every (re)connect: who it is and what it can do."""

    TYPE: ClassVar[str] = "hello"
    agent_id: str
    version: str
    capabilities: dict[str, Any] = field(default_factory=dict)
    host_info: dict[str, Any] = field(default_factory=dict)
    heartbeat_interval: float = 10.0


@dataclass
class HelloAck(Message):
    """Host -> agent: the hello was seen (the agent logs it; nothing waits on it)."""

    TYPE: ClassVar[str] = "hello_ack"
    agent_id: str


@dataclass
class Who(Message):
    """Host -> agent: please send a hello (the host started after the agent)."""

    TYPE: ClassVar[str] = "who"


@dataclass
class Bye(Message):
    """Agent -> host when it shuts down cleanly."""

    TYPE: ClassVar[str] = "bye"
    agent_id: str
    reason: str = ""


@dataclass
class Heartbeat(Message):
    """Agent -> host every ``heartbeat_interval`` seconds."""

    TYPE: ClassVar[str] = "heartbeat"
    agent_id: str
    running: int = 0
    heartbeat_interval: float = 10.0


# --- requests and replies ----------------------------------------------------


@dataclass
class Ping(Message):
    """Host -> agent; answered by :class:`Pong`."""

    TYPE: ClassVar[str] = "ping"
    seq: int


@dataclass
class Pong(Message):
    TYPE: ClassVar[str] = "pong"
    re: int


@dataclass
class Run(Message):
    """Host -> agent: start a command.  Exactly one of ``argv``/``shell``.

    ``timeout`` (seconds) kills the whole process group; ``stdin`` is written
    to the command and then closed (empty: stdin is closed at once).
    Answered by a stream of :class:`Output` and one :class:`Exit`.
    """

    TYPE: ClassVar[str] = "run"
    seq: int
    argv: list[str] | None = None
    shell: str | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    timeout: float | None = None
    stdin: str = ""


@dataclass
class Output(Message):
    """Agent -> host: a batch of a command's stdout or stderr (the payload).

    ``index`` counts a run's batches from 1 (both streams together), so the
    host can drop a batch that a reconnect made the agent send twice.
    """

    TYPE: ClassVar[str] = "output"
    HAS_PAYLOAD: ClassVar[bool] = True
    re: int
    stream: str
    index: int = 0


@dataclass
class Exit(Message):
    """Agent -> host: a command ended.

    ``code`` is the exit status (None when killed by a signal), ``signal`` the
    signal number (None otherwise); ``rusage`` holds the child's
    ``ru_utime``/``ru_stime`` seconds and ``ru_maxrss`` KiB and friends;
    ``wall_time`` is seconds from spawn to reap.
    """

    TYPE: ClassVar[str] = "exit"
    re: int
    code: int | None
    signal: int | None
    rusage: dict[str, float]
    wall_time: float
    timed_out: bool = False
    killed: bool = False


@dataclass
class Kill(Message):
    """Host -> agent: signal the process group of the run request ``target``."""

    TYPE: ClassVar[str] = "kill"
    seq: int
    target: int
    signal: int = 15


@dataclass
class Ok(Message):
    """A request without a richer answer succeeded."""

    TYPE: ClassVar[str] = "ok"
    re: int
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Error(Message):
    """A request (``re``; None if it could not be read) failed."""

    TYPE: ClassVar[str] = "error"
    re: int | None
    code: str
    message: str


# --- file transfer (see vmcontroller.transfer) --------------------------------


@dataclass
class Put(Message):
    """Host -> agent: a file of ``size`` bytes will be sent to ``path``.

    Idempotent: sent again with the same ``transfer_id`` (after a reconnect) it
    just asks the agent where to resume; the agent answers with a
    :class:`DataAck` carrying ``sync=True``.
    """

    TYPE: ClassVar[str] = "put"
    seq: int
    transfer_id: str
    path: str
    size: int
    mode: int = 0o644


@dataclass
class Get(Message):
    """Host -> agent: send the file at ``path``, starting at byte ``offset``.

    Idempotent like :class:`Put`: repeated, it tells the agent's sender where
    the host's copy stands.  ``max_size`` makes the agent refuse larger files.
    """

    TYPE: ClassVar[str] = "get"
    seq: int
    transfer_id: str
    path: str
    offset: int = 0
    max_size: int | None = None
    chunk_size: int = 256 * 1024


@dataclass
class Data(Message):
    """A chunk of a transfer: the payload holds the bytes at ``offset``."""

    TYPE: ClassVar[str] = "data"
    HAS_PAYLOAD: ClassVar[bool] = True
    transfer_id: str
    offset: int


@dataclass
class DataAck(Message):
    """Receiver -> sender: every byte before ``offset`` is safely written.

    ``sync`` marks an answer to a sync request or a detected gap: the sender
    must rewind to ``offset``.  ``size`` is the total (known to a get's
    receiver only once the agent said it).
    """

    TYPE: ClassVar[str] = "data_ack"
    transfer_id: str
    offset: int
    sync: bool = False


@dataclass
class DataSync(Message):
    """Sender -> receiver: where do you stand?  Answered by ``DataAck(sync=True)``."""

    TYPE: ClassVar[str] = "data_sync"
    transfer_id: str


@dataclass
class DataEnd(Message):
    """Sender -> receiver: all ``size`` bytes were acknowledged; verify and commit."""

    TYPE: ClassVar[str] = "data_end"
    transfer_id: str
    size: int
    sha256: str


@dataclass
class TransferDone(Message):
    """Receiver -> sender: the file is verified and renamed into place."""

    TYPE: ClassVar[str] = "transfer_done"
    transfer_id: str
    size: int
    sha256: str


@dataclass
class TransferFailed(Message):
    """Either side -> the other: the transfer is abandoned."""

    TYPE: ClassVar[str] = "transfer_failed"
    transfer_id: str
    code: str
    message: str


#: wire name -> message class, for every message this protocol knows.
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello, HelloAck, Who, Bye, Heartbeat, Ping, Pong, Run, Output, Exit, Kill, Ok, Error,
        Put, Get, Data, DataAck, DataSync, DataEnd, TransferDone, TransferFailed,
    )
}  # fmt: skip

_NONE = type(None)


def _checker(hint: Any) -> Callable[[Any], bool]:
    """A predicate telling whether a decoded JSON value fits a type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        checks = [_checker(arg) for arg in typing.get_args(hint)]
        return lambda value: any(check(value) for check in checks)
    if hint is _NONE or hint is None:
        return lambda value: value is None
    if hint is float:
        return lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return lambda value: isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint)
        check = _checker(item)
        return lambda value: isinstance(value, list) and all(check(v) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        check = _checker(item) if item is not Any else (lambda value: True)
        return lambda value: (
            isinstance(value, dict)
            and all(isinstance(k, str) and check(v) for k, v in value.items())
        )
    if hint is Any:
        return lambda value: True
    return lambda value: isinstance(value, hint)


# message class -> [(field name, required, checker)], built once per class.
_SCHEMAS: dict[type[Message], list[tuple[str, bool, Callable[[Any], bool]]]] = {}


def _schema(cls: type[Message]) -> list[tuple[str, bool, Callable[[Any], bool]]]:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        schema = [
            (
                f.name,
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                _checker(hints[f.name]),
            )
            for f in dataclasses.fields(cls)
        ]
        _SCHEMAS[cls] = schema
    return schema


def encode(message: Message, payload: bytes = b"") -> bytes:
    """Serialise ``message`` (and its binary payload) into a STOMP body."""
    return b"".join(encode_parts(message, payload))


def encode_parts(message: Message, payload: bytes = b"") -> tuple[bytes, ...]:
    """The parts whose concatenation is ``encode(message, payload)``.

    ``payload`` is passed through untouched (no copy): senders of file chunks
    hand the parts to the STOMP client, which writes them one after the other
    instead of joining a second copy of every chunk.
    """
    if payload and not message.HAS_PAYLOAD:
        raise ValueError(f"a {message.TYPE} message carries no payload")
    fields = {"type": message.TYPE, "v": PROTOCOL_VERSION}
    fields.update(dataclasses.asdict(message))
    header = _json.dumps(fields, separators=(",", ":")).encode("utf-8")
    if message.HAS_PAYLOAD:
        return (header + b"\n", payload)
    return (header,)


def decode(body: bytes) -> tuple[Message, bytes]:
    """Parse a STOMP body into ``(message, payload)``.

    The payload is a zero-copy ``memoryview`` of ``body`` when there is one
    (file chunks are large: copying them again costs real throughput); call
    ``bytes()`` on it to keep it beyond the body's life.

    :raises ProtocolError: with :attr:`ErrorCode.MALFORMED`,
        :attr:`ErrorCode.UNKNOWN_TYPE` or :attr:`ErrorCode.BAD_VERSION`; its
        ``seq`` is set when the request id could be read.
    """
    newline = body.find(b"\n")
    if newline == -1:
        header, payload = body, b""
    else:
        header, payload = body[:newline], memoryview(body)[newline + 1 :]
    try:
        fields = _json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ProtocolError(ErrorCode.MALFORMED, f"body is not a JSON message: {error}") from None
    if not isinstance(fields, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "a message must be a JSON object")
    seq = fields.get("seq")
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    version = fields.pop("v", None)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError(ErrorCode.MALFORMED, "missing or non-integer 'v' (version)", seq)
    if version > PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.BAD_VERSION,
            f"protocol version {version} is newer than this side's {PROTOCOL_VERSION}",
            seq,
        )
    kind = fields.pop("type", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type {kind!r}; known: {', '.join(sorted(MESSAGE_TYPES))}",
            seq,
        )
    if payload and not cls.HAS_PAYLOAD:
        raise ProtocolError(ErrorCode.MALFORMED, f"a {kind} message carries no payload", seq)
    kwargs = {}
    for name, required, check in _schema(cls):
        if name not in fields:
            if required:
                raise ProtocolError(ErrorCode.MALFORMED, f"{kind}: missing field {name!r}", seq)
            continue
        value = fields.pop(name)
        if not check(value):
            raise ProtocolError(
                ErrorCode.MALFORMED, f"{kind}: field {name!r} has the wrong type: {value!r}", seq
            )
        kwargs[name] = value
    if fields:
        raise ProtocolError(
            ErrorCode.MALFORMED, f"{kind}: unknown field(s) {', '.join(sorted(fields))}", seq
        )
    return cls(**kwargs), payload


class RequestTracker:
    """Sequence ids for requests, and the Deferreds waiting for their answers.

    ``new()`` hands out a fresh id and a Deferred; ``resolve``/``reject``
    fire it when the answer arrives; ``fail_all`` errbacks every pending one
    (the connection was lost, or the VM was declared lost), so no caller
    waits forever.  Each pending request may carry a ``key`` (the VM id) so
    only that VM's requests are failed.
    """

    def __init__(self, first: int = 1) -> None:
        # A host that restarts should not reuse the ids of its previous run
        # (the agent drops repeated ids as redeliveries): pass a random first id.
        self._ids = itertools.count(first)
        self._pending: dict[int, tuple[defer.Deferred[Any], str | None]] = {}

    def new(self, key: str | None = None) -> tuple[int, defer.Deferred[Any]]:
        """Reserve a sequence id; returns ``(seq, deferred)``."""
        seq = next(self._ids)
        deferred: defer.Deferred[Any] = defer.Deferred()
        self._pending[seq] = (deferred, key)
        return seq, deferred

    def adopt(self, seq: int, key: str | None = None) -> defer.Deferred[Any]:
        """Wait for the answer to request ``seq`` sent by an earlier tracker.

        For a host that restarted (or a VM restored from a snapshot) while a
        request was running: its answer will still arrive under the old id.
        """
        if seq in self._pending:
            raise ValueError(f"request {seq} is already pending")
        deferred: defer.Deferred[Any] = defer.Deferred()
        self._pending[seq] = (deferred, key)
        return deferred

    def reserve(self) -> int:
        """A fresh id for a request answered outside the tracker (file transfers)."""
        return next(self._ids)

    def __contains__(self, seq: object) -> bool:
        return seq in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def resolve(self, seq: int, value: Any) -> bool:
        """Fire request ``seq`` with ``value``; False if nothing waited for it."""
        entry = self._pending.pop(seq, None)
        if entry is None:
            return False
        entry[0].callback(value)
        return True

    def reject(self, seq: int, error: BaseException) -> bool:
        """Errback request ``seq``; False if nothing waited for it."""
        entry = self._pending.pop(seq, None)
        if entry is None:
            return False
        entry[0].errback(Failure(error))
        return True

    def fail_all(self, error: BaseException, key: str | None = None) -> int:
        """Errback every pending request (only ``key``'s when given); returns how many."""
        doomed = [seq for seq, (_, k) in self._pending.items() if key is None or k == key]
        for seq in doomed:
            self.reject(seq, error)
        return len(doomed)

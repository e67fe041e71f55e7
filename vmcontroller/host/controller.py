"""The host controller: the Deferred-based API the wrapper uses to drive guests.

One :class:`HostController` talks to any number of VMs through one broker
session.  It reads the presence topic (hello, heartbeats, bye of every agent)
and, for each VM it :meth:`~HostController.watch`-es, that VM's ``to_host``
queue; it sends requests to the VM's ``to_guest`` queue.

Failure model, so callers never wait forever:

* every request has a sequence id and a Deferred; losing the broker
  connection errbacks all pending requests with
  :class:`~vmcontroller.protocol.ConnectionLostError`, and a VM declared lost
  errbacks its own with :class:`VMLostError`;
* an answer :class:`~vmcontroller.protocol.Error` errbacks with
  :class:`~vmcontroller.protocol.RemoteError` (``code`` says why);
* file transfers are *not* failed by a reconnect: they resume (see
  :mod:`vmcontroller.transfer`), and give up only after a long silence.

Liveness: a VM that has not been heard from for ``missed_heartbeats + 0.5``
of its heartbeat intervals is declared lost (``on_lost`` listeners are
called), so loss is reported within ``missed_heartbeats + 1`` intervals of the
last sign of life.  While the host itself is disconnected, nobody is declared
lost.  One timer per controller checks every VM: a message only notes the
time (a Twisted timer moved later still wakes the reactor at its old time),
the timer fires at the earliest deadline rounded up to a grid (a whole second
for 10 s heartbeats), the same grid the STOMP client's heart-beat timer uses,
so an idle host wakes for both at once.
"""

# -*- test-case-name: tests.unit.vmcontroller.test_host_controller -*-

from __future__ import annotations

import math
import os
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from vmcontroller.destinations import PRESENCE, to_guest, to_host, validate_vm_id
from vmcontroller.destinations import parse as parse_destination
from vmcontroller.protocol import (
    Bye,
    ConnectionLostError,
    Data,
    DataAck,
    DataEnd,
    DataSync,
    Error,
    ErrorCode,
    Exit,
    Get,
    Heartbeat,
    Hello,
    HelloAck,
    Kill,
    Message,
    Ok,
    Output,
    Ping,
    Pong,
    ProtocolError,
    Put,
    RemoteError,
    RequestTracker,
    Run,
    TransferDone,
    TransferFailed,
    Who,
    decode,
    encode_parts,
)
from vmcontroller.stomp.codec import Frame
from vmcontroller.transfer import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_WINDOW,
    TransferError,
    TransferReceiver,
    TransferResult,
    TransferSender,
    digest_for,
)

__all__ = ["CommandDeferred", "ExitResult", "HostController", "VMLostError", "VMStatus"]

log = Logger()

#: ``on_output(stream, data)``: called with each batch of a command's output.
OutputCallback = Callable[[str, bytes], None]


class VMLostError(ConnectionError):
    """The VM stopped sending heartbeats (or said bye) while a request was pending."""


@dataclass
class ExitResult:
    """How a command ended in the guest (see :class:`vmcontroller.protocol.Exit`)."""

    code: int | None
    signal: int | None
    rusage: dict[str, float]
    wall_time: float
    timed_out: bool = False
    killed: bool = False

    @property
    def ok(self) -> bool:
        """True for exit status 0."""
        return self.code == 0


@dataclass
class VMStatus:
    """What the host knows about one VM."""

    vm_id: str
    hello: Hello | None = None
    last_seen: float | None = None  # clock time of the last message from it
    heartbeat_interval: float = 10.0
    running: int = 0
    lost: bool = False
    gone: bool = False  # said bye
    #: Clock time silence is counted from: the last message, a reconnect or
    #: the end of a liveness hold.
    _since: float | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return not self.lost and not self.gone and self.last_seen is not None


class CommandDeferred(defer.Deferred):  # type: ignore[type-arg]
    """The Deferred of :meth:`HostController.run`; ``seq`` names it for :meth:`kill`."""

    seq: int = 0
    vm_id: str = ""


class HostController:
    """Drive guest agents through a broker session.

    :param session: a :class:`vmcontroller.stomp.client.StompSession` (or an
        in-memory stand-in with the same methods).
    :param clock: times liveness deadlines, request timeouts and transfers.
    :param missed_heartbeats: heartbeats a VM may miss before it is lost.
    :param vm_logins: VM id -> its broker login.  When given, a message is
        believed only if its ``user-id`` is the login of the VM it claims to
        come from (any VM may write to the presence topic, and on RabbitMQ
        into other queues too); others are dropped with a warning.
    """

    def __init__(
        self,
        session: Any,
        clock: IReactorTime,
        missed_heartbeats: int = 2,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        window: int = DEFAULT_WINDOW,
        transfer_sync_after: float = 5.0,
        first_seq: int | None = None,
        vm_logins: Mapping[str, str] | None = None,
    ) -> None:
        if missed_heartbeats < 1:
            raise ValueError(f"missed_heartbeats must be >= 1, got {missed_heartbeats}")
        self.session = session
        self.clock = clock
        self.missed_heartbeats = missed_heartbeats
        self.chunk_size = chunk_size
        self.window = window
        self.transfer_sync_after = transfer_sync_after
        self.vm_logins = vm_logins
        self.vms: dict[str, VMStatus] = {}
        self._watched: set[str] = set()
        self._requests = RequestTracker(first_seq or random.randrange(1, 2**40))
        self._outputs: dict[int, OutputCallback] = {}
        self._output_seen: dict[int, int] = {}  # run seq -> last output batch index
        self._hello_waiters: dict[str, list[defer.Deferred[Hello]]] = {}
        self._lost_listeners: list[Callable[[str], None]] = []
        self._hello_listeners: list[Callable[[str, Hello], None]] = []
        #: Transfers in progress by id: puts (we send) and gets (we receive).
        self.senders: dict[str, TransferSender] = {}
        self.receivers: dict[str, TransferReceiver] = {}
        self._transfer_requests: dict[int, str] = {}  # put/get seq -> transfer id
        self._held: set[str] = set()  # VMs whose liveness is on hold
        self._connected = False
        self._liveness_call: Any = None  # the one liveness timer, while armed

    # --- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Listen to presence and start connecting (returns at once)."""
        self.session.subscribe(PRESENCE, self._on_frame)
        self.session.add_listener(on_connect=self._on_connect, on_disconnect=self._on_disconnect)
        self.session.start()

    def stop(self) -> Any:
        """Fail what is pending and disconnect; returns a Deferred."""
        self._stop_liveness()
        self._requests.fail_all(ConnectionLostError("host controller stopped"))
        for sender in list(self.senders.values()):
            sender.cancel(ErrorCode.IO_ERROR, "host controller stopped")
        for receiver in list(self.receivers.values()):
            receiver.fail(ErrorCode.IO_ERROR, "host controller stopped")
        return self.session.stop()

    def when_connected(self, fail_after: int | None = None) -> defer.Deferred[Any]:
        """Fires once the broker session is up."""
        return self.session.when_connected(fail_after)

    def add_listener(
        self,
        on_lost: Callable[[str], None] | None = None,
        on_hello: Callable[[str, Hello], None] | None = None,
    ) -> None:
        """Be told when a VM is declared lost, or says hello."""
        if on_lost is not None:
            self._lost_listeners.append(on_lost)
        if on_hello is not None:
            self._hello_listeners.append(on_hello)

    def watch(self, vm_id: str) -> None:
        """Start reading ``vm_id``'s replies and ask it to say hello."""
        validate_vm_id(vm_id)
        if vm_id in self._watched:
            return
        self._watched.add(vm_id)
        self.vms.setdefault(vm_id, VMStatus(vm_id))
        self.session.subscribe(
            to_host(vm_id), self._on_frame, ack="client",
            headers={"prefetch-count": "256"},
        )  # fmt: skip
        self._send(vm_id, Who(), quiet=True)

    # --- the API ----------------------------------------------------------------

    def connected_vms(self) -> list[VMStatus]:
        """VMs heard from and not lost or gone (``vmcontroller ls``)."""
        return sorted((s for s in self.vms.values() if s.alive), key=lambda s: s.vm_id)

    def wait_for_hello(self, vm_id: str, timeout: float) -> defer.Deferred[Hello]:
        """Fires with the VM's :class:`Hello` (at once if already alive).

        Errbacks with :class:`defer.TimeoutError` after ``timeout`` seconds.
        """
        self.watch(vm_id)
        status = self.vms[vm_id]
        if status.alive and status.hello is not None:
            return defer.succeed(status.hello)
        waiter: defer.Deferred[Hello] = defer.Deferred()
        self._hello_waiters.setdefault(vm_id, []).append(waiter)

        def expired() -> None:
            waiters = self._hello_waiters.get(vm_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
                waiter.errback(
                    Failure(defer.TimeoutError(f"no hello from VM {vm_id} within {timeout} s"))
                )

        call = self.clock.callLater(timeout, expired)
        waiter.addBoth(_cancel_then_pass, call)
        return waiter

    def ping(self, vm_id: str) -> defer.Deferred[float]:
        """Round trip through the broker and the agent; fires with seconds."""
        started = self.clock.seconds()
        seq, deferred = self._request(vm_id)
        self._send(vm_id, Ping(seq))
        return deferred.addCallback(lambda _: self.clock.seconds() - started)

    def run(
        self,
        vm_id: str,
        argv: list[str] | None = None,
        shell: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: str = "",
        on_output: OutputCallback | None = None,
    ) -> CommandDeferred:
        """Run a command in the guest; fires with an :class:`ExitResult`.

        Give exactly one of ``argv`` (no shell) or ``shell`` (``/bin/sh -c``).
        A non-zero exit status is a result, not an error; errors are a refused
        request (:class:`RemoteError`) or a lost connection/VM.
        """
        if (argv is None) == (shell is None):
            raise ValueError("run() needs exactly one of argv or shell")
        seq, deferred = self._request(vm_id)
        result = CommandDeferred()
        result.seq, result.vm_id = seq, vm_id
        deferred.chainDeferred(result)
        if on_output is not None:
            self._outputs[seq] = on_output
        result.addBoth(_pass_after, self._forget_outputs, seq)
        self._send(vm_id, Run(seq, argv, shell, env, cwd, timeout, stdin))
        return result

    def adopt_run(
        self, vm_id: str, seq: int, on_output: OutputCallback | None = None
    ) -> defer.Deferred[ExitResult]:
        """Wait for the output and exit of run ``seq``, started by an earlier host.

        After the wrapper restarts, or restores a VM whose agent was running
        a command, the agent still reports under the old ``seq``.
        """
        self.watch(vm_id)
        deferred = self._requests.adopt(seq, vm_id)
        if on_output is not None:
            self._outputs[seq] = on_output
        return deferred.addBoth(_pass_after, self._forget_outputs, seq)

    def hold_liveness(self, vm_id: str) -> None:
        """Do not declare ``vm_id`` lost until :meth:`release_liveness` (it is paused on purpose)."""
        self._held.add(vm_id)  # the liveness check skips it

    def release_liveness(self, vm_id: str) -> None:
        """Expect ``vm_id``'s heartbeats again, counting from now."""
        self._held.discard(vm_id)
        status = self.vms.get(vm_id)
        if status is not None and status.alive and self._connected:
            self._count_from_now(status)

    def kill(self, vm_id: str, target: int, signal: int = 15) -> defer.Deferred[Ok]:
        """Signal the process group of the run whose ``seq`` is ``target``."""
        seq, deferred = self._request(vm_id)
        self._send(vm_id, Kill(seq, target, signal))
        return deferred

    def put_file(
        self, vm_id: str, source: str, destination: str, mode: int | None = None
    ) -> defer.Deferred[TransferResult]:
        """Copy the local file ``source`` to ``destination`` (relative to the agent's work dir)."""
        self.watch(vm_id)
        tid = uuid.uuid4().hex
        seq = self._requests.reserve()
        try:
            size = os.path.getsize(source)
            file_mode = mode if mode is not None else os.stat(source).st_mode & 0o777
        except OSError as problem:
            return defer.fail(TransferError(ErrorCode.NOT_FOUND, f"{source}: {problem.strerror}"))

        def request_sync() -> None:
            self._send(vm_id, Put(seq, tid, destination, size, file_mode), quiet=True)

        sender = TransferSender(
            tid,
            source,
            lambda message, payload: self._send(vm_id, message, payload),
            request_sync,
            self.clock,
            self.chunk_size,
            self.window,
            sync_after=self.transfer_sync_after,
            digest=digest_for(self.clock),
            when_drained=getattr(self.session, "when_drained", None),  # stand-ins lack it
        )
        self.senders[tid] = sender
        self._transfer_requests[seq] = tid
        sender.start()
        return sender.done.addBoth(_pass_after, self._forget_transfer, tid, seq)

    def get_file(
        self, vm_id: str, source: str, destination: str, max_size: int | None = None
    ) -> defer.Deferred[TransferResult]:
        """Copy ``source`` (relative to the agent's work dir) to the local ``destination``."""
        self.watch(vm_id)
        tid = uuid.uuid4().hex
        seq = self._requests.reserve()
        chunk = self.chunk_size

        def request(offset: int) -> None:
            self._send(vm_id, Get(seq, tid, source, offset, max_size, chunk), quiet=True)

        try:
            receiver = TransferReceiver(
                tid,
                os.path.abspath(destination),
                lambda message, payload: self._send(vm_id, message, payload),
                self.clock,
                max_size=max_size,
                request_resend=request,
                sync_after=self.transfer_sync_after,
                digest=digest_for(self.clock),
            )
        except OSError as problem:
            return defer.fail(
                TransferError(ErrorCode.IO_ERROR, f"{destination}: {problem.strerror}")
            )
        self.receivers[tid] = receiver
        self._transfer_requests[seq] = tid
        request(0)
        return receiver.done.addBoth(_pass_after, self._forget_transfer, tid, seq)

    # --- plumbing ---------------------------------------------------------------

    def _request(self, vm_id: str) -> tuple[int, defer.Deferred[Any]]:
        self.watch(vm_id)
        if not self._connected:
            seq, deferred = self._requests.new(vm_id)
            self._requests.reject(seq, ConnectionLostError("not connected to the broker"))
            return seq, deferred
        return self._requests.new(vm_id)

    def _send(
        self, vm_id: str, message: Message, payload: bytes = b"", quiet: bool = False
    ) -> None:
        try:
            self.session.send(to_guest(vm_id), encode_parts(message, payload))
        except ConnectionError as problem:
            seq = getattr(message, "seq", None)
            if not quiet and seq is not None:
                self._requests.reject(seq, ConnectionLostError(str(problem)))
            if isinstance(message, (Data, DataEnd, DataAck, DataSync)):
                raise  # the transfer notices and resyncs later

    def _forget_outputs(self, seq: int) -> None:
        self._outputs.pop(seq, None)
        self._output_seen.pop(seq, None)

    def _forget_transfer(self, tid: str, seq: int) -> None:
        self.senders.pop(tid, None)
        self.receivers.pop(tid, None)
        self._transfer_requests.pop(seq, None)

    def _on_connect(self, protocol: Any) -> None:
        self._connected = True
        for vm_id in self._watched:
            self._send(vm_id, Who(), quiet=True)
        for status in self.vms.values():
            if status.alive:
                self._count_from_now(status)
        for sender in list(self.senders.values()):
            sender.resync()
        for receiver in list(self.receivers.values()):
            receiver.resync()

    def _on_disconnect(self, reason: Failure) -> None:
        self._connected = False
        self._stop_liveness()
        failed = self._requests.fail_all(
            ConnectionLostError(f"broker connection lost: {reason.getErrorMessage()}")
        )
        if failed:
            log.warn("broker connection lost: failed {n} pending request(s)", n=failed)

    def _on_frame(self, frame: Frame) -> None:
        try:
            message, payload = decode(frame.body)
        except ProtocolError as problem:
            log.warn(
                "undecodable message on {dest}: {problem}",
                dest=frame.headers.get("destination"),
                problem=problem,
            )
            return  # replying to an agent's garbage could loop: log it instead
        vm_id = _sender_of(message, frame)
        if self.vm_logins is not None and (
            vm_id is None or frame.headers.get("user-id") != self.vm_logins.get(vm_id)
        ):
            log.warn(
                "dropped a {type} claiming to be from VM {vm}, sent by login {login}",
                type=message.TYPE,
                vm=vm_id,
                login=frame.headers.get("user-id"),
            )
            return
        if vm_id is None or vm_id not in self.vms and vm_id not in self._watched:
            if isinstance(message, (Hello, Heartbeat)):
                vm_id = message.agent_id
                self.vms.setdefault(vm_id, VMStatus(vm_id))
            else:
                return
        self._seen(vm_id, message)
        handler = self._HANDLERS.get(type(message))
        if handler is None:
            log.warn("unexpected {type} from VM {vm}", type=message.TYPE, vm=vm_id)
            return
        handler(self, vm_id, message, payload)

    # --- liveness ---------------------------------------------------------------

    def _seen(self, vm_id: str, message: Message) -> None:
        status = self.vms.setdefault(vm_id, VMStatus(vm_id))
        status.last_seen = self.clock.seconds()
        if isinstance(message, (Hello, Heartbeat)):
            status.heartbeat_interval = message.heartbeat_interval
        if isinstance(message, Bye):
            return
        if status.lost:
            log.info("VM {vm} is back", vm=vm_id)
        status.lost = status.gone = False
        if self._connected:
            self._count_from_now(status)

    def _count_from_now(self, status: VMStatus) -> None:
        """Silence of ``status`` counts from now; make sure the timer will see it."""
        status._since = self.clock.seconds()
        if status.vm_id not in self._held:
            self._arm_liveness(self._deadline_of(status))

    def _deadline_of(self, status: VMStatus) -> float:
        assert status._since is not None
        return status._since + (self.missed_heartbeats + 0.5) * status.heartbeat_interval

    def _arm_liveness(self, deadline: float) -> None:
        """Have the liveness timer fire by ``deadline`` (rounded up to the grid).

        An armed timer that fires by then is left alone (it re-arms itself
        for later deadlines); one due later is moved sooner, which costs no
        extra wake-up.
        """
        grid = min(1.0, 0.1 * min((s.heartbeat_interval for s in self.vms.values()), default=10))
        when = math.ceil(deadline / grid) * grid if grid > 0 else deadline
        delay = max(0.0, when - self.clock.seconds())
        call = self._liveness_call
        if call is not None and call.active():
            if call.getTime() > when:
                call.reset(delay)
            return
        self._liveness_call = self.clock.callLater(delay, self._check_liveness)

    def _check_liveness(self) -> None:
        """Declare lost every VM past its deadline; re-arm for the next one."""
        self._liveness_call = None
        if not self._connected:
            return
        now = self.clock.seconds()
        due: list[float] = []
        for status in list(self.vms.values()):
            if not status.alive or status.vm_id in self._held or status._since is None:
                continue
            deadline = self._deadline_of(status)
            if deadline <= now:
                self._declare_lost(status.vm_id)
            else:
                due.append(deadline)
        if due and self._liveness_call is None:
            self._arm_liveness(min(due))

    def _stop_liveness(self) -> None:
        if self._liveness_call is not None and self._liveness_call.active():
            self._liveness_call.cancel()
        self._liveness_call = None

    def _declare_lost(self, vm_id: str, why: str = "missed heartbeats") -> None:
        status = self.vms[vm_id]
        if status.lost:
            return
        status.lost = True
        log.warn("VM {vm} lost: {why}", vm=vm_id, why=why)
        self._requests.fail_all(VMLostError(f"VM {vm_id} lost: {why}"), key=vm_id)
        for listener in list(self._lost_listeners):
            try:
                listener(vm_id)
            except Exception:
                log.failure("on_lost listener failed")

    # --- message handlers ---------------------------------------------------------

    def _on_hello(self, vm_id: str, message: Hello, payload: bytes) -> None:
        status = self.vms[vm_id]
        first = status.hello is None
        status.hello = message
        if first:
            log.info("VM {vm} said hello ({version})", vm=vm_id, version=message.version)
        if vm_id in self._watched:
            self._send(vm_id, HelloAck(vm_id), quiet=True)
        for waiter in self._hello_waiters.pop(vm_id, []):
            waiter.callback(message)
        for listener in list(self._hello_listeners):
            listener(vm_id, message)

    def _on_heartbeat(self, vm_id: str, message: Heartbeat, payload: bytes) -> None:
        self.vms[vm_id].running = message.running
        if self.vms[vm_id].hello is None and vm_id in self._watched:
            self._send(vm_id, Who(), quiet=True)

    def _on_bye(self, vm_id: str, message: Bye, payload: bytes) -> None:
        status = self.vms[vm_id]
        status.gone = True  # the liveness check skips it
        self._requests.fail_all(VMLostError(f"VM {vm_id} said bye: {message.reason}"), key=vm_id)

    def _on_pong(self, vm_id: str, message: Pong, payload: bytes) -> None:
        self._requests.resolve(message.re, message)

    def _on_ok(self, vm_id: str, message: Ok, payload: bytes) -> None:
        self._requests.resolve(message.re, message)

    def _on_error(self, vm_id: str, message: Error, payload: bytes) -> None:
        if message.re is None:
            log.warn(
                "VM {vm} reports: {code}: {text}", vm=vm_id, code=message.code, text=message.message
            )
            return
        tid = self._transfer_requests.get(message.re)
        if tid is not None:
            self._on_transfer_failed(vm_id, TransferFailed(tid, message.code, message.message), b"")
            return
        self._requests.reject(message.re, RemoteError(message.code, message.message))

    def _on_output(self, vm_id: str, message: Output, payload: bytes) -> None:
        callback = self._outputs.get(message.re)
        if callback is None:
            return
        if message.index:
            if message.index <= self._output_seen.get(message.re, 0):
                return  # sent again after a reconnect: already delivered
            self._output_seen[message.re] = message.index
        callback(message.stream, bytes(payload))

    def _on_exit(self, vm_id: str, message: Exit, payload: bytes) -> None:
        self._requests.resolve(
            message.re,
            ExitResult(
                message.code,
                message.signal,
                message.rusage,
                message.wall_time,
                message.timed_out,
                message.killed,
            ),
        )

    def _on_data(self, vm_id: str, message: Data, payload: bytes) -> None:
        receiver = self.receivers.get(message.transfer_id)
        if receiver is not None:
            receiver.on_data(message, payload)

    def _on_data_end(self, vm_id: str, message: DataEnd, payload: bytes) -> None:
        receiver = self.receivers.get(message.transfer_id)
        if receiver is not None:
            receiver.on_end(message)

    def _on_data_sync(self, vm_id: str, message: DataSync, payload: bytes) -> None:
        receiver = self.receivers.get(message.transfer_id)
        if receiver is not None:
            receiver.on_sync(message)

    def _on_data_ack(self, vm_id: str, message: DataAck, payload: bytes) -> None:
        sender = self.senders.get(message.transfer_id)
        if sender is not None:
            sender.on_ack(message)

    def _on_transfer_done(self, vm_id: str, message: TransferDone, payload: bytes) -> None:
        sender = self.senders.get(message.transfer_id)
        if sender is not None:
            sender.on_done(message)

    def _on_transfer_failed(self, vm_id: str, message: TransferFailed, payload: bytes) -> None:
        sender = self.senders.get(message.transfer_id)
        if sender is not None:
            sender.on_failed(message)
        receiver = self.receivers.get(message.transfer_id)
        if receiver is not None:
            receiver.on_failed(message)

    _HANDLERS: dict[type[Message], Callable[..., None]] = {
        Hello: _on_hello,
        Heartbeat: _on_heartbeat,
        Bye: _on_bye,
        Pong: _on_pong,
        Ok: _on_ok,
        Error: _on_error,
        Output: _on_output,
        Exit: _on_exit,
        Data: _on_data,
        DataEnd: _on_data_end,
        DataSync: _on_data_sync,
        DataAck: _on_data_ack,
        TransferDone: _on_transfer_done,
        TransferFailed: _on_transfer_failed,
    }


def _sender_of(message: Message, frame: Frame) -> str | None:
    """Which VM a message came from: its queue, or its agent id on the presence topic."""
    kind = parse_destination(frame.headers.get("destination", ""))
    if kind is not None and kind[0] == "to_host":
        return kind[1]
    if isinstance(message, (Hello, Heartbeat, Bye)):
        return message.agent_id
    return None


def _cancel_then_pass(result: Any, call: Any) -> Any:
    if call.active():
        call.cancel()
    return result


def _pass_after(result: Any, function: Callable[..., Any], *args: Any) -> Any:
    function(*args)
    return result

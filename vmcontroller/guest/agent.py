"""The guest agent: answers the host's requests arriving over the broker.

The agent reads its VM's ``to_guest`` queue and answers on its ``to_host``
queue; hello, heartbeats and bye also go to the presence topic.  Each wire
message type maps to one handler method (:data:`Agent.HANDLERS`, advertised in
the hello's ``capabilities``), so adding a command is adding a method.

* Requests are acknowledged to the broker only after their handler ran
  (``client``: one cumulative ACK per socket read), so a request that arrived just before the
  connection died is redelivered, and ``run``/``kill`` requests seen before
  (same ``seq``) are ignored instead of run twice.
* Replies (a command's output and exit status, answers) are kept in a
  bounded outbox until the broker confirms them with a RECEIPT, and are sent
  again after a reconnect: a reply written into a connection that was
  already dead (VM restored from a snapshot) is not lost.  Transfer messages
  are not kept (the transfer resynchronises instead).
* Commands run concurrently, each in its own process group
  (:mod:`vmcontroller.guest.process`), their output batched
  (:mod:`vmcontroller.guest.output`).
* Files are confined to ``work_dir`` (:mod:`vmcontroller.guest.paths`) and
  moved by :mod:`vmcontroller.transfer`.

Only the standard library and Twisted are imported (the appliance has
Debian's python3-twisted and nothing else).
"""

# -*- test-case-name: tests.unit.vmcontroller.test_guest_agent -*-

from __future__ import annotations

import collections
import itertools
import os
import platform
import shlex
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from vmcontroller import __version__
from vmcontroller.destinations import PRESENCE, to_guest, to_host
from vmcontroller.guest.config import AgentConfig
from vmcontroller.guest.output import OutputBatcher
from vmcontroller.guest.paths import PathRefused, open_confined, open_confined_dir, resolve
from vmcontroller.guest.process import CommandResult, RunningCommand
from vmcontroller.protocol import (
    PROTOCOL_VERSION,
    Bye,
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
    Run,
    TransferDone,
    TransferFailed,
    Who,
    decode,
    encode,
    encode_parts,
)
from vmcontroller.stomp.codec import Frame
from vmcontroller.transfer import TransferReceiver, TransferSender, digest_for

__all__ = ["Agent"]

log = Logger()

#: Most request ids remembered to drop redelivered duplicates.
_SEEN_LIMIT = 4096
#: Most bytes of replies held until the broker confirms them.
_OUTBOX_LIMIT = 64 * 1024 * 1024
#: Seconds a finished transfer is remembered, to re-answer a repeated end.
_FINISHED_MEMORY = 600.0


class _Reply:
    """One reply on its way to the host."""

    __slots__ = ("body", "confirmed")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.confirmed = False


def _ignore(failure: Any) -> None:
    """A receipt lost with its connection: the reply is resent on the next one."""


class Agent:
    """One VM's agent.

    :param session: a started-or-not :class:`vmcontroller.stomp.client.StompSession`
        (anything with ``subscribe``, ``send``, ``add_listener``, ``start``,
        ``stop``): unit tests pass an in-memory one.
    :param reactor: spawns processes and watches their pipes.
    :param clock: times heartbeats, timeouts and batching (defaults to reactor).
    """

    #: wire type -> handler method name: the agent's command registry.
    HANDLERS: dict[str, str] = {
        Ping.TYPE: "_on_ping",
        Run.TYPE: "_on_run",
        Kill.TYPE: "_on_kill",
        Put.TYPE: "_on_put",
        Get.TYPE: "_on_get",
        Who.TYPE: "_on_who",
        HelloAck.TYPE: "_on_hello_ack",
        Data.TYPE: "_on_data",
        DataAck.TYPE: "_on_data_ack",
        DataSync.TYPE: "_on_data_sync",
        DataEnd.TYPE: "_on_data_end",
        TransferDone.TYPE: "_on_transfer_done",
        TransferFailed.TYPE: "_on_transfer_failed",
    }

    def __init__(
        self,
        config: AgentConfig,
        session: Any,
        reactor: Any,
        clock: IReactorTime | None = None,
        output_max_bytes: int = 64 * 1024,
        output_max_delay: float = 0.05,
    ) -> None:
        self.config = config
        self.session = session
        self.reactor = reactor
        self.clock: IReactorTime = clock or reactor
        self.output_max_bytes = output_max_bytes
        self.output_max_delay = output_max_delay
        self.work_dir = os.path.realpath(config.work_dir)
        self.agent_id = config.vm_id
        self._reply_to = to_host(config.vm_id)
        self.commands: dict[int, RunningCommand] = {}
        self._seen: collections.OrderedDict[int, None] = collections.OrderedDict()
        # Replies not yet sent on the current connection, and replies sent but
        # not yet confirmed by a broker RECEIPT (resent after a reconnect).
        self._unsent: collections.deque[_Reply] = collections.deque()
        self._unconfirmed: collections.deque[_Reply] = collections.deque()
        self._outbox_bytes = 0
        self.receivers: dict[str, TransferReceiver] = {}
        self.senders: dict[str, TransferSender] = {}
        self._heartbeat_call: Any = None
        self._stopping = False

    # --- life cycle -----------------------------------------------------------

    def start(self) -> None:
        """Subscribe, start heartbeats and connect (returns at once)."""
        os.makedirs(self.work_dir, exist_ok=True)
        self.session.subscribe(to_guest(self.agent_id), self._on_frame, ack="client")
        self.session.add_listener(on_connect=self._connected, on_disconnect=self._disconnected)
        self._heartbeat_call = self.clock.callLater(self.config.heartbeat_interval, self._heartbeat)
        self.session.start()

    def stop(self, reason: str = "agent stopping") -> Any:
        """Kill running commands, say bye, disconnect.  Returns a Deferred."""
        self._stopping = True
        if self._heartbeat_call is not None and self._heartbeat_call.active():
            self._heartbeat_call.cancel()
        for command in list(self.commands.values()):
            command.kill(signal.SIGKILL)  # no time for a grace period: we are leaving
        for sender in list(self.senders.values()):
            sender.cancel(ErrorCode.IO_ERROR, reason)
        for receiver in list(self.receivers.values()):
            receiver.fail(ErrorCode.IO_ERROR, reason)
        self._broadcast(Bye(self.agent_id, reason))
        return self.session.stop()

    def _connected(self, protocol: Any) -> None:
        log.info("connected to the broker as {vm}", vm=self.agent_id)
        self._broadcast(self._hello())
        self._flush_replies()
        for sender in list(self.senders.values()):
            sender.resync()

    def _disconnected(self, reason: Any) -> None:
        # Whatever was not confirmed may have died with the connection: resend
        # it first, in the original order, on the next one.
        unconfirmed = [reply for reply in self._unconfirmed if not reply.confirmed]
        self._unconfirmed.clear()
        self._unsent.extendleft(reversed(unconfirmed))

    def _hello(self) -> Hello:
        return Hello(
            agent_id=self.agent_id,
            version=__version__,
            capabilities={
                "protocol": PROTOCOL_VERSION,
                "commands": sorted(self.HANDLERS),
                "max_file_size": self.config.max_file_size,
            },
            host_info={
                "hostname": socket.gethostname(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "cpus": os.cpu_count() or 1,
                "work_dir": self.work_dir,
            },
            heartbeat_interval=self.config.heartbeat_interval,
        )

    def _heartbeat(self) -> None:
        self._heartbeat_call = self.clock.callLater(self.config.heartbeat_interval, self._heartbeat)
        if self.session.is_connected:
            self._broadcast(
                Heartbeat(self.agent_id, len(self.commands), self.config.heartbeat_interval),
                queue=False,
            )

    # --- sending ----------------------------------------------------------------

    def _broadcast(self, message: Message, queue: bool = True) -> None:
        """Presence messages: to the presence topic (everyone) and our to_host queue."""
        body = encode(message)
        if not self.session.is_connected:
            return
        try:
            self.session.send(PRESENCE, body)
            if queue:
                self.session.send(self._reply_to, body)
        except ConnectionError:
            pass

    def reply(self, message: Message, payload: bytes = b"") -> None:
        """Send to the host, and keep it until the broker confirms it.

        A reply written into a connection that turns out to be dead (the VM
        was restored from a snapshot, the broker froze) is sent again on the
        next connection; the host drops the duplicates that this can cause.
        """
        body = encode(message, payload)
        if self._outbox_bytes + len(body) > _OUTBOX_LIMIT and isinstance(message, Output):
            log.warn("outbox full: dropping {n} bytes of output", n=len(payload))
            return
        self._unsent.append(_Reply(body))
        self._outbox_bytes += len(body)
        self._flush_replies()

    def _flush_replies(self) -> None:
        while self._unsent and self.session.is_connected:
            reply = self._unsent[0]
            try:
                confirmed = self.session.send(self._reply_to, reply.body, receipt=True)
            except ConnectionError:
                return  # gone again: the next connection sends the rest
            self._unsent.popleft()
            self._unconfirmed.append(reply)
            confirmed.addCallbacks(self._reply_confirmed, _ignore, callbackArgs=(reply,))

    def _reply_confirmed(self, _: Any, reply: _Reply) -> None:
        reply.confirmed = True
        while self._unconfirmed and self._unconfirmed[0].confirmed:
            self._outbox_bytes -= len(self._unconfirmed.popleft().body)

    def _send_transfer(self, message: Message, payload: bytes = b"") -> None:
        """Transfer traffic: never queued (the transfer resyncs after a reconnect)."""
        self.session.send(self._reply_to, encode_parts(message, payload))

    # --- receiving --------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        trusted = self.config.trusted_senders
        if trusted is not None and frame.headers.get("user-id") not in trusted:
            sender = frame.headers.get("user-id")
            log.warn("refused a request from untrusted login {sender}", sender=sender)
            self.reply(
                Error(None, ErrorCode.FORBIDDEN, f"login {sender!r} may not command this VM")
            )
            return
        try:
            message, payload = decode(frame.body)
        except ProtocolError as problem:
            log.warn("bad request: {problem}", problem=problem)
            self.reply(Error(problem.seq, problem.code, problem.message))
            return
        handler_name = self.HANDLERS.get(message.TYPE)
        seq = getattr(message, "seq", None)
        if handler_name is None:
            self.reply(
                Error(seq, ErrorCode.UNKNOWN_TYPE, f"the agent does not handle {message.TYPE}")
            )
            return
        handler: Callable[[Any, bytes], None] = getattr(self, handler_name)
        try:
            handler(message, payload)
        except Exception as problem:
            log.failure("handler for {type} failed", type=message.TYPE)
            self.reply(Error(seq, ErrorCode.INTERNAL, f"{type(problem).__name__}: {problem}"))

    def _first_time(self, seq: int) -> bool:
        """False for a request id seen before (a broker redelivery)."""
        if seq in self._seen:
            return False
        self._seen[seq] = None
        if len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)
        return True

    def _on_ping(self, message: Ping, payload: bytes) -> None:
        self.reply(Pong(message.seq))

    def _on_who(self, message: Who, payload: bytes) -> None:
        self.reply(self._hello())

    def _on_hello_ack(self, message: HelloAck, payload: bytes) -> None:
        log.debug("host acknowledged our hello")

    # --- commands ---------------------------------------------------------------

    def _on_run(self, message: Run, payload: bytes) -> None:
        seq = message.seq
        if not self._first_time(seq):
            return
        if (message.argv is None) == (message.shell is None):
            self.reply(Error(seq, ErrorCode.BAD_REQUEST, "run needs exactly one of argv or shell"))
            return
        if message.argv is not None and not message.argv:
            self.reply(Error(seq, ErrorCode.BAD_REQUEST, "run: argv is empty"))
            return
        if message.timeout is not None and message.timeout <= 0:
            self.reply(Error(seq, ErrorCode.BAD_REQUEST, f"run: timeout {message.timeout} <= 0"))
            return
        stdin = message.stdin.encode("utf-8")
        if len(stdin) > self.config.max_stdin:
            self.reply(
                Error(seq, ErrorCode.TOO_LARGE, f"stdin exceeds {self.config.max_stdin} bytes")
            )
            return
        cwd_fd = -1
        try:
            if message.cwd:
                cwd_fd = open_confined_dir(self.work_dir, message.cwd)
        except PathRefused as problem:
            self.reply(Error(seq, ErrorCode.PATH_REFUSED, str(problem)))
            return
        except OSError as problem:
            self.reply(Error(seq, ErrorCode.NOT_FOUND, f"cwd {message.cwd}: {problem.strerror}"))
            return
        # The child changes into the very directory we opened (the descriptor
        # is still open in it until exec), not into a path re-resolved later.
        cwd = f"/proc/self/fd/{cwd_fd}" if cwd_fd >= 0 else self.work_dir
        argv = message.argv if message.argv is not None else ["/bin/sh", "-c", message.shell]
        env = dict(os.environ)
        env.update(message.env or {})
        batch_numbers = itertools.count(1)
        batchers = {
            stream: OutputBatcher(
                self.clock,
                self._output_sender(seq, stream, batch_numbers),
                self.output_max_bytes,
                self.output_max_delay,
            )
            for stream in ("stdout", "stderr")
        }
        try:
            command = RunningCommand(
                self.reactor,
                argv,
                lambda stream, data: batchers[stream].feed(data),
                cwd=cwd,
                env=env,
                stdin=stdin,
                timeout=message.timeout,
                kill_grace=self.config.kill_grace,
                clock=self.clock,
            )
        except OSError as problem:
            self.reply(
                Error(seq, ErrorCode.SPAWN_FAILED, f"cannot run {shlex.join(argv)}: {problem}")
            )
            return
        finally:
            if cwd_fd >= 0:
                os.close(cwd_fd)
        self.commands[seq] = command
        log.info("run {seq}: {argv} (pid {pid})", seq=seq, argv=shlex.join(argv), pid=command.pid)
        command.finished.addCallback(self._command_finished, seq, batchers)

    def _output_sender(
        self, seq: int, stream: str, numbers: Iterator[int]
    ) -> Callable[[bytes], None]:
        return lambda data: self.reply(Output(seq, stream, next(numbers)), data)

    def _command_finished(
        self, result: CommandResult, seq: int, batchers: dict[str, OutputBatcher]
    ) -> None:
        self.commands.pop(seq, None)
        for batcher in batchers.values():
            batcher.close()
        self.reply(
            Exit(
                re=seq,
                code=result.code,
                signal=result.signal,
                rusage=result.rusage,
                wall_time=result.wall_time,
                timed_out=result.timed_out,
                killed=result.killed,
            )
        )

    def _on_kill(self, message: Kill, payload: bytes) -> None:
        if not self._first_time(message.seq):
            return
        command = self.commands.get(message.target)
        if command is None:
            self.reply(
                Error(message.seq, ErrorCode.NOT_FOUND, f"no running command {message.target}")
            )
            return
        if not 1 <= message.signal < 65:
            self.reply(Error(message.seq, ErrorCode.BAD_REQUEST, f"bad signal {message.signal}"))
            return
        command.kill(message.signal)
        self.reply(Ok(message.seq, {"target": message.target, "pid": command.pid}))

    # --- transfers --------------------------------------------------------------

    def _on_put(self, message: Put, payload: bytes) -> None:
        tid = message.transfer_id
        receiver = self.receivers.get(tid)
        if receiver is not None:
            receiver.on_sync()  # a repeated put: tell the host where to resume
            return
        if message.size > self.config.max_file_size or message.size < 0:
            self._refuse(
                tid,
                ErrorCode.TOO_LARGE,
                f"{message.size} bytes exceeds the agent's limit of {self.config.max_file_size}",
            )
            return
        try:
            target = resolve(self.work_dir, message.path, create_parents=True)
            receiver = TransferReceiver(
                tid,
                target.path,
                self._send_transfer,
                self.clock,
                max_size=message.size,
                mode=message.mode,
                digest=digest_for(self.clock),
                dir_fd=target.dir_fd,  # the receiver owns (and closes) it
            )
        except PathRefused as problem:
            self._refuse(tid, ErrorCode.PATH_REFUSED, str(problem))
            return
        except OSError as problem:
            self._refuse(tid, ErrorCode.IO_ERROR, f"{message.path}: {problem.strerror}")
            return
        self.receivers[tid] = receiver
        receiver.done.addBoth(self._transfer_over, self.receivers, tid)
        receiver.on_sync()

    def _on_get(self, message: Get, payload: bytes) -> None:
        tid = message.transfer_id
        sender = self.senders.get(tid)
        if sender is not None:
            sender.on_ack(DataAck(tid, message.offset, sync=True))
            return
        try:
            sender = TransferSender(
                tid,
                message.path,
                self._send_transfer,
                None,
                self.clock,
                chunk_size=max(1024, min(message.chunk_size, 4 * 1024 * 1024)),
                digest=digest_for(self.clock),
                fd=open_confined(self.work_dir, message.path),
                when_drained=getattr(self.session, "when_drained", None),  # stand-ins lack it
            )
        except PathRefused as problem:
            self._refuse(tid, ErrorCode.PATH_REFUSED, str(problem))
            return
        except FileNotFoundError:
            self._refuse(tid, ErrorCode.NOT_FOUND, f"no such file: {message.path}")
            return
        except OSError as problem:
            self._refuse(tid, ErrorCode.IO_ERROR, f"{message.path}: {problem.strerror}")
            return
        limit = min(self.config.max_file_size, message.max_size or self.config.max_file_size)
        if sender.size > limit:
            sender.done.addErrback(lambda failure: None)  # reported by cancel()
            sender.cancel(ErrorCode.TOO_LARGE, f"{sender.size} bytes exceeds the limit {limit}")
            return
        self.senders[tid] = sender
        sender.done.addBoth(self._transfer_over, self.senders, tid)
        sender.start(message.offset)

    def _refuse(self, tid: str, code: str, text: str) -> None:
        log.warn("transfer {tid} refused: {text}", tid=tid, text=text)
        self.reply(TransferFailed(tid, code, text))

    def _transfer_over(self, result: Any, table: dict[str, Any], tid: str) -> None:
        """Keep a finished transfer a while so repeated messages get answers."""
        self.clock.callLater(_FINISHED_MEMORY, table.pop, tid, None)
        return None  # failures were reported to the host by the transfer itself

    def _on_data(self, message: Data, payload: bytes) -> None:
        receiver = self.receivers.get(message.transfer_id)
        if receiver is not None:
            receiver.on_data(message, payload)

    def _on_data_end(self, message: DataEnd, payload: bytes) -> None:
        receiver = self.receivers.get(message.transfer_id)
        if receiver is not None:
            receiver.on_end(message)

    def _on_data_sync(self, message: DataSync, payload: bytes) -> None:
        receiver = self.receivers.get(message.transfer_id)
        if receiver is not None:
            receiver.on_sync(message)

    def _on_data_ack(self, message: DataAck, payload: bytes) -> None:
        sender = self.senders.get(message.transfer_id)
        if sender is not None:
            sender.on_ack(message)

    def _on_transfer_done(self, message: TransferDone, payload: bytes) -> None:
        sender = self.senders.get(message.transfer_id)
        if sender is not None:
            sender.on_done(message)

    def _on_transfer_failed(self, message: TransferFailed, payload: bytes) -> None:
        sender = self.senders.get(message.transfer_id)
        if sender is not None:
            sender.on_failed(message)
        receiver = self.receivers.get(message.transfer_id)
        if receiver is not None:
            receiver.on_failed(message)

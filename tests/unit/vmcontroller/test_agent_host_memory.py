"""The host controller and the guest agent wired through the in-memory broker.

Everything here runs on a :class:`twisted.internet.task.Clock`: heartbeats,
liveness deadlines and transfer resyncs move only when the test advances time.
Commands (real processes) are exercised by the integration tests.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from twisted.internet.task import Clock

from tests.unit.vmcontroller.memory import MemoryBroker
from vmcontroller.destinations import to_guest, to_host
from vmcontroller.guest import agent as agent_module
from vmcontroller.guest import paths
from vmcontroller.guest.agent import Agent
from vmcontroller.guest.config import AgentConfig
from vmcontroller.host.controller import HostController, VMLostError
from vmcontroller.protocol import (
    ConnectionLostError,
    Error,
    ErrorCode,
    Hello,
    RemoteError,
    decode,
)
from vmcontroller.transfer import TransferError

VM = "vm1"


class World:
    def __init__(self, tmp_path, heartbeat=1.0, chunk_size=1024, window=4):
        self.clock = Clock()
        self.broker = MemoryBroker()
        self.work = tmp_path / "work"
        self.local = tmp_path / "local"
        self.local.mkdir()
        config = AgentConfig(
            broker_host="127.0.0.1",
            broker_port=1,
            login="l",
            passcode="p",
            vm_id=VM,
            work_dir=str(self.work),
            heartbeat_interval=heartbeat,
            max_file_size=1_000_000,
        )
        self.agent_session = self.broker.session("agent")
        self.host_session = self.broker.session("host")
        self.agent = Agent(config, self.agent_session, reactor=None, clock=self.clock)
        self.host = HostController(
            self.host_session,
            self.clock,
            chunk_size=chunk_size,
            window=window,
            transfer_sync_after=2.0,
            first_seq=100,
        )
        self.lost: list[str] = []
        self.host.add_listener(on_lost=self.lost.append)
        self.host.start()
        self.agent.start()
        self.broker.flush()

    def settle(self, seconds: float = 0.0) -> None:
        self._until_quiet()
        if seconds:
            self.clock.advance(seconds)
            self._until_quiet()

    def _until_quiet(self) -> None:
        """Deliver, end the reactor turn (coalesced transfer acks go out), repeat."""
        while True:
            self.broker.flush()
            now = self.clock.seconds()
            if not any(call.getTime() <= now for call in self.clock.getDelayedCalls()):
                return
            self.clock.advance(0)


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def result_of(deferred):
    results = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_hello_is_seen_and_vm_listed(world):
    hello = result_of(world.host.wait_for_hello(VM, timeout=5))
    world.settle()
    assert isinstance(hello, Hello) and hello.agent_id == VM
    assert "run" in hello.capabilities["commands"]
    assert [s.vm_id for s in world.host.connected_vms()] == [VM]


def test_wait_for_hello_times_out_for_an_unknown_vm(world):
    waiting = world.host.wait_for_hello("nobody", timeout=3)
    world.settle(3.1)
    failure = result_of(waiting)
    assert "no hello from VM nobody" in str(failure.value)


def test_ping_round_trip(world):
    pinged = world.host.ping(VM)
    world.settle()
    assert result_of(pinged) == 0.0


def test_unknown_and_malformed_requests_get_error_replies(world):
    world.host.watch(VM)
    world.settle()
    world.host_session.send(to_guest(VM), b'{"type":"reboot","v":1,"seq":5}')
    world.host_session.send(to_guest(VM), b"not json at all")
    world.host_session.send(to_guest(VM), b'{"type":"run","v":1,"seq":6,"argv":"ls"}')
    world.settle()
    replies = [decode(body)[0] for dest, body in world.agent_session.sent if dest == to_host(VM)]
    errors = [(m.re, m.code) for m in replies if isinstance(m, Error)]
    assert errors == [
        (5, ErrorCode.UNKNOWN_TYPE),
        (None, ErrorCode.MALFORMED),
        (6, ErrorCode.MALFORMED),
    ]


def test_run_with_bad_arguments_is_refused_with_a_code(world):
    done = world.host.run(VM, argv=["true"], cwd="../etc")
    world.settle()
    failure = result_of(done)
    assert failure.check(RemoteError) and failure.value.code == ErrorCode.PATH_REFUSED


def test_heartbeat_loss_is_reported_within_three_intervals(world):
    result_of(world.host.wait_for_hello(VM, timeout=5))
    world.settle(0.9)
    pending = world.host.ping(VM)
    world.agent_session.disconnect()  # the agent goes silent (no bye)
    world.agent._heartbeat_call.cancel()
    silent_since = world.clock.seconds()
    while not world.lost and world.clock.seconds() - silent_since < 10:
        world.settle(0.1)
    assert world.lost == [VM]
    assert world.clock.seconds() - silent_since <= 3.0
    assert result_of(pending).check(VMLostError)
    assert world.host.connected_vms() == []


def test_heartbeats_keep_the_vm_alive(world):
    result_of(world.host.wait_for_hello(VM, timeout=5))
    for _ in range(100):
        world.settle(0.5)
    assert world.lost == []


def test_losing_the_host_connection_fails_pending_requests(world):
    pending = world.host.ping(VM)
    world.host_session.disconnect()
    assert result_of(pending).check(ConnectionLostError)
    assert result_of(world.host.ping(VM)).check(ConnectionLostError)


def _file(path, size, seed=1):
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    path.write_bytes(data[:size])
    return hashlib.sha256(data[:size]).hexdigest()


def test_put_and_get_round_trip(world):
    digest = _file(world.local / "in.bin", 10_000)
    put = world.host.put_file(VM, str(world.local / "in.bin"), "sub/dir/in.bin")
    world.settle()
    assert result_of(put).sha256 == digest
    assert hashlib.sha256((world.work / "sub/dir/in.bin").read_bytes()).hexdigest() == digest
    got = world.host.get_file(VM, "sub/dir/in.bin", str(world.local / "out.bin"))
    world.settle()
    assert result_of(got).sha256 == digest
    assert (world.local / "out.bin").read_bytes() == (world.local / "in.bin").read_bytes()
    assert not [p for p in os.listdir(world.local) if p.endswith(".part")]


def test_empty_file_transfers(world):
    (world.local / "empty").write_bytes(b"")
    put = world.host.put_file(VM, str(world.local / "empty"), "empty")
    world.settle()
    assert result_of(put).size == 0 and (world.work / "empty").read_bytes() == b""


@pytest.mark.parametrize("direction", ["put", "get"])
def test_transfer_resumes_after_the_broker_loses_everything(world, direction):
    digest = _file(world.local / "big", 50_000)
    if direction == "get":
        (world.work).mkdir(exist_ok=True)
        (world.work / "big").write_bytes((world.local / "big").read_bytes())
        done = world.host.get_file(VM, "big", str(world.local / "copy"))
        target = world.local / "copy"
    else:
        done = world.host.put_file(VM, str(world.local / "big"), "big")
        target = world.work / "big"
    for _ in range(5):  # move a few chunks, then "kill the broker"
        world.broker.flush(limit=3, strict=False)
    world.broker.restart()
    assert not done.called
    world.clock.advance(1)
    world.broker.reconnect_all()
    for _ in range(20):
        world.settle(1.0)
        if done.called:
            break
    assert result_of(done).sha256 == digest
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest


def test_transfer_survives_lost_and_duplicated_chunks(world):
    digest = _file(world.local / "f", 40_000)
    seen = []

    def flaky(destination, body):
        seen.append(body)
        if b'"type":"data"' in body[:40] and len(seen) % 7 == 0:
            return False  # lose every 7th message
        return True

    world.broker.filter = flaky
    done = world.host.put_file(VM, str(world.local / "f"), "f")
    for _ in range(60):
        world.settle(1.0)
        if done.called:
            break
    assert result_of(done).sha256 == digest


@pytest.mark.parametrize(
    "path", ["../escape", "/etc/passwd", "a/../../b", "link/inside", "outlink"]
)
def test_paths_outside_the_work_dir_are_refused_both_ways(world, tmp_path, path):
    world.work.mkdir(exist_ok=True)
    (world.work / "link").symlink_to(tmp_path)
    (world.work / "outlink").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("secret")
    _file(world.local / "x", 100)
    put = world.host.put_file(VM, str(world.local / "x"), path)
    got = world.host.get_file(VM, path, str(world.local / "y"))
    world.settle()
    for outcome in (result_of(put), result_of(got)):
        assert outcome.check(TransferError) and outcome.value.code == ErrorCode.PATH_REFUSED
    assert (tmp_path / "elsewhere").read_text() == "secret"


def test_size_limit_refuses_big_uploads_and_downloads(world):
    _file(world.local / "huge", 1_000_001)
    put = world.host.put_file(VM, str(world.local / "huge"), "huge")
    world.work.mkdir(exist_ok=True)
    (world.work / "small").write_bytes(b"x" * 5000)
    got = world.host.get_file(VM, "small", str(world.local / "s"), max_size=4000)
    world.settle()
    for outcome in (result_of(put), result_of(got)):
        assert outcome.check(TransferError) and outcome.value.code == ErrorCode.TOO_LARGE


def test_get_of_a_missing_file_says_not_found(world):
    got = world.host.get_file(VM, "nothing-here", str(world.local / "n"))
    world.settle()
    failure = result_of(got)
    assert failure.value.code == ErrorCode.NOT_FOUND
    assert not (world.local / "n").exists()


def test_redelivered_requests_are_not_run_twice(world):
    world.host.watch(VM)
    world.settle()
    body = b'{"type":"kill","v":1,"seq":41,"target":999}'
    world.host_session.send(to_guest(VM), body)
    world.host_session.send(to_guest(VM), body)  # the broker redelivers it
    world.settle()
    replies = [decode(b)[0] for d, b in world.agent_session.sent if d == to_host(VM)]
    assert [(m.re, m.code) for m in replies if isinstance(m, Error)] == [(41, ErrorCode.NOT_FOUND)]


def test_replies_wait_in_the_outbox_while_the_broker_is_away(world):
    from vmcontroller.protocol import Pong

    world.agent_session.disconnect()
    world.agent.reply(Pong(1))
    world.agent.reply(Pong(2))
    sent_before = len(world.agent_session.sent)
    world.agent_session.connect()
    pongs = [decode(b)[0] for _, b in world.agent_session.sent[sent_before:]]
    assert [m.re for m in pongs if isinstance(m, Pong)] == [1, 2]


def test_agent_refuses_requests_from_untrusted_logins(tmp_path):
    import dataclasses

    world = World(tmp_path)
    world.agent.config = dataclasses.replace(world.agent.config, trusted_senders=["host"])
    intruder = world.broker.session("intruder")
    intruder.start()
    intruder.send(to_guest(VM), b'{"type":"run","v":1,"seq":9,"shell":"rm -rf /"}')
    world.settle()
    replies = [decode(b)[0] for d, b in world.agent_session.sent if d == to_host(VM)]
    assert [(m.re, m.code) for m in replies if isinstance(m, Error)] == [
        (None, ErrorCode.FORBIDDEN)
    ]
    assert world.agent.commands == {}
    pinged = world.host.ping(VM)  # the real host is still obeyed
    world.settle()
    assert result_of(pinged) == 0.0


def test_host_ignores_messages_forged_by_another_login(tmp_path):
    from vmcontroller.destinations import PRESENCE
    from vmcontroller.protocol import Heartbeat, encode

    world = World(tmp_path)
    world.host.vm_logins = {VM: "agent", "victim": "victim-login"}
    intruder = world.broker.session("intruder")
    intruder.start()
    intruder.send(PRESENCE, encode(Heartbeat("victim")))
    world.settle()
    assert "victim" not in world.host.vms
    pinged = world.host.ping(VM)  # the real VM's replies still count
    world.settle()
    assert result_of(pinged) == 0.0


def test_a_new_host_adopts_a_run_started_by_an_earlier_one(world):
    from vmcontroller.protocol import Exit, Output

    out = []
    adopted = world.host.adopt_run(VM, 77, on_output=lambda s, d: out.append(d))
    world.agent.reply(Output(77, "stdout"), b"still here\n")
    world.agent.reply(Exit(77, 0, None, {}, 1.0))
    world.settle()
    assert result_of(adopted).code == 0 and out == [b"still here\n"]


def test_liveness_on_hold_while_paused(world):
    result_of(world.host.wait_for_hello(VM, timeout=5))
    world.host.hold_liveness(VM)
    world.agent._heartbeat_call.cancel()
    world.settle(10.0)
    assert world.lost == []
    world.host.release_liveness(VM)
    world.settle(2.6)
    assert world.lost == [VM]


def test_unconfirmed_replies_are_resent_and_duplicates_dropped(world):
    """A reply written into a connection that died before the broker confirmed it."""
    from vmcontroller.protocol import Exit, Output

    out = []
    adopted = world.host.adopt_run(VM, 88, on_output=lambda s, d: out.append(d))
    world.broker.hold_receipts = True  # the broker froze: no RECEIPT comes back
    world.agent.reply(Output(88, "stdout", 1), b"first\n")
    world.agent.reply(Output(88, "stdout", 2), b"second\n")
    world.settle()  # ...yet the frames did get through to the host this time
    world.agent_session.disconnect()  # heart-beats notice the frozen broker
    world.broker.hold_receipts = False
    world.agent_session.connect()
    world.agent.reply(Exit(88, 0, None, {}, 1.0))
    world.settle()
    resent = [decode(b)[0] for d, b in world.agent_session.sent if d == to_host(VM)]
    assert [m.index for m in resent if isinstance(m, Output)] == [1, 2, 1, 2]
    assert out == [b"first\n", b"second\n"] and result_of(adopted).code == 0
    assert world.agent._outbox_bytes == 0


@pytest.mark.parametrize("direction", ["put", "get"])
def test_a_symlink_swapped_in_after_the_check_does_not_move_a_transfer_outside(
    world, tmp_path, monkeypatch, direction
):
    """The agent checks "d/f.bin" (d a directory in the work dir); d is then
    replaced by a symlink to a directory outside.  The transfer still uses the
    directory that was checked."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.bin").write_bytes(b"outside")
    (world.work / "d").mkdir(parents=True)
    digest = _file(world.local / "f.bin", 10_000)
    if direction == "get":
        (world.work / "d" / "f.bin").write_bytes((world.local / "f.bin").read_bytes())

    def swap() -> None:
        os.rename(world.work / "d", world.work / "d-real")
        (world.work / "d").symlink_to(outside)

    def after(function):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            swap()
            return result

        return wrapper

    if direction == "put":
        monkeypatch.setattr(agent_module, "resolve", after(agent_module.resolve))
        done = world.host.put_file(VM, str(world.local / "f.bin"), "d/f.bin")
    else:
        real_open_in = paths.open_in
        monkeypatch.setattr(paths, "open_in", lambda *a: (swap(), real_open_in(*a))[1])
        done = world.host.get_file(VM, "d/f.bin", str(world.local / "back.bin"))
    world.settle()
    assert result_of(done).sha256 == digest
    assert (outside / "f.bin").read_bytes() == b"outside"
    assert os.listdir(outside) == ["f.bin"]  # no temporary file either
    assert hashlib.sha256((world.work / "d-real" / "f.bin").read_bytes()).hexdigest() == digest
    if direction == "get":
        assert (world.local / "back.bin").read_bytes() == (world.local / "f.bin").read_bytes()


def test_one_liveness_timer_that_messages_do_not_move(world):
    """Heartbeats only note the time: the one liveness timer is not reset per
    message (a Twisted timer moved later still wakes the reactor at its old
    time), it fires at its deadline, finds the VM alive and re-arms."""

    def liveness_calls():
        return [c for c in world.clock.getDelayedCalls() if c.func == world.host._check_liveness]

    result_of(world.host.wait_for_hello(VM, timeout=5))
    world.settle()
    (first,) = liveness_calls()
    armed_at = first.getTime()
    world.settle(1.0)  # a heartbeat arrives
    world.settle(1.0)  # another
    assert liveness_calls() == [first] and first.getTime() == armed_at
    world.settle(armed_at - world.clock.seconds())  # it fires: alive, re-armed later
    (second,) = liveness_calls()
    assert second is not first and second.getTime() > armed_at
    assert world.lost == []

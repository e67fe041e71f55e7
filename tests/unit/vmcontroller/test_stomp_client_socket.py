"""The STOMP client on a real reactor and loopback socket: file-sized bodies
are received in place (recv_into the parser's body buffer) and sent with
sendmsg, and nothing is lost, reordered or joined wrongly on the way."""

from __future__ import annotations

import hashlib
import queue
import socket

import pytest
from twisted.internet.protocol import ClientFactory

from tests.unit.stomp.test_sockets import _ThreadReactor
from vmcontroller.stomp.client import HEAD_READ_SIZE, StompClientProtocol, StompConfig
from vmcontroller.stomp.codec import Frame, FrameParser, encode_frame


@pytest.fixture
def wire():
    """(reactor, connected client protocol, the fake broker's plain socket)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    hr = _ThreadReactor()
    made: queue.Queue = queue.Queue()

    def build(addr):
        proto = StompClientProtocol(StompConfig("l", "p", heartbeat=0), hr.reactor)
        proto.handshake.addCallback(made.put)
        return proto

    factory = ClientFactory()
    factory.buildProtocol = build
    hr.call(hr.reactor.connectTCP, "127.0.0.1", listener.getsockname()[1], factory)
    peer, _ = listener.accept()
    parser = FrameParser("1.2")
    while not parser.feed(peer.recv(65536)):
        pass  # the CONNECT frame
    peer.sendall(encode_frame(Frame("CONNECTED", {"version": "1.2"}), "1.2"))
    proto = made.get(timeout=10)
    yield hr, proto, peer
    hr.call(proto.transport.abortConnection)
    hr.stop()
    peer.close()
    listener.close()


def _body(n: int, size: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest() * (size // 32)


def test_large_bodies_arrive_intact_in_place(wire):
    hr, proto, peer = wire
    got: queue.Queue = queue.Queue()
    sub = hr.call(proto.subscribe, "/queue/q", lambda frame: got.put(bytes(frame.body)))
    in_place = []
    parser = proto._parser
    real = parser.body_received
    parser.body_received = lambda count: in_place.append(count) or real(count)
    sizes = [256 * 1024, 1024 * 1024, 300_000 - 300_000 % 32, 64, 256 * 1024]
    stream = b"".join(
        encode_frame(
            Frame("MESSAGE", {"subscription": sub, "destination": "/queue/q", "message-id": str(n)},
                  _body(n, size)), "1.2",
        ) + b"\n"  # a heart-beat EOL between frames
        for n, size in enumerate(sizes)
    )  # fmt: skip
    for start in range(0, len(stream), 100_003):  # odd pieces: frames split anywhere
        peer.sendall(stream[start : start + 100_003])
    for n, size in enumerate(sizes):
        assert got.get(timeout=10) == _body(n, size)
    assert sum(in_place) > 0  # the large bodies went through recv_into


def test_large_sends_are_ordered_and_complete(wire):
    hr, proto, peer = wire
    # More than the socket buffers hold: some writes are partial and
    # queued; odd ones are (header, payload) parts like file chunks.
    bodies = [_body(n, 512 * 1024) for n in range(64)]  # 32 MiB
    transport = proto.transport
    queued = []
    real = transport.writeSequence
    transport.writeSequence = lambda parts: queued.append(len(parts)) or real(parts)

    def send_all():
        for n, body in enumerate(bodies):
            proto.send("/queue/q", (body[:100], body[100:]) if n % 2 else body)

    hr.call(send_all)
    parser = FrameParser("1.2")
    frames = []
    while len(frames) < len(bodies):
        frames += parser.feed(peer.recv(1 << 20))
    assert [bytes(f.body) for f in frames] == bodies
    assert queued  # the kernel took only part at some point: the rest was queued


def test_bodies_after_a_full_wake_up_are_received_in_place(wire):
    """A wake-up ending on a complete body is followed by a header-block read.

    Twisted's read budget (1 MiB) ends a wake-up after a few 256 KiB bodies;
    a full-size read at the start of the next one went through ``feed``
    (copied into the parser's buffer, then out of it into the body).
    """
    hr, proto, peer = wire
    got: queue.Queue = queue.Queue()
    sub = hr.call(proto.subscribe, "/queue/q", lambda frame: got.put(bytes(frame.body)))

    def frame(n: int) -> bytes:
        headers = {"subscription": sub, "destination": "/queue/q", "message-id": str(n)}
        return encode_frame(Frame("MESSAGE", headers, _body(n, 256 * 1024)), "1.2")

    peer.sendall(frame(0))
    assert got.get(timeout=10) == _body(0, 256 * 1024)
    parser = proto._parser
    fed = []
    real = parser.feed
    parser.feed = lambda data: fed.append(len(data)) or real(data)
    count = 16  # 4 MiB: four full wake-ups at least
    peer.sendall(b"".join(frame(n) for n in range(1, count + 1)))
    for n in range(1, count + 1):
        assert got.get(timeout=10) == _body(n, 256 * 1024)
    # Header blocks, NULs and the first bytes of each body only (8 KiB reads);
    # the rest of every body went through recv_into.
    assert sum(fed) <= (count + 1) * HEAD_READ_SIZE, fed  # + the last NUL


def test_when_drained_reports_once_twisted_has_sent_everything(wire):
    hr, proto, peer = wire
    assert hr.call(proto.when_drained, lambda: None) is True  # nothing queued
    drained: queue.Queue = queue.Queue()
    body = _body(1, 1024 * 1024)

    def flood():
        """More than the socket buffers hold, so Twisted queues the rest."""
        for _ in range(16):
            proto.send("/queue/q", body)
        backlog = len(proto.transport.dataBuffer) + proto.transport._tempDataLen
        return backlog, proto.when_drained(lambda: drained.put(proto.transport.dataBuffer))

    backlog, now = hr.call(flood)
    assert backlog > 0 and now is False
    assert drained.empty()
    parser = FrameParser("1.2")
    frames = []
    while len(frames) < 16:
        frames += parser.feed(peer.recv(1 << 20))
    assert drained.get(timeout=10) == b""  # called once Twisted's buffer was empty
    assert all(bytes(f.body) == body for f in frames)
    assert proto.transport.producer is None  # its helper producer is gone

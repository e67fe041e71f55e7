"""enlarge_buffers and write_now on real loopback sockets (write_now with a real reactor)."""

from __future__ import annotations

import queue
import socket
import threading

import pytest

from vmcontroller.stomp.sockets import enlarge_buffers, write_now


def _sizes(sock):
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    )


def test_buffers_grow_to_the_request_or_the_kernel_cap():
    with socket.socket() as sock:
        before = _sizes(sock)
        enlarge_buffers(sock, 1024 * 1024)
        after = _sizes(sock)
    # Linux doubles the request (bookkeeping) and caps it at [rw]mem_max.
    with open("/proc/sys/net/core/wmem_max") as w, open("/proc/sys/net/core/rmem_max") as r:
        caps = (int(w.read()), int(r.read()))
    for old, new, cap in zip(before, after, caps, strict=True):
        assert new >= min(1024 * 1024, cap) and new >= old


def test_a_closed_socket_is_left_alone_and_bad_sizes_refused():
    sock = socket.socket()
    sock.close()
    enlarge_buffers(sock)  # best effort: no exception
    with (
        socket.socket() as other,
        pytest.raises(ValueError, match="positive number of bytes, got -1"),
    ):
        enlarge_buffers(other, -1)


class _ThreadReactor:
    """A real epoll reactor in a thread; call() runs a function in it and waits."""

    def __init__(self) -> None:
        from twisted.internet.epollreactor import EPollReactor

        self.reactor = EPollReactor()
        self.thread = threading.Thread(
            target=self.reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
        )
        self.thread.start()

    def call(self, function, *args):
        results: queue.Queue = queue.Queue()

        def run():
            try:
                results.put((True, function(*args)))
            except Exception as error:  # handed to the test thread
                results.put((False, error))

        self.reactor.callFromThread(run)
        ok, value = results.get(timeout=30)
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        self.reactor.callFromThread(self.reactor.stop)
        self.thread.join(10)


@pytest.fixture
def connection():
    """(reactor, Twisted transport, the peer's plain socket) over loopback."""
    from twisted.internet.protocol import ClientFactory, Protocol

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    hr = _ThreadReactor()
    made: queue.Queue = queue.Queue()

    class Client(Protocol):
        def connectionMade(self):
            made.put(self.transport)

    factory = ClientFactory.forProtocol(Client)
    hr.call(hr.reactor.connectTCP, "127.0.0.1", listener.getsockname()[1], factory)
    peer, _ = listener.accept()
    transport = made.get(timeout=10)
    yield hr, transport, peer
    hr.call(transport.abortConnection)
    hr.stop()
    peer.close()
    listener.close()


def _receive(peer, size):
    data = bytearray()
    while len(data) < size:
        chunk = peer.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def test_write_now_reaches_the_socket_before_the_reactor_turns(connection):
    hr, transport, peer = connection
    peer.setblocking(False)

    def write_and_peek():
        write_now(transport, b"\n")
        try:
            return peer.recv(10)  # still inside the same reactor call
        except BlockingIOError:
            return b""

    assert hr.call(write_and_peek) == b"\n"
    assert hr.call(lambda: transport.write(b"x") or _peek(peer)) == b""  # Twisted queues


def _peek(peer):
    try:
        return peer.recv(10)
    except BlockingIOError:
        return b""


def test_write_now_keeps_order_when_the_kernel_takes_only_part(connection):
    """A write larger than the socket buffers is partly sent at once and the
    rest queued; what follows queues behind it, in order."""
    hr, transport, peer = connection
    big = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than both buffers hold
    hr.call(write_now, transport, big)
    assert hr.call(lambda: len(transport.dataBuffer) + sum(map(len, transport._tempDataBuffer))) > 0
    hr.call(write_now, transport, b"tail")
    hr.call(transport.write, b"end")
    assert _receive(peer, len(big) + 7) == big + b"tail" + b"end"

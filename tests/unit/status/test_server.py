"""The status server over real HTTP parsing on in-memory transports, with a Clock."""

from __future__ import annotations

import json

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from vmwrapper.status.model import StatusSnapshot
from vmwrapper.status.server import MAX_STREAMS, StatusServer, is_loopback


class Provider:
    def __init__(self) -> None:
        self.snapshot = StatusSnapshot(vm_state="running", task="sim")
        self.error: Exception | None = None

    def __call__(self) -> StatusSnapshot:
        if self.error:
            raise self.error
        return self.snapshot


@pytest.fixture
def served():
    reactor = MemoryReactorClock()
    provider = Provider()
    logged: list[str] = []
    server = StatusServer(provider, reactor, interval=1.0, log=logged.append)
    server.start()
    yield server, provider, reactor, logged
    server.stop()


def request(server, path="/", host=None, peer="127.0.0.1", method="GET"):
    """Send one HTTP request; returns (status, headers text, body, transport)."""
    address = IPv6Address("TCP", peer, 4000) if ":" in peer else IPv4Address("TCP", peer, 4000)
    protocol = server.site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    transport.protocol = protocol
    host = f"127.0.0.1:{server.port}" if host is None else host
    protocol.dataReceived(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return parse(transport.value()) + (transport,)


def parse(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode("latin-1").lower(), body


def test_page_is_served_with_the_snapshot_and_strict_headers(served):
    server, provider, _, _ = served
    status, headers, body, _ = request(server)
    assert status == 200
    assert b'data-state="running"' in body and b">sim<" in body
    assert b'name="viewport"' in body
    for header in ("content-security-policy: default-src 'none'; script-src 'self'",
                   "x-frame-options: deny", "cache-control: no-store"):
        assert header in headers


def test_guest_output_cannot_inject_markup(served):
    server, provider, reactor, _ = served
    provider.snapshot = provider.snapshot.but(guest_output=("<script>alert(1)</script>",))
    reactor.advance(1.0)
    _, _, body, _ = request(server)
    assert b"<script>alert" not in body and b"&lt;script&gt;alert(1)" in body


@pytest.mark.parametrize("peer", ["192.168.1.20", "10.0.2.15", "fe80::1"])
def test_other_hosts_are_refused(served, peer):
    status, _, body, _ = request(served[0], peer=peer)
    assert status == 403 and b"only for this computer" in body


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1",
                                  "127.0.0.1:1", ""])
def test_foreign_host_headers_are_refused(served, host):
    server = served[0]
    status, _, body, _ = request(server, host=host.format(port=server.port))
    assert status == 403 and b"Host" in body


def test_localhost_and_ipv6_loopback_are_accepted(served):
    server = served[0]
    assert request(server, host=f"localhost:{server.port}")[0] == 200
    assert request(server, peer="::1")[0] == 200


def test_only_get_and_head(served):
    status, headers, _, _ = request(served[0], method="POST")
    assert status == 405 and "allow: get, head" in headers


def test_unknown_path_is_404(served):
    assert request(served[0], path="/etc/passwd")[0] == 404


def test_static_files(served):
    server = served[0]
    status, headers, body, _ = request(server, path="/app.js")
    assert status == 200 and "text/javascript" in headers and b"EventSource" in body
    status, headers, _, _ = request(server, path="/app.css")
    assert status == 200 and "text/css" in headers


def events(transport: StringTransport) -> list[dict]:
    """The JSON of every ``data:`` event written so far (chunked encoding stripped)."""
    found = []
    for line in transport.value().split(b"\n"):
        if line.startswith(b"data: "):
            found.append(json.loads(line[len(b"data: "):]))
    return found


def test_events_push_changes_only(served):
    server, provider, reactor, _ = served
    status, headers, _, transport = request(server, path="/events")
    assert status == 200 and "text/event-stream" in headers
    assert [e["vm_state"] for e in events(transport)] == ["running"]
    reactor.advance(1.0)  # nothing changed: nothing sent
    assert len(events(transport)) == 1
    provider.snapshot = provider.snapshot.but(vm_state="paused", cpu_time=61.0)
    reactor.advance(1.0)
    last = events(transport)[-1]
    assert (last["vm_state"], last["cpu_time_text"]) == ("paused", "1 min 01 s")
    assert server.current.vm_state == "paused"


def test_closed_streams_are_forgotten(served):
    server, provider, reactor, _ = served
    _, _, _, transport = request(server, path="/events")
    assert server.open_streams == 1
    transport.protocol.connectionLost(Failure(ConnectionDone()))
    assert server.open_streams == 0
    provider.snapshot = provider.snapshot.but(vm_state="paused")
    reactor.advance(1.0)  # must not write to the closed stream


def test_open_streams_are_capped(served):
    server = served[0]
    for _ in range(MAX_STREAMS):
        assert request(server, path="/events")[0] == 200
    status, _, body, _ = request(server, path="/events")
    assert status == 503 and b"too many" in body
    assert server.open_streams == MAX_STREAMS


def test_failing_provider_keeps_last_snapshot_and_logs_once(served):
    server, provider, reactor, logged = served
    provider.error = RuntimeError("wrapper busy")
    reactor.advance(3.0)
    assert len(logged) == 1 and "RuntimeError: wrapper busy" in logged[0]
    assert request(server, path="/status.json")[2].startswith(b'{"vm_state":"running"')
    provider.error = None
    provider.snapshot = provider.snapshot.but(vm_state="saving")
    reactor.advance(1.0)
    assert server.current.vm_state == "saving"


def test_listens_on_loopback_only():
    reactor = MemoryReactorClock()
    server = StatusServer(Provider(), reactor)
    url = server.start()
    (port, _, _, interface), = reactor.tcpServers
    assert (port, interface) == (0, "127.0.0.1")
    assert url.startswith("http://127.0.0.1:")
    server.stop()


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval"):
        StatusServer(Provider(), MemoryReactorClock(), interval=0)


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("localhost", False), ("", False),
])
def test_is_loopback(address, expected):
    assert is_loopback(address) is expected

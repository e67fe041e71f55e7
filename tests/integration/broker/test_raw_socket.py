"""Raw-socket tests: byte-level splits, authorisation, limits, heart-beat loss."""

from __future__ import annotations

import os
import socket
import time

import pytest

from tests.integration.broker.conftest import MAX_FRAME
from vmcontroller import destinations
from vmcontroller.broker.blocking_client import BlockingClient, BrokerRefused
from vmcontroller.stomp.codec import Frame, encode_frame


def session_bytes(login, vm_id: str, version: str = "1.2") -> bytes:
    """CONNECT, SUBSCRIBE to own queue, SEND to it... as one byte stream, with EOLs."""
    frames = [
        Frame(
            "CONNECT",
            {
                "accept-version": version,
                "host": "localhost",
                "login": login.login,
                "passcode": login.passcode,
            },
        ),
        Frame("SUBSCRIBE", {"destination": destinations.to_guest(vm_id), "id": "s:1"}),
        Frame("SEND", {"destination": destinations.to_host(vm_id), "url": "a:b:c"}, b"\x00x\x00"),
        Frame("BEGIN", {"transaction": "t", "receipt": "done"}),
    ]
    # stomper-style "\x00\n" endings and a CRLF heart-beat between frames
    return b"\n".join(encode_frame(f, version) for f in frames) + b"\r\n"


def expect_receipt(client: BlockingClient) -> None:
    frames = [client.receive(), client.receive()]
    assert [f.command for f in frames] == ["CONNECTED", "RECEIPT"]
    assert frames[1].headers["receipt-id"] == "done"


def test_one_byte_at_a_time(raw, credentials):
    data = session_bytes(credentials.vm_login("a1"), "a1")
    client = raw()
    for i in range(len(data)):
        client.send_bytes(data[i : i + 1])
    expect_receipt(client)


def test_split_at_every_byte_boundary(raw, credentials, broker):
    """Each split position on its own connection: two writes, a pause between them."""
    data = session_bytes(credentials.vm_login("c3"), "c3", "1.1")
    for cut in range(1, len(data)):
        client = raw("1.1")
        client.send_bytes(data[:cut])
        time.sleep(0.0005)  # let the broker read the first part on its own
        client.send_bytes(data[cut:])
        expect_receipt(client)
        client.close()
    # what the agent sent arrived intact, once per connection
    host = raw()
    host.connect(credentials.host_login().login, credentials.host_login().passcode)
    host.subscribe(destinations.to_host("c3"))
    messages = [host.receive(timeout=5) for _ in range(len(data) - 1)]
    assert {m.body for m in messages} == {b"\x00x\x00"}
    # pipelined behind CONNECT, yet unescaped with the negotiated version
    assert {m.headers["url"] for m in messages} == {"a:b:c"}


def test_vm_cannot_touch_other_vms_destinations(raw, credentials):
    login = credentials.vm_login("a1")
    refused = [
        Frame("SUBSCRIBE", {"destination": destinations.to_guest("b2"), "id": "x"}),
        Frame("SUBSCRIBE", {"destination": destinations.to_host("a1"), "id": "x"}),
        Frame("SUBSCRIBE", {"destination": destinations.PRESENCE, "id": "x"}),
        Frame("SUBSCRIBE", {"destination": "/queue/anything", "id": "x"}),
        Frame("SEND", {"destination": destinations.to_host("b2")}, b"forged"),
        Frame("SEND", {"destination": destinations.to_guest("b2")}, b"forged"),
        Frame("SEND", {"destination": destinations.to_guest("a1")}, b"to myself"),
    ]
    for frame in refused:
        client = raw()
        client.connect(login.login, login.passcode)
        client.send_frame(frame)
        with pytest.raises(BrokerRefused, match="may not"):
            client.receive()
        with pytest.raises(ConnectionError):
            client.receive()  # and the connection is closed
    # what it may do still works
    client = raw()
    client.connect(login.login, login.passcode)
    client.subscribe(destinations.to_guest("a1"), "mine")
    client.send(destinations.to_host("a1"), b"reply")
    client.send(destinations.PRESENCE, b"hello")
    assert client.sync() == []


@pytest.mark.parametrize(
    "login, passcode",
    [("vm-a1", "wrong"), ("nobody", "x"), (None, None)],
)
def test_bad_logins_get_error_and_close(raw, credentials, login, passcode):
    client = raw()
    headers = {"accept-version": "1.2", "host": "localhost"}
    if login is not None:
        headers.update(login=login, passcode=passcode)
    client.send_frame(Frame("CONNECT", headers))
    with pytest.raises(BrokerRefused, match="authentication failed"):
        client.receive()
    with pytest.raises(ConnectionError):
        client.receive()


def test_commands_before_connect_refused(raw):
    client = raw()
    client.send_frame(Frame("SEND", {"destination": destinations.PRESENCE}, b"x"))
    with pytest.raises(BrokerRefused, match="CONNECT"):
        client.receive()


@pytest.mark.parametrize("announced", [True, False])
def test_oversized_frame_rejected_others_keep_going(raw, credentials, announced):
    host_login, vm_login = credentials.host_login(), credentials.vm_login("d4")
    bystander = raw()
    bystander.connect(host_login.login, host_login.passcode)
    bystander.subscribe(destinations.to_host("d4"), "b")
    big = raw()
    big.connect(vm_login.login, vm_login.passcode)
    body = b"y" * (MAX_FRAME + 10)
    frame = encode_frame(Frame("SEND", {"destination": destinations.to_host("d4")}, body))
    if not announced:  # no content-length: the body runs to the NUL
        frame = frame.replace(f"content-length:{len(body)}\n".encode(), b"")
    try:
        big.send_bytes(frame)
    except OSError:
        pass  # the broker may close before we finish writing
    error = big.receive_any(timeout=5)
    assert error.command == "ERROR"
    assert error.headers["code"] in ("frame-too-large", "headers-too-large")
    with pytest.raises((ConnectionError, OSError)):
        big.receive_any(timeout=5)
    # the broker still serves the others
    sender = raw()
    sender.connect(vm_login.login, vm_login.passcode)
    sender.send(destinations.to_host("d4"), b"still here")
    assert bystander.receive(timeout=5).body == b"still here"


def test_malformed_frame_gets_error(raw, credentials):
    login = credentials.vm_login("a1")
    client = raw()
    client.connect(login.login, login.passcode)
    client.send_bytes(b"SEND\ndestination\n\nbody\x00")
    with pytest.raises(BrokerRefused, match="without ':'"):
        client.receive()


def test_missed_client_heartbeats_close_connection(raw, credentials):
    login = credentials.host_login()
    client = raw("1.2")
    connected = client.connect(login.login, login.passcode, heartbeat=(50, 0))
    assert connected.headers["heart-beat"] == "50,50"
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        while True:  # we send nothing: the broker must hang up within ~2 intervals
            client.receive_any(timeout=5)
    assert time.monotonic() - started < 2


def test_broker_heartbeats_when_idle(broker, credentials):
    login = credentials.host_login()
    sock = socket.create_connection(broker.address)
    try:
        sock.sendall(
            encode_frame(
                Frame(
                    "CONNECT",
                    {
                        "accept-version": "1.2",
                        "host": "x",
                        "login": login.login,
                        "passcode": login.passcode,
                        "heart-beat": "0,50",
                    },
                )
            )
        )
        time.sleep(0.4)
        data = sock.recv(65536)
        newlines_after_connected = data.split(b"\x00", 1)[1]
        assert newlines_after_connected.count(b"\n") >= 3
        assert set(newlines_after_connected) == {ord("\n")}
    finally:
        sock.close()


def test_large_and_small_bodies_interleaved(raw, credentials):
    """Large bodies take the scatter-gather path of the writer; order and bytes survive."""
    host_login, vm_login = credentials.host_login(), credentials.vm_login("d4")
    agent = raw()
    agent.connect(vm_login.login, vm_login.passcode)
    agent.subscribe(destinations.to_guest("d4"), "big")
    host = raw()
    host.connect(host_login.login, host_login.passcode)
    bodies = [os.urandom(n) for n in (10, 200_000, 8191, 8192, 3, 700_000, 0, 65536)] * 3
    for body in bodies:
        host.send(destinations.to_guest("d4"), body)
    assert [agent.receive(timeout=10).body for _ in bodies] == bodies


def test_headers_1_0_cannot_carry_are_left_out_for_1_0_consumers(raw, credentials):
    host_login, vm_login = credentials.host_login(), credentials.vm_login("c3")
    old_agent = raw("1.0")
    old_agent.connect(vm_login.login, vm_login.passcode)
    old_agent.subscribe(destinations.to_guest("c3"), "legacy")
    old_agent.sync()
    host = raw("1.2")
    host.connect(host_login.login, host_login.passcode)
    host.send(
        destinations.to_guest("c3"),
        b"body",
        {"multi": "line\nvalue", "na:me": "v", "url": "http://x:1/"},
    )
    message = old_agent.receive(timeout=5)
    assert message.body == b"body"
    assert message.headers["url"] == "http://x:1/"
    assert "multi" not in message.headers and "na:me" not in message.headers


def test_a_body_after_a_lone_nul_is_received_in_place(raw, credentials, monkeypatch):
    """The read after a large body's lone NUL takes a header block, not the next body.

    A full read there carried the next chunk through the parser's shared
    buffer (copied in, then out into the body); the broker's reading
    thread spent as much on those copies as on the receive itself.
    """
    from vmcontroller.broker.handler import _HEAD_RECV_SIZE, CodecFrameBuffer

    host_login, vm_login = credentials.host_login(), credentials.vm_login("a1")
    agent = raw()
    agent.connect(vm_login.login, vm_login.passcode)
    agent.subscribe(destinations.to_guest("a1"), "chunks")
    agent.sync()
    host = raw()
    host.connect(host_login.login, host_login.passcode)
    host.sync()
    fed: list[int] = []
    real = CodecFrameBuffer.append
    monkeypatch.setattr(
        CodecFrameBuffer, "append", lambda self, data: fed.append(len(data)) or real(self, data)
    )
    bodies = [os.urandom(256 * 1024) for _ in range(3)]
    frames = [
        encode_frame(Frame("SEND", {"destination": destinations.to_guest("a1")}, body), "1.2")
        for body in bodies
    ]
    for frame in frames:
        host.send_bytes(frame[:-1])
        time.sleep(0.2)  # the broker reads the body and waits for the NUL
        host.send_bytes(frame[-1:])
        time.sleep(0.2)  # ... which it reads alone
    assert [agent.receive(timeout=10).body for _ in bodies] == bodies
    # The first header may come in a full read; after that, header reads only.
    assert sum(fed[1:]) <= len(fed) * _HEAD_RECV_SIZE, fed

"""The Twisted STOMP client against in-memory transports and a Clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from vmcontroller.stomp.client import (
    StompClientProtocol,
    StompConfig,
    StompError,
    backoff_delay,
)
from vmcontroller.stomp.codec import Frame, FrameParser, encode_frame


def _connect(heartbeat=1.0, server_hb="1000,1000", version="1.2"):
    clock = Clock()
    lost = []
    proto = StompClientProtocol(
        StompConfig("vm-a", "pw", vhost="/", heartbeat=heartbeat), clock,
        on_lost=lambda p, reason: lost.append(reason),
    )  # fmt: skip
    transport = StringTransport()
    proto.makeConnection(transport)
    sent = FrameParser("1.2").feed(transport.value())
    transport.clear()
    proto.dataReceived(
        encode_frame(Frame("CONNECTED", {"version": version, "heart-beat": server_hb}), version)
    )
    return clock, proto, transport, sent, lost


def _frames(transport, version="1.2"):
    frames = FrameParser(version).feed(transport.value())
    transport.clear()
    return frames


def test_connect_offers_both_versions_credentials_and_heartbeats():
    _, proto, _, sent, _ = _connect()
    (connect,) = sent
    assert connect.command == "CONNECT"
    assert connect.headers["accept-version"] == "1.1,1.2"
    assert (connect.headers["login"], connect.headers["passcode"]) == ("vm-a", "pw")
    assert connect.headers["heart-beat"] == "1000,1000"
    assert proto.handshake.called and proto.is_connected and proto.version == "1.2"


def test_subscribe_send_and_client_individual_ack_in_12():
    _, proto, transport, _, _ = _connect()
    got = []
    sub = proto.subscribe("/queue/q", got.append, ack="client-individual")
    proto.send("/queue/q", b"\x00body\n")
    subscribe, send = _frames(transport)
    assert subscribe.headers == {"destination": "/queue/q", "id": sub, "ack": "client-individual"}
    assert send.body == b"\x00body\n"
    message = Frame("MESSAGE", {"subscription": sub, "message-id": "m1", "ack": "a1",
                                "destination": "/queue/q"}, b"x:y")  # fmt: skip
    proto.dataReceived(encode_frame(message)[:7])
    proto.dataReceived(encode_frame(message)[7:])
    assert [f.body for f in got] == [b"x:y"]
    (ack,) = _frames(transport)
    assert ack.command == "ACK" and ack.headers == {"id": "a1"}


def test_ack_in_11_names_message_and_subscription():
    _, proto, transport, _, _ = _connect(version="1.1")
    sub = proto.subscribe("/queue/q", lambda f: None, ack="client")
    transport.clear()
    proto.dataReceived(
        encode_frame(Frame("MESSAGE", {"subscription": sub, "message-id": "m9"}), "1.1")
    )
    (ack,) = _frames(transport, "1.1")
    assert ack.headers == {"message-id": "m9", "subscription": sub}


def test_client_ack_acknowledges_one_read_with_one_cumulative_ack():
    _, proto, transport, _, _ = _connect()
    handled = []
    sub = proto.subscribe("/queue/q", lambda f: handled.append((f.body, transport.value())),
                          ack="client")  # fmt: skip
    other = proto.subscribe("/queue/r", lambda f: None, ack="client")
    transport.clear()

    def message(sub_id, n):
        headers = {"subscription": sub_id, "message-id": f"m{n}", "ack": f"a{n}"}
        return encode_frame(Frame("MESSAGE", headers, b"%d" % n))

    proto.dataReceived(message(sub, 1) + message(other, 2) + message(sub, 3))
    # No ACK while the read's handlers run, then the last one per subscription.
    assert handled == [(b"1", b""), (b"3", b"")]
    assert [(f.command, f.headers) for f in _frames(transport)] == [
        ("ACK", {"id": "a3"}),
        ("ACK", {"id": "a2"}),
    ]
    proto.dataReceived(message(sub, 4)[:5])  # a read that completes nothing acks nothing
    assert transport.value() == b""
    proto.dataReceived(message(sub, 4)[5:])
    assert [f.headers for f in _frames(transport)] == [{"id": "a4"}]


def test_heartbeats_answer_the_brokers_data_without_a_timer():
    """The broker writes at least every interval, so our heart-beat goes out
    when its data wakes us and half an interval has passed since we wrote."""
    clock, proto, transport, _, _ = _connect(heartbeat=1.0, server_hb="500,500")
    clock.advance(0.4)
    proto.dataReceived(b"\n")
    assert transport.value() == b""  # we wrote (CONNECT) 0.4 s ago
    clock.advance(0.2)
    proto.dataReceived(b"\n")
    assert transport.value() == b"\n"
    transport.clear()
    proto.send("/queue/q", b"x")
    transport.clear()
    clock.advance(0.4)
    proto.dataReceived(b"\n")
    assert transport.value() == b""  # something was sent 0.4 s ago
    clock.advance(1.0)
    assert transport.value() == b""  # no timer of our own writes anything
    # the only timer is the silence check armed at CONNECTED (2.5 intervals)
    assert [call.getTime() for call in clock.getDelayedCalls()] == [2.5]


def test_heartbeats_are_sent_by_timer_when_the_broker_sends_none():
    clock, proto, transport, _, _ = _connect(heartbeat=1.0, server_hb="0,500")
    clock.advance(1.0)
    assert transport.value() == b"\n"
    transport.clear()
    proto.send("/queue/q", b"x")
    transport.clear()
    clock.advance(0.5)  # something was sent 0.5 s ago: no heart-beat needed yet
    assert transport.value() == b""
    clock.advance(0.5)
    assert transport.value() == b"\n"


def test_a_silent_broker_is_declared_dead():
    clock, proto, transport, _, _ = _connect(heartbeat=1.0, server_hb="1000,1000")
    for _ in range(2):
        clock.advance(1.0)
        proto.dataReceived(b"\n")  # the broker's heart-beats keep us alive
    assert not transport.disconnecting
    clock.advance(2.6)  # 2.5 intervals of silence
    assert transport.disconnecting


def test_error_frame_before_connected_fails_the_handshake():
    clock = Clock()
    proto = StompClientProtocol(StompConfig("bad", "creds"), clock)
    proto.makeConnection(StringTransport())
    proto.dataReceived(encode_frame(Frame("ERROR", {"message": "Authentication failed"}), "1.2"))
    failures = []
    proto.handshake.addErrback(failures.append)
    assert failures[0].check(StompError) and "Authentication failed" in str(failures[0].value)


def test_garbage_from_the_broker_aborts_the_connection():
    _, proto, transport, _, _ = _connect()
    proto.dataReceived(b"NOT A FRAME\nx:y\n\n\x00")
    assert transport.disconnecting


def test_invalid_ack_mode_is_refused():
    _, proto, _, _, _ = _connect()
    with pytest.raises(ValueError, match="ack mode"):
        proto.subscribe("/queue/q", print, ack="sometimes")


def test_backoff_grows_exponentially_with_bounded_jitter():
    no_jitter = [backoff_delay(n, jitter=lambda: 0.0) for n in range(10)]
    assert no_jitter[:4] == [0.2, 0.4, 0.8, 1.6] and no_jitter[-1] == 30.0
    assert backoff_delay(3, jitter=lambda: 1.0) == pytest.approx(1.6 * 1.25)
    with pytest.raises(ValueError):
        backoff_delay(-1)


class _SequenceTransport(StringTransport):
    """Records what each writeSequence() call was given, as well as the bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.sequences: list[list[object]] = []

    def writeSequence(self, seq) -> None:  # noqa: N802 (Twisted's name)
        self.sequences.append(list(seq))
        super().writeSequence(seq)


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_a_body_in_parts_is_sent_as_one_body_without_joining_the_parts(version):
    _, proto, _, _, _ = _connect(version=version)
    transport = _SequenceTransport()
    proto.transport = transport
    payload = memoryview(bytearray(b"\x00chunk\n" * 40000))
    proto.send("/queue/q", (b'{"type":"data"}\n', payload), {"x": "a:b"})
    proto.send("/queue/q", (b"",))
    (sent,) = [seq for seq in transport.sequences if any(part is payload for part in seq)]
    assert len(sent) == 4  # head, message header, the payload itself, NUL
    data, empty = FrameParser(version).feed(transport.value())
    assert data.command == "SEND" and data.headers["x"] == "a:b"
    assert data.body == b'{"type":"data"}\n' + bytes(payload)
    assert data.headers["content-length"] == str(len(data.body))
    assert empty.body == b"" and "content-length" not in empty.headers

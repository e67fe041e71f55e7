"""StompSession: reconnect with back-off, subscriptions replayed, listeners told."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from vmcontroller.stomp.client import NotConnectedError, StompConfig, StompSession
from vmcontroller.stomp.codec import Frame, FrameParser, encode_frame


class FakeEndpoint:
    """Hands out protocols connected to StringTransports; can refuse connections."""

    def __init__(self):
        self.connections = []
        self.refuse = False

    def connect(self, factory):
        if self.refuse:
            return defer.fail(ConnectionRefusedError("down"))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return defer.succeed(protocol)


def _accept(protocol, transport):
    transport.clear()
    protocol.dataReceived(encode_frame(Frame("CONNECTED", {"version": "1.2"}), "1.2"))
    return FrameParser("1.2").feed(transport.value())


@pytest.fixture
def setup():
    clock = Clock()
    endpoint = FakeEndpoint()
    session = StompSession(
        endpoint, StompConfig("u", "p", heartbeat=0), clock, backoff=lambda attempt: 1.0
    )
    events = []
    session.add_listener(
        on_connect=lambda p: events.append("up"), on_disconnect=lambda r: events.append("down")
    )
    session.subscribe("/queue/a", lambda f: None, ack="client-individual")
    session.start()
    return clock, endpoint, session, events


def test_subscriptions_are_made_once_connected_and_again_after_a_reconnect(setup):
    clock, endpoint, session, events = setup
    with pytest.raises(NotConnectedError):
        session.send("/queue/b", b"x")
    frames = _accept(*endpoint.connections[0])
    assert [(f.command, f.headers["destination"]) for f in frames] == [("SUBSCRIBE", "/queue/a")]
    assert events == ["up"] and session.is_connected
    session.send("/queue/b", b"x")

    protocol, _ = endpoint.connections[0]
    protocol.connectionLost(Failure(ConnectionError("broker died")))
    assert events == ["up", "down"] and not session.is_connected
    endpoint.refuse = True
    clock.advance(1.0)  # one refused attempt, then another after the back-off
    endpoint.refuse = False
    clock.advance(1.0)
    assert len(endpoint.connections) == 2
    frames = _accept(*endpoint.connections[1])
    assert [f.headers["destination"] for f in frames] == ["/queue/a"]
    assert events == ["up", "down", "up"]


def test_stop_disconnects_and_stops_reconnecting(setup):
    clock, endpoint, session, events = setup
    _accept(*endpoint.connections[0])
    _, transport = endpoint.connections[0]
    transport.clear()
    session.stop()
    assert FrameParser("1.2").feed(transport.value())[0].command == "DISCONNECT"
    clock.advance(60)
    assert len(endpoint.connections) == 1

"""QMP protocol: handshake, replies matched by id, events set aside, errors, disconnects."""

from __future__ import annotations

import json

import pytest
from twisted.internet.testing import StringTransport

from vmwrapper.hypervisor.qmp import QMPDisconnected, QMPError, QMPProtocol

GREETING = b'{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}\r\n'


def _sent(transport: StringTransport) -> list[dict]:
    lines = transport.value().splitlines()
    transport.clear()
    return [json.loads(line) for line in lines]


def _ready(events=None) -> tuple[QMPProtocol, StringTransport]:
    proto = QMPProtocol(on_event=(lambda *e: events.append(e)) if events is not None else None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(GREETING)
    [caps] = _sent(transport)
    assert caps["execute"] == "qmp_capabilities"
    proto.dataReceived(json.dumps({"return": {}, "id": caps["id"]}).encode() + b"\r\n")
    return proto, transport


def test_handshake_fires_ready_after_capabilities():
    proto = QMPProtocol()
    transport = StringTransport()
    proto.makeConnection(transport)
    assert not proto.ready.called
    proto.dataReceived(GREETING)
    assert not proto.ready.called, "ready only after qmp_capabilities is answered"
    [caps] = _sent(transport)
    proto.dataReceived(json.dumps({"return": {}, "id": caps["id"]}).encode() + b"\n")
    assert proto.ready.called and proto.greeting["version"]["qemu"]["major"] == 7


def test_events_between_command_and_reply_are_set_aside():
    events: list = []
    proto, transport = _ready(events)
    result = proto.execute("savevm")
    [cmd] = _sent(transport)
    stream = (b'{"timestamp": {"seconds": 5, "microseconds": 500000}, "event": "STOP"}\r\n'
              b'{"timestamp": {"seconds": 6, "microseconds": 0}, "event": "RESUME"}\r\n'
              + json.dumps({"return": "", "id": cmd["id"]}).encode() + b"\r\n")
    for i in range(len(stream)):  # one byte at a time
        proto.dataReceived(stream[i:i + 1])
    assert [e[0] for e in events] == ["STOP", "RESUME"]
    assert events[0][2] == 5.5
    assert result.result == ""


def test_replies_are_matched_by_id_not_order():
    proto, transport = _ready()
    first, second = proto.execute("query-status"), proto.execute("query-name")
    ids = [m["id"] for m in _sent(transport)]
    proto.dataReceived(json.dumps({"return": {"name": "b"}, "id": ids[1]}).encode() + b"\n")
    proto.dataReceived(json.dumps({"return": {"status": "running"}, "id": ids[0]}).encode() + b"\n")
    assert first.result == {"status": "running"} and second.result == {"name": "b"}


def test_error_reply_becomes_qmp_error():
    proto, transport = _ready()
    d = proto.execute("cont")
    [cmd] = _sent(transport)
    proto.dataReceived(json.dumps({"error": {"class": "GenericError", "desc": "no"},
                                   "id": cmd["id"]}).encode() + b"\n")
    failure = d.result
    d.addErrback(lambda f: None)
    assert failure.check(QMPError) and failure.value.error_class == "GenericError"


@pytest.mark.parametrize("text, failed", [
    ("", False), ("Error: Device 'x' is writable but does not support snapshots\r\n", True),
    ("Could not open snapshot", True), ("Snapshot boinc-1 saved", False)])
def test_hmp_errors_come_back_as_text(text, failed):
    proto, transport = _ready()
    d = proto.human_monitor("savevm boinc-1")
    [cmd] = _sent(transport)
    assert cmd["arguments"] == {"command-line": "savevm boinc-1"}
    proto.dataReceived(json.dumps({"return": text, "id": cmd["id"]}).encode() + b"\n")
    outcome = []
    d.addBoth(outcome.append)
    assert (hasattr(outcome[0], "check") and bool(outcome[0].check(QMPError))) is failed


def test_disconnect_fails_every_pending_command():
    proto, transport = _ready()
    pending = [proto.execute("stop"), proto.execute("cont")]
    proto.connectionLost(None)
    for d in pending:
        assert d.result.check(QMPDisconnected)
        d.addErrback(lambda f: None)
    later = proto.execute("quit")
    assert later.result.check(QMPDisconnected)
    later.addErrback(lambda f: None)
    assert proto.closed.called


def _fail_attempt(reactor, index: int) -> None:
    from twisted.internet.error import ConnectionRefusedError
    from twisted.python.failure import Failure

    factory = reactor.unixClients[index][1]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("not yet")))


def test_connect_retries_until_the_socket_answers():
    from twisted.internet.testing import MemoryReactorClock

    from vmwrapper.hypervisor.qmp import connect_qmp

    reactor = MemoryReactorClock()
    events: list = []
    d = connect_qmp(reactor, "/slot/vm/qmp.sock", timeout=5.0,
                    on_event=lambda *e: events.append(e), retry_interval=0.1)
    _fail_attempt(reactor, 0)
    assert len(reactor.unixClients) == 1 and not d.called
    reactor.advance(0.1)
    assert reactor.unixClients[1][0] == "/slot/vm/qmp.sock"
    proto = reactor.unixClients[1][1].buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(GREETING)
    [caps] = _sent(transport)
    proto.dataReceived(json.dumps({"return": {}, "id": caps["id"]}).encode() + b"\n")
    qmp = d.result
    assert isinstance(qmp, QMPProtocol)
    qmp.dataReceived(b'{"event": "POWERDOWN", "timestamp": {"seconds": 1}}\n')
    assert events and events[0][0] == "POWERDOWN"


def test_connect_gives_up_at_the_deadline():
    from twisted.internet.testing import MemoryReactorClock

    from vmwrapper.hypervisor.qmp import connect_qmp

    reactor = MemoryReactorClock()
    d = connect_qmp(reactor, "/slot/vm/qmp.sock", timeout=1.0, retry_interval=0.25)
    attempts = 0
    while not d.called:
        _fail_attempt(reactor, attempts)
        attempts += 1
        reactor.advance(0.25)
    assert 3 <= attempts <= 5
    failure = d.result
    d.addErrback(lambda _: None)
    assert failure.check(TimeoutError) and "qmp.sock" in str(failure.value)

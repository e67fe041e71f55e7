"""stomp.py (an independent client) against the embedded broker, STOMP 1.0/1.1/1.2."""

from __future__ import annotations

import time

import pytest

from tests.polling import wait_until
from vmcontroller import destinations

VERSIONS = ["1.0", "1.1", "1.2"]
BINARY = bytes(range(256)) + b"\x00\x00end"


def ack_args(version, message):
    if version == "1.2":
        return (message.headers["ack"],)
    if version == "1.1":
        return (message.headers["message-id"], message.headers["subscription"])
    return (message.headers["message-id"],)


@pytest.mark.parametrize("version", VERSIONS)
def test_connect_send_subscribe_binary_body(version, stomppy, credentials):
    agent, agent_seen = stomppy(version, credentials.vm_login("a1"))
    host, _ = stomppy(version, credentials.host_login())
    agent.subscribe(destinations.to_guest("a1"), id="s1", ack="auto")
    host.send(
        destinations.to_guest("a1"),
        BINARY,
        headers={"url": "http://example.org:8080/x", "content-type": "application/octet-stream"},
    )
    wait_until(lambda: agent_seen.messages)
    message = agent_seen.messages[0]
    assert message.body == BINARY
    assert message.headers["url"] == "http://example.org:8080/x"
    assert message.headers["destination"] == destinations.to_guest("a1")
    assert message.headers["subscription"] == "s1"
    assert not agent_seen.errors


@pytest.mark.parametrize("version", VERSIONS)
def test_client_ack_and_redelivery_after_disconnect(version, stomppy, credentials):
    queue = destinations.to_host("a1")
    host, host_seen = stomppy(version, credentials.host_login())
    host.subscribe(queue, id="h", ack="client-individual")
    agent, _ = stomppy(version, credentials.vm_login("a1"))
    agent.send(queue, b"first")
    agent.send(queue, b"second")
    wait_until(lambda: len(host_seen.messages) == 2)
    host.ack(*ack_args(version, host_seen.messages[0]))
    host.disconnect()  # "second" was never acked: it must come back
    again, again_seen = stomppy(version, credentials.host_login())
    again.subscribe(queue, id="h2", ack="client")
    wait_until(lambda: again_seen.messages)
    assert [m.body for m in again_seen.messages] == [b"second"]
    assert again_seen.messages[0].headers.get("redelivered") == "true"
    again.ack(*ack_args(version, again_seen.messages[0]))


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_nack_redelivers(version, stomppy, credentials):
    queue = destinations.to_guest("b2")
    agent, seen = stomppy(version, credentials.vm_login("b2"))
    agent.subscribe(queue, id="n", ack="client-individual")
    host, _ = stomppy(version, credentials.host_login())
    host.send(queue, b"try me")
    wait_until(lambda: len(seen.messages) == 1)
    agent.nack(*ack_args(version, seen.messages[0]))
    wait_until(lambda: len(seen.messages) == 2)
    assert seen.messages[1].body == b"try me"
    assert seen.messages[1].headers["redelivered"] == "true"
    agent.ack(*ack_args(version, seen.messages[1]))
    time.sleep(0.05)
    assert len(seen.messages) == 2 and not seen.errors


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_heartbeats_both_ways(version, stomppy, credentials):
    conn, seen = stomppy(version, credentials.host_login(), heartbeats=(50, 50))
    wait_until(lambda: seen.heartbeats >= 3, timeout=5)
    time.sleep(0.3)  # stomp.py keeps beating: the broker must keep us connected
    assert conn.is_connected() and not seen.disconnected


def test_presence_topic_broadcast_to_host(stomppy, credentials):
    host, host_seen = stomppy("1.2", credentials.host_login())
    host.subscribe(destinations.PRESENCE, id="p")
    time.sleep(0.05)
    agent, _ = stomppy("1.2", credentials.vm_login("a1"))
    agent.send(destinations.PRESENCE, b'{"type": "hello"}', headers={"receipt": "x"})
    wait_until(lambda: host_seen.messages)
    assert host_seen.messages[0].body == b'{"type": "hello"}'


@pytest.mark.parametrize("version", VERSIONS)
def test_wrong_credentials_refused(version, stomppy, credentials):
    login = credentials.vm_login("a1")
    conn, seen = stomppy(version, login, connect=False)
    with pytest.raises(Exception):  # noqa: B017 - stomp.py raises different types per version
        conn.connect(login.login, login.passcode + "x", wait=True)
    assert any("authentication failed" in e.headers.get("message", "") for e in seen.errors)
    assert not conn.is_connected()

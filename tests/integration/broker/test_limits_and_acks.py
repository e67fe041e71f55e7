"""Broker limits (connections, queue length, transactions) and ack modes, on private brokers."""

from __future__ import annotations

import socket
import time

import pytest

from vmcontroller import destinations
from vmcontroller.broker import BrokerConfig, EmbeddedBroker, generate_credentials
from vmcontroller.broker.blocking_client import BlockingClient, BrokerRefused
from vmcontroller.stomp.codec import Frame


@pytest.fixture
def small_broker():
    credentials = generate_credentials(["v"])
    config = BrokerConfig(
        max_connections=3, max_queued_messages=5, max_transaction_frames=3, max_subscriptions=2
    )
    broker = EmbeddedBroker(("127.0.0.1", 0), credentials, config)
    broker.start()
    clients = []

    def connect(role="host"):
        login = credentials.host_login() if role == "host" else credentials.vm_login("v")
        client = BlockingClient(broker.address, timeout=5)
        clients.append(client)
        client.connect(login.login, login.passcode)
        return client

    yield broker, connect
    for client in clients:
        client.close()
    broker.stop()


def test_connections_beyond_the_limit_are_closed(small_broker):
    broker, connect = small_broker
    kept = [connect() for _ in range(3)]
    extra = socket.create_connection(broker.address, timeout=5)
    try:
        assert extra.recv(10) == b""  # closed without a word
    finally:
        extra.close()
    kept[0].close()
    reconnected = None
    for _ in range(250):  # the slot frees once the broker notices the close
        try:
            reconnected = connect()
            break
        except (ConnectionError, OSError):
            time.sleep(0.02)
    assert reconnected is not None


def test_full_queue_refuses_send(small_broker):
    _, connect = small_broker
    host = connect()
    for n in range(5):
        host.send(destinations.to_guest("v"), str(n).encode())
    assert host.sync() == []
    host.send(destinations.to_guest("v"), b"one too many")
    with pytest.raises(BrokerRefused, match="is full"):
        host.receive()
    agent = connect("vm")
    agent.subscribe(destinations.to_guest("v"))
    assert [agent.receive().body for _ in range(5)] == [b"0", b"1", b"2", b"3", b"4"]


def test_transaction_commit_abort_and_cap(small_broker):
    _, connect = small_broker
    host, agent = connect(), connect("vm")
    agent.subscribe(destinations.to_guest("v"))
    host.send_frame(Frame("BEGIN", {"transaction": "t1"}))
    host.send(destinations.to_guest("v"), b"kept", {"transaction": "t1", "receipt": "r1"})
    host.send_frame(Frame("BEGIN", {"transaction": "t2"}))
    host.send(destinations.to_guest("v"), b"dropped", {"transaction": "t2"})
    host.send_frame(Frame("ABORT", {"transaction": "t2"}))
    host.send_frame(Frame("COMMIT", {"transaction": "t1"}))
    assert [f.headers.get("receipt-id") for f in host.sync()] == ["r1"]  # once, not twice
    assert agent.receive().body == b"kept"
    host.send_frame(Frame("BEGIN", {"transaction": "big"}))
    for _ in range(4):
        host.send(destinations.to_guest("v"), b"x", {"transaction": "big"})
    with pytest.raises(BrokerRefused, match="too many frames"):
        host.receive()


def test_subscription_cap(small_broker):
    _, connect = small_broker
    host = connect()
    host.subscribe(destinations.to_host("v"), "1")
    host.subscribe(destinations.PRESENCE, "2")
    host.subscribe(destinations.to_guest("v"), "3")
    with pytest.raises(BrokerRefused, match="too many subscriptions"):
        host.receive()


def test_client_ack_is_cumulative_and_prefetch_limits_in_flight(small_broker):
    _, connect = small_broker
    host, agent = connect(), connect("vm")
    agent.subscribe(destinations.to_guest("v"), ack="client", **{"prefetch-count": "2"})
    for n in range(4):
        host.send(destinations.to_guest("v"), str(n).encode())
    first, second = agent.receive(), agent.receive()
    assert agent.sync() == []  # prefetch 2: nothing more until we ack
    agent.ack(second)  # cumulative: acks "0" and "1"
    third, fourth = agent.receive(), agent.receive()
    assert [f.body for f in (first, second, third, fourth)] == [b"0", b"1", b"2", b"3"]
    agent.ack(first)  # already settled by the cumulative ack
    with pytest.raises(BrokerRefused, match="no un-acknowledged message"):
        agent.receive()


def test_slow_consumer_never_blocks_producers_and_catches_up():
    """A consumer that stops reading: its messages wait in the queue, producers go on."""
    credentials = generate_credentials(["slow", "fine"])
    config = BrokerConfig(outbox_max_bytes=64 * 1024, slow_consumer_timeout=0.5)
    with EmbeddedBroker(("127.0.0.1", 0), credentials, config) as broker:
        clients = []

        def connect(vm=None):
            login = credentials.vm_login(vm) if vm else credentials.host_login()
            client = BlockingClient(broker.address, timeout=10)
            clients.append(client)
            client.connect(login.login, login.passcode)
            return client

        try:
            slow = connect("slow")
            slow.subscribe(destinations.to_guest("slow"))
            slow.sync()
            feeder = connect()
            fine_agent = connect("fine")
            fine_agent.subscribe(destinations.to_guest("fine"))
            fine_agent.sync()
            other = connect()
            # 32 MiB for a consumer that does not read: beyond loopback socket buffers + outbox
            bodies = [bytes([n % 256]) * 65536 for n in range(512)]
            for body in bodies:
                feeder.send(destinations.to_guest("slow"), body)
            assert feeder.sync() == []  # the broker took everything
            assert broker.server.queue_manager.queued(destinations.to_guest("slow")) > 0
            other.send(destinations.to_guest("fine"), b"unaffected")
            assert fine_agent.receive(timeout=5).body == b"unaffected"
            time.sleep(2 * config.slow_consumer_timeout)
            # the slow consumer was not dropped: it reads now and gets everything, in order
            received = [slow.receive(timeout=10).body for _ in bodies]
            assert received == bodies
            assert broker.connection_count == 4
        finally:
            for client in clients:
                client.close()


def test_unacked_messages_come_back_first_and_in_order(small_broker):
    broker, connect = small_broker
    host = connect()
    agent = connect("vm")
    agent.subscribe(destinations.to_guest("v"), ack="client-individual")
    for n in range(3):
        host.send(destinations.to_guest("v"), f"m{n}".encode())
    assert [agent.receive().body for _ in range(3)] == [b"m0", b"m1", b"m2"]
    agent.close()  # m0..m2 un-acked: requeued
    deadline = time.monotonic() + 5
    while broker.connection_count > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    host.send(destinations.to_guest("v"), b"m3")
    assert host.sync() == []
    again = connect("vm")
    again.subscribe(destinations.to_guest("v"), ack="client-individual")
    received = [again.receive() for _ in range(4)]
    assert [m.body for m in received] == [b"m0", b"m1", b"m2", b"m3"]
    assert [m.headers.get("redelivered") for m in received] == ["true"] * 3 + [None]


def test_nacked_message_goes_back_to_the_head(small_broker):
    _, connect = small_broker
    host = connect()
    agent = connect("vm")
    agent.subscribe(destinations.to_guest("v"), ack="client-individual", **{"prefetch-count": "1"})
    for body in (b"a", b"b", b"c"):
        host.send(destinations.to_guest("v"), body)
    assert host.sync() == []  # "b" and "c" wait in the queue: prefetch 1
    first = agent.receive()
    agent.nack(first)
    again = agent.receive()
    assert (first.body, again.body) == (b"a", b"a")
    agent.ack(again)
    assert agent.receive().body == b"b"

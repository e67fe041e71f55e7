"""Shared fixtures: one embedded broker per session, clients that always close."""

from __future__ import annotations

import contextlib
import time

import pytest
import stomp

from vmcontroller.broker import BrokerConfig, EmbeddedBroker, generate_credentials
from vmcontroller.broker.blocking_client import BlockingClient

VM_IDS = ("a1", "b2", "c3", "d4", "fuzz", "fuzzcheck")
#: The shared broker's frame limit (small, so the oversize test is cheap).
MAX_FRAME = 1024 * 1024


@pytest.fixture(scope="session")
def credentials():
    return generate_credentials(VM_IDS)


@pytest.fixture(scope="session")
def broker(credentials):
    config = BrokerConfig(max_frame_size=MAX_FRAME, heartbeat_send_ms=50, heartbeat_receive_ms=50)
    embedded = EmbeddedBroker(("127.0.0.1", 0), credentials, config)
    embedded.start()
    yield embedded
    embedded.stop()


@pytest.fixture
def raw(broker):
    """Factory of BlockingClient connections, all closed at teardown."""
    clients = []

    def make(version="1.2", timeout=5.0):
        client = BlockingClient(broker.address, version, timeout)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


class Recorder(stomp.ConnectionListener):
    """Keeps what a stomp.py connection received."""

    def __init__(self):
        self.messages = []
        self.errors = []
        self.heartbeats = 0
        self.disconnected = False

    def on_message(self, frame):
        self.messages.append(frame)

    def on_error(self, frame):
        self.errors.append(frame)

    def on_heartbeat(self):
        self.heartbeats += 1

    def on_disconnected(self):
        self.disconnected = True


_CONNECTIONS = {"1.0": stomp.Connection10, "1.1": stomp.Connection11, "1.2": stomp.Connection12}


@pytest.fixture
def stomppy(broker):
    """Factory of connected stomp.py connections (with a Recorder), closed at teardown."""
    made = []

    def make(version, login, heartbeats=(0, 0), connect=True):
        kwargs = {"auto_decode": False}
        if version == "1.2":
            kwargs["vhost"] = "localhost"
        if version != "1.0":
            kwargs["heartbeats"] = heartbeats
        conn = _CONNECTIONS[version]([broker.address], **kwargs)
        recorder = Recorder()
        conn.set_listener("recorder", recorder)
        made.append(conn)
        if connect:
            conn.connect(login.login, login.passcode, wait=True)
        return conn, recorder

    before = broker.connection_count
    yield make
    for conn in made:
        with contextlib.suppress(Exception):
            conn.disconnect()
    # The broker drops a connection (and its subscriptions) on its own thread: wait for it,
    # or the next test's message to the same queue may go to this test's dead subscriber.
    deadline = time.monotonic() + 10
    while broker.connection_count > before and time.monotonic() < deadline:
        time.sleep(0.01)

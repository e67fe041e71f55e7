"""The per-VM RabbitMQ users of vmcontroller.broker.rabbitmq isolate VMs like the embedded broker."""

from __future__ import annotations

import time

import pytest

from tests.integration.rabbitmq import RABBIT_STOMP, provisioned_vm_pair
from vmcontroller import destinations
from vmcontroller.broker.blocking_client import BlockingClient, BrokerRefused
from vmcontroller.stomp.codec import Frame

pytestmark = pytest.mark.rabbitmq


@pytest.fixture(scope="module")
def rabbit_credentials():
    with provisioned_vm_pair("brokertest") as pair:
        yield pair


def outcome(login, action: str, destination: str) -> str:
    """'ok' or 'refused': errors may come after the frame, so wait for a late RECEIPT."""
    with BlockingClient(RABBIT_STOMP, "1.2", timeout=5) as client:
        client.connect(login.login, login.passcode, host="/")
        try:
            if action == "subscribe":
                client.subscribe(destination, "s")
            else:
                client.send(destination, b"probe", {"user-id": login.login})
            time.sleep(0.2)
            client.send_frame(Frame("BEGIN", {"transaction": "t", "receipt": "late"}))
            while client.receive(timeout=5).command != "RECEIPT":
                pass
        except (BrokerRefused, ConnectionError, BrokenPipeError):
            return "refused"
    return "ok"


def test_vm_users_are_isolated(rabbit_credentials):
    creds, vm_a, vm_b = rabbit_credentials
    a, host = creds.vm_login(vm_a), creds.host_login()
    cases = [
        (a, "subscribe", destinations.to_guest(vm_a), "ok"),
        (a, "send", destinations.to_host(vm_a), "ok"),
        (a, "send", destinations.PRESENCE, "ok"),
        (a, "subscribe", destinations.to_guest(vm_b), "refused"),
        (a, "subscribe", destinations.to_host(vm_a), "refused"),
        (a, "subscribe", destinations.PRESENCE, "refused"),
        (a, "send", destinations.to_host(vm_b), "refused"),
        (a, "send", destinations.to_guest(vm_b), "refused"),
        (a, "send", "/topic/other", "refused"),
        (host, "subscribe", destinations.PRESENCE, "ok"),
        (host, "subscribe", destinations.to_host(vm_b), "ok"),
        (host, "send", destinations.to_guest(vm_b), "ok"),
    ]
    results = [
        (login.login, action, dest, outcome(login, action, dest))
        for login, action, dest, _ in cases
    ]
    assert [r[3] for r in results] == [c[3] for c in cases], results


def test_forged_user_id_is_refused(rabbit_credentials):
    creds, vm_a, _ = rabbit_credentials
    a, host = creds.vm_login(vm_a), creds.host_login()
    with BlockingClient(RABBIT_STOMP, "1.2", timeout=5) as agent:
        agent.connect(a.login, a.passcode, host="/")
        agent.send(destinations.to_host(vm_a), b"forged", {"user-id": host.login})
        # an accepted message would leave us waiting: TimeoutError fails the test
        with pytest.raises((BrokerRefused, ConnectionError)):
            agent.receive(timeout=5)

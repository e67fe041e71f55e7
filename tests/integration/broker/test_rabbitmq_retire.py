"""Retiring a VM on RabbitMQ removes its user and its queues (real RabbitMQ)."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.rabbitmq import RABBIT_STOMP, provisioned_vm_pair
from vmcontroller import destinations
from vmcontroller.broker import generate_credentials
from vmcontroller.broker.blocking_client import BlockingClient, BrokerRefused
from vmcontroller.broker.rabbitmq import retire_vm, vm_queues

pytestmark = pytest.mark.rabbitmq


def _ctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def _queues() -> dict[str, int]:
    """Queue name -> messages ready, on vhost /."""
    rows = _ctl("list_queues", "-p", "/", "--no-table-headers", "name", "messages_ready")
    return {name: int(count) for name, count in (line.split("\t") for line in rows.splitlines())}


def _users() -> set[str]:
    rows = _ctl("list_users", "--no-table-headers")
    return {line.split("\t")[0] for line in rows.splitlines()}


@pytest.fixture(scope="module")
def retiring_vm():
    with provisioned_vm_pair("retire") as pair:
        yield pair


def _use_queues(login, vm: str, host) -> None:
    """What a running VM leaves behind: both queues, with a message in each."""
    with BlockingClient(RABBIT_STOMP, "1.2", timeout=5) as agent:
        agent.connect(login.login, login.passcode, host="/")
        agent.send(destinations.to_host(vm), b"reply nobody read", {"user-id": login.login})
        agent.subscribe(destinations.to_guest(vm), "s", ack="client")
        agent.send(destinations.to_host(vm), b"sync", {"user-id": login.login, "receipt": "r"})
        assert agent.receive(timeout=5).command == "RECEIPT"
    with BlockingClient(RABBIT_STOMP, "1.2", timeout=5) as client:
        client.connect(host.login, host.passcode, host="/")
        client.send(destinations.to_guest(vm), b"request", {"receipt": "r"})
        assert client.receive(timeout=5).command == "RECEIPT"


def test_retiring_a_vm_deletes_its_user_and_queues(retiring_vm):
    creds, vm, other = retiring_vm
    login, host = creds.vm_login(vm), creds.host_login()
    _use_queues(login, vm, host)
    _use_queues(creds.vm_login(other), other, host)
    before = _queues()
    assert all(before.get(q, 0) >= 1 for q in vm_queues(vm) + vm_queues(other)), before

    retire_vm(login)

    after = _queues()
    assert not set(vm_queues(vm)) & set(after), after
    assert all(after.get(q, 0) >= 1 for q in vm_queues(other)), after  # others untouched
    users = _users()
    assert login.login not in users and creds.vm_login(other).login in users
    with pytest.raises((BrokerRefused, ConnectionError)):
        with BlockingClient(RABBIT_STOMP, "1.2", timeout=5) as agent:
            agent.connect(login.login, login.passcode, host="/")
    retire_vm(login)  # again: nothing left to delete, no error


def test_only_vm_logins_can_be_retired():
    host = generate_credentials(["x"], host_login="host-never-made").host_login()
    with pytest.raises(ValueError, match="not a VM login"):
        retire_vm(host, rabbitmqctl="/nonexistent/rabbitmqctl")  # refused before any call

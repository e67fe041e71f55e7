"""The RabbitMQ side of the broker-parametrized integration tests (vmcontroller, Co-Pilot).

RabbitMQ (STOMP plugin on 127.0.0.1:61613) is shared with other engineers
and with other test sessions running at the same time, so each session
works in a vhost of its own with users of its own, named by a random tag:
nobody else's traffic (another manager answering our pilots on the presence
topic, say) ever meets ours.

Making them is one ``rabbitmqctl eval`` (vhost, a host login, N per-VM
logins, the deployment's permission regexes from
:func:`vmcontroller.broker.rabbitmq.permissions_for`) and removing them one
more: every rabbitmqctl run starts an Erlang VM (~0.6-3 s on a loaded box),
so one call per user and permission (what ``ensure_user`` does, four each)
would cost a minute for 20 pilots.  The users are not kept between sessions
on purpose: a fixed set would be shared by concurrent sessions.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from vmcontroller.broker import Credentials, generate_credentials
from vmcontroller.broker.rabbitmq import delete_user, permissions_for, provision, vm_queues
from vmcontroller.destinations import Role

__all__ = [
    "RABBIT_STOMP", "RabbitBroker", "each_broker", "provisioned_vm_pair", "rabbit_session",
    "rabbit_unavailable", "rabbitmqctl",
]  # fmt: skip

RABBIT_STOMP = ("127.0.0.1", 61613)


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    """Run ``rabbitmqctl -q ARGS``; raises CalledProcessError with its output on failure."""
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True, timeout=timeout
    ).stdout


def rabbit_unavailable() -> str | None:
    """Why the RabbitMQ tests cannot run here, or None when they can."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed (scripts/bootstrap.sh installs RabbitMQ)"
    try:
        socket.create_connection(RABBIT_STOMP, timeout=2).close()
    except OSError as error:
        return (f"RabbitMQ STOMP is not listening on 127.0.0.1:61613 ({error}); "
                "scripts/bootstrap.sh --services starts it")  # fmt: skip
    return None


@contextlib.contextmanager
def provisioned_vm_pair(prefix: str) -> Iterator[tuple[Credentials, str, str]]:
    """Two VMs on vhost ``/`` made as a deployment makes them (:func:`provision`, per-VM
    users and permissions): ``(credentials, vm_a, vm_b)``; their users and queues are
    removed afterwards.  Skips the test when RabbitMQ is not there."""
    reason = rabbit_unavailable()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    vm_a, vm_b = f"{prefix}{tag}a", f"{prefix}{tag}b"
    creds = generate_credentials([vm_a, vm_b], host_login=f"host-{prefix}{tag}")
    try:
        provision(creds)
        yield creds, vm_a, vm_b
    finally:
        for login in creds.values():
            delete_user(login.login)
        for queue in vm_queues(vm_a) + vm_queues(vm_b):
            subprocess.run(["rabbitmqctl", "delete_queue", queue],
                           capture_output=True, timeout=60, check=False)


def _binary(text: str) -> str:
    """An Erlang binary literal (our names and regexes hold no quotes or non-ASCII)."""
    return '<<"' + text.replace("\\", "\\\\").replace('"', '\\"') + '">>'


class RabbitBroker:
    """A private vhost with a host login and ``vms`` per-VM logins ``vm-<vm_id>``.

    ``host_login()`` and ``vm_login(index)`` give (login, passcode);
    ``new_vm()`` hands out (vm_id, login, passcode) not given out before.
    """

    kind = "rabbitmq"
    port = RABBIT_STOMP[1]
    address = RABBIT_STOMP

    def __init__(self, vms: int, name: str = "t") -> None:
        tag = f"{name}{secrets.token_hex(3)}"
        self.vhost = f"test_{tag}"
        self.host_user = (f"host-{tag}", secrets.token_urlsafe(16))
        self.vms = [
            (f"{tag}v{n}", f"vm-{tag}v{n}", secrets.token_urlsafe(16)) for n in range(vms)
        ]
        self._free = list(self.vms)
        users = [(self.host_user[0], self.host_user[1], permissions_for(Role.HOST))]
        users += [(login, pw, permissions_for(Role.VM, vm_id)) for vm_id, login, pw in self.vms]
        vhost = _binary(self.vhost)
        calls = [f'rabbit_vhost:add({vhost}, <<"test">>)']
        for user, password, perms in users:
            calls += [
                f"rabbit_auth_backend_internal:add_user({_binary(user)}, {_binary(password)},"
                ' <<"test">>)',
                f"rabbit_auth_backend_internal:set_permissions({_binary(user)}, {vhost},"
                f" {_binary(perms.configure)}, {_binary(perms.write)}, {_binary(perms.read)},"
                ' <<"test">>)',
                f"rabbit_auth_backend_internal:set_topic_permissions({_binary(user)}, {vhost},"
                f' <<"amq.topic">>, {_binary(perms.topic_write)}, {_binary(perms.topic_read)},'
                ' <<"test">>)',
            ]
        rabbitmqctl("eval", "[" + ", ".join(calls) + "].")

    def host_login(self) -> tuple[str, str]:
        return self.host_user

    def vm_login(self, index: int) -> tuple[str, str]:
        """The login of VM number ``index`` (wrapping around the pool)."""
        _, login, passcode = self.vms[index % len(self.vms)]
        return login, passcode

    def new_vm(self) -> tuple[str, str, str]:
        return self._free.pop(0)

    def close(self) -> None:
        """Remove the vhost (with its queues) and every user made for it."""
        names = ", ".join(_binary(name) for name in [self.host_user[0]] + [v[1] for v in self.vms])
        rabbitmqctl(
            "eval",
            f'[rabbit_vhost:delete({_binary(self.vhost)}, <<"test">>)]'
            f' ++ [rabbit_auth_backend_internal:delete_user(U, <<"test">>) || U <- [{names}]].',
        )


def rabbit_session(vms: int, name: str) -> Iterator[RabbitBroker]:
    """Body of a session fixture ``rabbitmq_broker``: skips when RabbitMQ is not here."""
    reason = rabbit_unavailable()
    if reason:
        pytest.skip(reason)
    rabbit = RabbitBroker(vms, name)
    try:
        yield rabbit
    finally:
        rabbit.close()


@pytest.fixture(
    name="broker", params=["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
def each_broker(request: pytest.FixtureRequest) -> Any:
    """Each test taking this runs once per broker: the directory's ``embedded_broker``
    and ``rabbitmq_broker`` fixtures (import this one into the conftest)."""
    return request.getfixturevalue(f"{request.param}_broker")

"""Per-VM RabbitMQ users with the same isolation as the embedded broker.

A project that runs many guests against one RabbitMQ (STOMP plugin, port
61613) gives each VM its own RabbitMQ user whose permission regexes allow
exactly what :func:`vmcontroller.destinations.allowed` allows.  How the
STOMP plugin maps our destinations onto AMQP resources (RabbitMQ 3.10):

* ``SEND /queue/Q``: declares queue ``Q`` (configure on ``Q``) and
  publishes to the default exchange (write on ``amq.default``).
* ``SUBSCRIBE /queue/Q``: declares ``Q`` (configure) and consumes (read on ``Q``).
* ``SEND /topic/K``: publishes to ``amq.topic`` with routing key ``K``
  (write on ``amq.topic``; topic permission ``write`` on the key).
* ``SUBSCRIBE /topic/K``: declares a private queue ``stomp-subscription-…``
  (configure, write on it for the binding), binds it to ``amq.topic``
  (read on ``amq.topic``; topic permission ``read`` on the key), consumes it.

Hence, for VM ``<id>`` on vhost ``/``::

    configure  ^vmc\\.<id>\\.(to_guest|to_host)$
    write      ^(amq\\.default|amq\\.topic)$
    read       ^vmc\\.<id>\\.to_guest$
    topic permissions on amq.topic: write ^vmc\\.presence$, read ^$

and for the host login::

    configure  ^(vmc\\..*|stomp-subscription-.*)$
    write      ^(amq\\.default|amq\\.topic|stomp-subscription-.*)$
    read       ^(vmc\\..*|amq\\.topic|stomp-subscription-.*)$
    topic permissions on amq.topic: write ^vmc\\..*$, read ^vmc\\..*$

The configure regex is what stops a VM from sending to another VM's queue
with ``/queue/...`` (the SEND must declare the queue).  RabbitMQ checks
*write* on the exchange, not the queue, so a VM user could still publish
into another VM's queue through ``/amq/queue/...`` or
``/exchange/amq.default/...``; receivers must therefore check the
``user-id`` header, which RabbitMQ validates against the sender's login
and the embedded broker stamps on every message (see the README).

A retired VM (:func:`retire_vm`) loses its user and its two queues: nothing
else is per VM (a VM login cannot subscribe to a topic, so it never owns a
``stomp-subscription-…`` queue).

The functions shell out to ``rabbitmqctl`` (run as root on the broker
host); passwords go through stdin, never the command line.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from vmcontroller.broker.credentials import Credentials, Login
from vmcontroller.destinations import NAMESPACE, Role, to_guest, to_host, validate_vm_id

__all__ = [
    "Permissions",
    "RabbitMQError",
    "delete_user",
    "ensure_user",
    "permissions_for",
    "provision",
    "retire_vm",
    "vm_queues",
]

_NS = re.escape(NAMESPACE)


class RabbitMQError(RuntimeError):
    """rabbitmqctl failed; the message holds its command and output."""


@dataclass(frozen=True)
class Permissions:
    """One user's permission regexes on one vhost."""

    configure: str
    write: str
    read: str
    topic_write: str
    topic_read: str


def permissions_for(role: Role | str, vm_id: str | None = None) -> Permissions:
    """The regexes that give ``role`` (bound to ``vm_id``) what ``allowed()`` allows."""
    if Role(role) is Role.HOST:
        return Permissions(
            configure=rf"^({_NS}\..*|stomp-subscription-.*)$",
            write=r"^(amq\.default|amq\.topic|stomp-subscription-.*)$",
            read=rf"^({_NS}\..*|amq\.topic|stomp-subscription-.*)$",
            topic_write=rf"^{_NS}\..*$",
            topic_read=rf"^{_NS}\..*$",
        )
    vm = re.escape(validate_vm_id(vm_id or ""))
    return Permissions(
        configure=rf"^{_NS}\.{vm}\.(to_guest|to_host)$",
        write=r"^(amq\.default|amq\.topic)$",
        read=rf"^{_NS}\.{vm}\.to_guest$",
        topic_write=rf"^{_NS}\.presence$",
        topic_read="^$",
    )


def _ctl(args: Sequence[str], rabbitmqctl: str, stdin: str | None = None) -> str:
    command = [rabbitmqctl, *args]
    try:
        done = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RabbitMQError(f"cannot run {command[0]} {command[1]}: {error}") from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise RabbitMQError(f"{command[0]} {command[1]} failed ({done.returncode}): {output}")
    return done.stdout


def _users(rabbitmqctl: str) -> set[str]:
    users = _ctl(["list_users", "--quiet", "--no-table-headers"], rabbitmqctl)
    return {line.split("\t")[0] for line in users.splitlines()}


def ensure_user(
    login: Login,
    vhost: str = "/",
    rabbitmqctl: str = "rabbitmqctl",
    existing: set[str] | None = None,
) -> None:
    """Create (or update) ``login`` as a RabbitMQ user with its role's permissions.

    :param existing: the server's user names if the caller already listed
        them (each rabbitmqctl run costs about a second on a busy server).
    """
    perms = permissions_for(login.role, login.vm_id)
    if existing is None:
        existing = _users(rabbitmqctl)
    if login.login in existing:
        _ctl(["change_password", login.login], rabbitmqctl, stdin=login.passcode + "\n")
    else:
        _ctl(["add_user", login.login], rabbitmqctl, stdin=login.passcode + "\n")
    _ctl(
        ["set_permissions", "-p", vhost, login.login, perms.configure, perms.write, perms.read],
        rabbitmqctl,
    )
    _ctl(
        [
            "set_topic_permissions",
            "-p",
            vhost,
            login.login,
            "amq.topic",
            perms.topic_write,
            perms.topic_read,
        ],
        rabbitmqctl,
    )


def provision(credentials: Credentials, vhost: str = "/", rabbitmqctl: str = "rabbitmqctl") -> None:
    """Create every login of a credentials file as a RabbitMQ user."""
    existing = _users(rabbitmqctl)
    for login in credentials.values():
        ensure_user(login, vhost, rabbitmqctl, existing)


def delete_user(name: str, rabbitmqctl: str = "rabbitmqctl") -> None:
    """Remove a RabbitMQ user (an absent user is not an error)."""
    try:
        _ctl(["delete_user", name], rabbitmqctl)
    except RabbitMQError as error:
        if "no_such_user" not in str(error) and "does not exist" not in str(error):
            raise


def vm_queues(vm_id: str) -> tuple[str, str]:
    """The RabbitMQ queue names behind VM ``vm_id``'s two STOMP queues."""
    return to_guest(vm_id).removeprefix("/queue/"), to_host(vm_id).removeprefix("/queue/")


def retire_vm(login: Login, vhost: str = "/", rabbitmqctl: str = "rabbitmqctl") -> None:
    """Delete a VM's user and then its queues, with any messages still in them.

    Queues outlive their consumers, so without this every VM ever run would
    leave two queues (and whatever the host sent it last) on the server.  The
    user goes first, which closes the agent's connections, so the agent
    cannot declare the queues again behind us; the host must have stopped
    sending to the VM.  Absent users and queues are not errors (retiring
    twice is harmless).
    """
    if login.role is not Role.VM or not login.vm_id:
        raise ValueError(f"{login.login} is not a VM login")
    delete_user(login.login, rabbitmqctl)
    for queue in vm_queues(login.vm_id):
        try:
            _ctl(["delete_queue", "-p", vhost, queue], rabbitmqctl)
        except RabbitMQError as error:
            if "not found" not in str(error).lower():
                raise

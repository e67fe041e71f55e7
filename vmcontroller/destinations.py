"""The STOMP destinations vmcontroller uses, and who may use each one.

Every VM gets two private queues and shares one presence topic::

    /queue/vmc.<vm_id>.to_guest   host -> agent requests    (the agent reads)
    /queue/vmc.<vm_id>.to_host    agent -> host replies     (the host reads)
    /topic/vmc.presence           hello / bye / heartbeats  (agents send, host reads)

The original VMController broadcast every request on one topic and let
each guest filter on a glob, so every guest saw every other guest's
commands.  Per-VM queues make isolation enforceable by the broker: the
embedded broker checks :func:`allowed` on SUBSCRIBE and SEND, and the
same names map onto RabbitMQ permission regexes (see
:mod:`vmcontroller.broker.rabbitmq`).  Queues rather than topics also mean
a request sent while the agent reconnects is stored, not lost.

This module is the single place that spells these names: the host
controller, the guest agent, the broker and the RabbitMQ helper import
them from here.
"""

from __future__ import annotations

import enum
import re

__all__ = [
    "NAMESPACE",
    "PRESENCE",
    "VM_ID_PATTERN",
    "Action",
    "Role",
    "allowed",
    "parse",
    "to_guest",
    "to_host",
    "validate_vm_id",
]

#: Prefix of every vmcontroller queue and topic name.
NAMESPACE = "vmc"
#: Topic where agents announce themselves (hello, bye, heartbeats).
PRESENCE = f"/topic/{NAMESPACE}.presence"

#: What a VM id may look like: short, no dots (they separate name parts and
#: are RabbitMQ topic word separators), nothing a regex or a path treats
#: specially.
VM_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

_VM_QUEUE = re.compile(rf"/queue/{NAMESPACE}\.({VM_ID_PATTERN.pattern})\.(to_guest|to_host)")


class Role(enum.StrEnum):
    """What a broker login is for."""

    #: The host controller / admin: may use every VM's destinations.
    HOST = "host"
    #: One VM's guest agent: may use only its own VM's destinations.
    VM = "vm"


class Action(enum.StrEnum):
    """Destination operations the broker authorises."""

    SUBSCRIBE = "subscribe"
    SEND = "send"


def validate_vm_id(vm_id: str) -> str:
    """Return ``vm_id`` if it is a valid VM id, else raise ValueError."""
    if not isinstance(vm_id, str) or not VM_ID_PATTERN.fullmatch(vm_id):
        raise ValueError(
            f"invalid VM id {vm_id!r}: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return vm_id


def to_guest(vm_id: str) -> str:
    """The queue carrying host requests to ``vm_id``'s agent."""
    return f"/queue/{NAMESPACE}.{validate_vm_id(vm_id)}.to_guest"


def to_host(vm_id: str) -> str:
    """The queue carrying ``vm_id``'s agent replies and events to the host."""
    return f"/queue/{NAMESPACE}.{validate_vm_id(vm_id)}.to_host"


def parse(destination: str) -> tuple[str, str | None] | None:
    """Classify a destination.

    :returns: ``("to_guest", vm_id)``, ``("to_host", vm_id)``,
        ``("presence", None)``, or None for a name outside the scheme.
    """
    if destination == PRESENCE:
        return ("presence", None)
    match = _VM_QUEUE.fullmatch(destination)
    if match is None:
        return None
    return (match.group(2), match.group(1))


def allowed(
    login_role: Role | str, vm_id: str | None, destination: str, action: Action | str
) -> bool:
    """May a login with ``login_role`` (bound to ``vm_id``) do ``action`` on ``destination``?

    * HOST: subscribe and send on every destination of the scheme.
    * VM: subscribe to its own ``to_guest`` queue; send to its own
      ``to_host`` queue and to the presence topic.  Nothing else, so one
      guest can neither read nor forge another guest's traffic, nor
      listen to who else is connected.

    Destinations outside the scheme are refused for every role.
    """
    role = Role(login_role)
    action = Action(action)
    kind = parse(destination)
    if kind is None:
        return False
    if role is Role.HOST:
        return True
    name, target_vm = kind
    if action is Action.SUBSCRIBE:
        return name == "to_guest" and target_vm == vm_id
    if name == "presence":
        return True
    return name == "to_host" and target_vm == vm_id

"""The messages between pilots and the job manager, over the STOMP broker.

Each STOMP body is one JSON object with ``copilot`` (the protocol version),
``type`` and the fields below.  In the spirit of Co-Pilot's
``want_getJob``/``runJob``/``jobDone``, but with leases::

    pilot -> manager   want_job   seq, capabilities
    manager -> pilot   offer      seq, job_id, lease_id, lease_token, job, inputs,
                                  http_url, heartbeat_interval
                       no_job     seq, retry_after
    pilot -> manager   accept     job_id, lease_id
    manager -> pilot   accepted   job_id, lease_id
    pilot -> manager   heartbeat  job_id, lease_id
    manager -> pilot   abort      job_id, lease_id, reason   (lease gone: kill the job)
    pilot -> manager   done       job_id, lease_id, result, outputs {name: {size, sha256}}
    manager -> pilot   done_ack   job_id, lease_id
    pilot -> manager   release    job_id, lease_id, reason   (a lease it will not finish)
    manager -> pilot   released   job_id, lease_id           (job queued again, no attempt spent)
                       rejected   job_id, lease_id, reason   (answer to accept/done/release)

Pilots send to the presence topic (:data:`vmcontroller.destinations.PRESENCE`,
which every VM login may write) and read their own ``to_guest`` queue; the
manager, logged in as the host, reads the topic and writes those queues.
So Co-Pilot needs no destination beyond what
:func:`vmcontroller.destinations.allowed` and the RabbitMQ permission
regexes already grant.  The sender of a pilot message is the broker-checked
``user-id`` header, never a field of the body.

Protocol history: 1 (2026-11) the messages above; ``release``/``released``
added later in 1 (a manager without them drops a ``release`` as an unknown
type, and the lease then expires as if the pilot had gone silent).
"""

# -*- test-case-name: tests.unit.copilot.test_messages -*-

from __future__ import annotations

import json
from typing import Any

__all__ = ["COPILOT_VERSION", "FIELDS", "MessageError", "decode", "encode"]

COPILOT_VERSION = 1

#: type -> {field: expected JSON type(s)}; every field is required.
FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "want_job": {"seq": int, "capabilities": dict},
    "offer": {
        "seq": int, "job_id": str, "lease_id": str, "lease_token": str, "job": dict,
        "inputs": list, "http_url": str, "heartbeat_interval": (int, float),
    },
    "no_job": {"seq": int, "retry_after": (int, float)},
    "accept": {"job_id": str, "lease_id": str},
    "accepted": {"job_id": str, "lease_id": str},
    "heartbeat": {"job_id": str, "lease_id": str},
    "abort": {"job_id": str, "lease_id": str, "reason": str},
    "done": {"job_id": str, "lease_id": str, "result": dict, "outputs": dict},
    "done_ack": {"job_id": str, "lease_id": str},
    "release": {"job_id": str, "lease_id": str, "reason": str},
    "released": {"job_id": str, "lease_id": str},
    "rejected": {"job_id": str, "lease_id": str, "reason": str},
}  # fmt: skip


class MessageError(ValueError):
    """A body that is not a valid Co-Pilot message."""


#: One compact encoder for every message (``json.dumps`` with options builds a new one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(kind: str, **fields: Any) -> bytes:
    """The STOMP body of one message (fields are checked like on receipt)."""
    message = {"copilot": COPILOT_VERSION, "type": kind, **fields}
    _check(message)
    return _ENCODER.encode(message).encode("utf-8")


def decode(body: bytes) -> dict[str, Any]:
    """Parse and check a body; raises :class:`MessageError` saying what is wrong."""
    try:
        message = json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise MessageError(f"not JSON: {error}") from None
    if not isinstance(message, dict):
        raise MessageError("a message must be a JSON object")
    _check(message)
    return message


def _check(message: dict[str, Any]) -> None:
    version = message.get("copilot")
    if version != COPILOT_VERSION:
        raise MessageError(f"not a Co-Pilot v{COPILOT_VERSION} message (copilot={version!r})")
    kind = message.get("type")
    fields = FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise MessageError(f"unknown type {kind!r}; known: {', '.join(sorted(FIELDS))}")
    for name, expected in fields.items():
        value = message.get(name)
        if isinstance(value, bool) or not isinstance(value, expected):
            raise MessageError(f"{kind}: field {name!r} missing or of the wrong type: {value!r}")

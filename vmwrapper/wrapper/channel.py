"""What the main loop needs from the link to the guest agent.

:class:`GuestChannel` is the contract; :mod:`.guestlink` implements it with a
broker and :class:`vmcontroller.host.controller.HostController`, unit tests
with an in-process double. Every method that talks to the guest returns a
Deferred; none blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer

#: ``on_output(stream, data)`` for a guest command's output batches.
OutputCallback = Callable[[str, bytes], None]


@dataclass(frozen=True)
class BrokerSettings:
    """What a restored guest remembers of its broker: keep it across wrapper runs.

    :param port: the embedded broker's port on 127.0.0.1 (0 = external broker).
    :param logins: ``{"host": [login, passcode], "vm": [login, passcode]}``.
    """

    port: int = 0
    logins: dict[str, list[str]] = field(default_factory=dict)


class GuestChannel(Protocol):
    """The host side of the conversation with one VM's guest agent."""

    def open(self, vm_id: str, saved: BrokerSettings | None) -> defer.Deferred[BrokerSettings]:
        """Start the broker (or reach the external one) and connect; fires when connected.

        *saved* are the settings of an earlier run that a restored guest still
        uses; the channel reuses them (same port, same logins) when it can.
        """

    def agent_settings(self, vm_id: str) -> dict[str, Any]:
        """The guest agent's settings for *vm_id* (broker address as the guest sees it)."""

    def wait_for_hello(self, vm_id: str, timeout: float) -> defer.Deferred[Any]:
        """Fires once the agent said hello; fails with ``defer.TimeoutError`` after *timeout*."""

    def run(self, vm_id: str, shell: str, env: dict[str, str] | None, cwd: str | None,
            timeout: float | None, on_output: OutputCallback) -> tuple[int, defer.Deferred[Any]]:
        """Start a shell command; returns its request id and a Deferred of its ``ExitResult``."""

    def adopt(self, vm_id: str, seq: int, on_output: OutputCallback) -> defer.Deferred[Any]:
        """Wait for the ``ExitResult`` of command *seq*, started by an earlier wrapper run."""

    def kill(self, vm_id: str, seq: int) -> defer.Deferred[Any]:
        """Terminate command *seq* in the guest."""

    def put_file(self, vm_id: str, source: str, destination: str) -> defer.Deferred[Any]:
        """Copy a host file into the guest (path relative to the agent's work dir)."""

    def get_file(self, vm_id: str, source: str, destination: str,
                 max_size: int | None = None) -> defer.Deferred[Any]:
        """Copy a guest file (relative to the work dir) to a host path."""

    def running_commands(self, vm_id: str) -> int | None:
        """Commands the agent said it runs in its last heartbeat (None: not heard yet)."""

    def hold_liveness(self, vm_id: str) -> None:
        """Stop expecting heartbeats (the VM is paused on purpose)."""

    def release_liveness(self, vm_id: str) -> None:
        """Expect heartbeats again, counting from now."""

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call *callback(vm_id)* when the guest stops sending heartbeats."""

    def close(self) -> defer.Deferred[Any]:
        """Disconnect and stop the embedded broker."""

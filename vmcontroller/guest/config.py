"""The guest agent's settings and where they come from.

The settings are one JSON object.  These keys are agreed with the appliance
(``vmwrapper.appliance.userdata.AgentConfig`` writes exactly them into
``agent.json`` on the user-data disk)::

    broker_host         str    the broker as the guest sees it (10.0.2.2 under NAT)
    broker_port         int    its STOMP port
    login, passcode     str    this VM's broker account
    vm_id               str    this VM's id (its queues are named after it)
    work_dir            str    absolute path; every file operation stays inside it
    heartbeat_interval  float  seconds between heartbeats (default 10)

Optional keys (defaults in :class:`AgentConfig`): ``vhost`` (STOMP ``host``
header, "/"), ``max_file_size`` (bytes one transfer may carry),
``max_stdin`` (bytes of stdin one run may carry), ``kill_grace`` (seconds
between SIGTERM and SIGKILL), ``trusted_senders`` (broker logins whose
requests are obeyed; requests with another or no ``user-id`` are refused.
Needed with RabbitMQ, where a VM login can publish into another VM's queue
through ``/amq/queue/...``; the embedded broker already stops that).

Where the file is found, first match wins (:func:`find_config_path`):

1. ``--config FILE`` on the agent's command line;
2. ``vmcontroller.config=FILE`` on the kernel command line (``/proc/cmdline``);
3. ``/run/cidata/agent.json`` (the appliance mounts the user-data disk there).
"""

# -*- test-case-name: tests.unit.vmcontroller.test_guest_config -*-

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_PATHS", "AgentConfig", "ConfigError", "find_config_path", "load_config"]

#: Where the appliance puts the user-data disk's agent settings.
DEFAULT_PATHS = ("/run/cidata/agent.json",)
_CMDLINE_KEY = "vmcontroller.config="


class ConfigError(ValueError):
    """The agent's settings are missing or invalid."""


@dataclass(frozen=True)
class AgentConfig:
    """Validated agent settings (see the module docstring for each key)."""

    broker_host: str
    broker_port: int
    login: str
    passcode: str
    vm_id: str
    work_dir: str
    heartbeat_interval: float = 10.0
    vhost: str = "/"
    max_file_size: int = 16 * 1024**3
    max_stdin: int = 16 * 1024**2
    kill_grace: float = 2.0
    trusted_senders: list[str] | None = None

    def __post_init__(self) -> None:
        for name in ("broker_host", "login", "passcode", "vm_id", "work_dir", "vhost"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        port = self.broker_port
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"broker_port must be a port number 1-65535, got {port!r}")
        if not os.path.isabs(self.work_dir):
            raise ConfigError(f"work_dir must be an absolute path, got {self.work_dir!r}")
        for name in ("heartbeat_interval", "kill_grace"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        senders = self.trusted_senders
        if senders is not None and (
            not isinstance(senders, list) or not all(isinstance(x, str) and x for x in senders)
        ):
            raise ConfigError(f"trusted_senders must be a list of logins, got {senders!r}")
        for name in ("max_file_size", "max_stdin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a byte count >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> AgentConfig:
        """Build from a decoded JSON object, naming unknown and missing keys."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.name not in data
        ]
        if required:
            raise ConfigError(f"{source}: missing key(s) {', '.join(required)}")
        try:
            return cls(**data)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None


def find_config_path(explicit: str | None = None, cmdline_path: str = "/proc/cmdline") -> str:
    """Which settings file to read (see the module docstring for the order)."""
    if explicit:
        return explicit
    try:
        with open(cmdline_path, encoding="utf-8", errors="replace") as handle:
            words = handle.read().split()
    except OSError:
        words = []
    for word in words:
        if word.startswith(_CMDLINE_KEY) and len(word) > len(_CMDLINE_KEY):
            return word[len(_CMDLINE_KEY) :]
    for path in DEFAULT_PATHS:
        if os.path.exists(path):
            return path
    raise ConfigError(
        "no agent settings: pass --config FILE, or boot with "
        f"{_CMDLINE_KEY}FILE, or provide {' or '.join(DEFAULT_PATHS)}"
    )


def load_config(path: str) -> AgentConfig:
    """Read and validate the JSON settings file at ``path``."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read agent settings {path}: {error.strerror}") from None
    except ValueError as error:
        raise ConfigError(f"agent settings {path} are not valid JSON: {error}") from None
    return AgentConfig.from_dict(data, source=path)

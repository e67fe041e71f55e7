"""The job's broker choice: the embedded broker, or an external STOMP broker by URL.

``<broker>embedded</broker>`` (the default) makes the wrapper start its own
broker with per-VM credentials; ``stomp://user:password@host:port`` or
``stomp+ssl://...`` points host and guest at an existing one (RabbitMQ at scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

#: Default ports when the URL gives none (RabbitMQ's STOMP and STOMP-over-TLS ports).
DEFAULT_PORTS = {"stomp": 61613, "stomp+ssl": 61614}


@dataclass(frozen=True)
class Broker:
    """Where the host controller and the guest agent exchange messages."""

    scheme: str = "embedded"
    host: str = ""
    port: int = 0
    login: str = ""
    passcode: str = ""

    @property
    def embedded(self) -> bool:
        return self.scheme == "embedded"

    @property
    def tls(self) -> bool:
        return self.scheme == "stomp+ssl"

    def display(self) -> str:
        """The URL with the password masked, for logs and ``check-job``."""
        if self.embedded:
            return "embedded"
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = quote(self.login, safe="") + (":***" if self.passcode else "")
        return f"{self.scheme}://{user + '@' if self.login else ''}{host}:{self.port}"


def parse_broker_url(text: str) -> Broker:
    """Read ``embedded`` or a STOMP URL.

    :raises ValueError: with the reason, for anything else.
    """
    if text.lower() == "embedded":
        return Broker()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{text!r} is neither 'embedded' nor a stomp:// or stomp+ssl:// URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{text!r} has a path, query or fragment; a broker URL has none")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port (1-65535)") from None
    if not parts.hostname:
        raise ValueError(f"{text!r} names no host")
    if port == 0:
        raise ValueError(f"{text!r} has an invalid port (1-65535)")
    return Broker(
        scheme=scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORTS[scheme],
        login=unquote(parts.username or ""),
        passcode=unquote(parts.password or ""),
    )

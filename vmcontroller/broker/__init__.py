"""The embedded STOMP broker: coilmq 1.1.0 with our frame parser and rules.

``EmbeddedBroker`` runs it in a thread; ``main`` is the ``vmcontroller
broker`` command.  Destination names and who may use them are in
:mod:`vmcontroller.destinations`; the credentials file format in
:mod:`vmcontroller.broker.credentials`.
"""

from __future__ import annotations

from vmcontroller.broker.cli import main
from vmcontroller.broker.credentials import (
    Credentials,
    CredentialsError,
    Login,
    generate_credentials,
    load_credentials,
    write_credentials,
)
from vmcontroller.broker.server import BrokerConfig, EmbeddedBroker

__all__ = [
    "BrokerConfig",
    "Credentials",
    "CredentialsError",
    "EmbeddedBroker",
    "Login",
    "generate_credentials",
    "load_credentials",
    "main",
    "write_credentials",
]

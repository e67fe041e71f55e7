"""Broker logins: the credentials file, its generator and coilmq's authenticator.

The file is JSON, written with mode 0600 because passcodes are stored in
clear (the wrapper must hand each guest its own passcode)::

    {
      "version": 1,
      "logins": {
        "host-5f1c9a": {"passcode": "…", "role": "host"},
        "vm-0a1b2c3d": {"passcode": "…", "role": "vm", "vm_id": "0a1b2c3d"}
      }
    }

``role`` is ``host`` (the host controller / admin: every VM's
destinations) or ``vm`` (one guest agent, bound to ``vm_id``: only that
VM's destinations, see :func:`vmcontroller.destinations.allowed`).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from coilmq.auth import Authenticator

from vmcontroller.destinations import Role, validate_vm_id

__all__ = [
    "FORMAT_VERSION",
    "Credentials",
    "CredentialsAuthenticator",
    "CredentialsError",
    "Login",
    "generate_credentials",
    "load_credentials",
    "write_credentials",
]

#: Version of the credentials file layout.
FORMAT_VERSION = 1


class CredentialsError(ValueError):
    """The credentials file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class Login:
    """One broker account."""

    login: str
    passcode: str
    role: Role
    vm_id: str | None = None

    def __post_init__(self) -> None:
        if not self.login or not self.passcode:
            raise CredentialsError("login and passcode must be non-empty strings")
        if self.role is Role.VM:
            if self.vm_id is None:
                raise CredentialsError(f"login {self.login!r} has role 'vm' but no vm_id")
            try:
                validate_vm_id(self.vm_id)
            except ValueError as error:
                raise CredentialsError(f"login {self.login!r}: {error}") from None
        elif self.vm_id is not None:
            raise CredentialsError(f"login {self.login!r} has role 'host': it takes no vm_id")


class Credentials(Mapping[str, Login]):
    """Logins by name: what the broker accepts."""

    def __init__(self, logins: Iterable[Login]) -> None:
        self._logins: dict[str, Login] = {}
        for login in logins:
            if login.login in self._logins:
                raise CredentialsError(f"login {login.login!r} appears twice")
            self._logins[login.login] = login

    def __getitem__(self, name: str) -> Login:
        return self._logins[name]

    def __iter__(self):
        return iter(self._logins)

    def __len__(self) -> int:
        return len(self._logins)

    def host_login(self) -> Login:
        """The first login with the host role (what the host controller uses)."""
        for login in self._logins.values():
            if login.role is Role.HOST:
                return login
        raise CredentialsError("no login with role 'host'")

    def vm_login(self, vm_id: str) -> Login:
        """The login bound to ``vm_id``."""
        for login in self._logins.values():
            if login.vm_id == vm_id:
                return login
        raise CredentialsError(f"no login for VM {vm_id!r}")

    def to_json(self) -> dict:
        """The file layout described in the module docstring."""
        logins = {}
        for login in self._logins.values():
            entry: dict[str, str] = {"passcode": login.passcode, "role": str(login.role)}
            if login.vm_id is not None:
                entry["vm_id"] = login.vm_id
            logins[login.login] = entry
        return {"version": FORMAT_VERSION, "logins": logins}

    @classmethod
    def from_json(cls, data: object, source: str = "credentials") -> Credentials:
        """Validate and build from the parsed file layout."""
        if not isinstance(data, dict) or not isinstance(data.get("logins"), dict):
            raise CredentialsError(f"{source}: expected an object with a 'logins' object")
        if data.get("version", FORMAT_VERSION) != FORMAT_VERSION:
            raise CredentialsError(
                f"{source}: unsupported version {data.get('version')!r}; "
                f"this broker reads version {FORMAT_VERSION}"
            )
        logins = []
        for name, entry in data["logins"].items():
            if not isinstance(entry, dict):
                raise CredentialsError(f"{source}: login {name!r} must be an object")
            unknown = set(entry) - {"passcode", "role", "vm_id"}
            if unknown:
                raise CredentialsError(
                    f"{source}: login {name!r} has unknown keys {sorted(unknown)}; "
                    "valid keys: passcode, role, vm_id"
                )
            try:
                role = Role(entry.get("role"))
            except ValueError:
                raise CredentialsError(
                    f"{source}: login {name!r} has role {entry.get('role')!r}; "
                    "valid roles: host, vm"
                ) from None
            passcode = entry.get("passcode")
            if not isinstance(passcode, str):
                raise CredentialsError(f"{source}: login {name!r} needs a string passcode")
            logins.append(Login(name, passcode, role, entry.get("vm_id")))
        return cls(logins)


def load_credentials(path: str | os.PathLike[str]) -> Credentials:
    """Read a credentials file.

    :raises CredentialsError: naming the file and what is wrong with it.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise CredentialsError(f"cannot read credentials file {path}: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CredentialsError(f"credentials file {path} is not valid JSON: {error}") from None
    return Credentials.from_json(data, source=str(path))


def write_credentials(path: str | os.PathLike[str], credentials: Credentials) -> None:
    """Write ``credentials`` to ``path`` atomically, readable by its owner only."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(credentials.to_json(), out, indent=2)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate_credentials(
    vm_ids: Iterable[str],
    path: str | os.PathLike[str] | None = None,
    host_login: str | None = None,
) -> Credentials:
    """Make one random host login and one random login per VM.

    Logins are ``host-<hex>`` and ``vm-<vm_id>``; passcodes carry 192 bits
    from :mod:`secrets`.  When ``path`` is given the file is written too.
    """
    logins = [Login(host_login or f"host-{secrets.token_hex(4)}", _passcode(), Role.HOST)]
    for vm_id in vm_ids:
        validate_vm_id(vm_id)
        logins.append(Login(f"vm-{vm_id}", _passcode(), Role.VM, vm_id))
    credentials = Credentials(logins)
    if path is not None:
        write_credentials(path, credentials)
    return credentials


def _passcode() -> str:
    return secrets.token_urlsafe(24)


class CredentialsAuthenticator(Authenticator):
    """coilmq authenticator backed by :class:`Credentials` (thread-safe: read-only)."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    def authenticate(self, login: str | None, passcode: str | None) -> bool:
        """True when ``login`` exists and ``passcode`` matches (constant-time compare)."""
        account = self.identify(login, passcode)
        return account is not None

    def identify(self, login: str | None, passcode: str | None) -> Login | None:
        """The account for a correct login/passcode pair, else None."""
        if login is None or passcode is None:
            return None
        account = self.credentials.get(login)
        if account is None:
            # Compare anyway so a wrong login costs the same as a wrong passcode.
            hmac.compare_digest(passcode.encode(), passcode.encode())
            return None
        if not hmac.compare_digest(account.passcode.encode(), passcode.encode()):
            return None
        return account

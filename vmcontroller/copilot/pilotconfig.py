"""The pilot's settings: command-line flags over a settings file over defaults.

A pilot that runs as a BOINC job gets its broker login from a file, not from
its command line: the job's command line is written to ``stderr.txt`` and to
the client's logs, the file only travels as a work-unit input copied into
the guest (``<copy_to_guest>``).  The file is one JSON object::

    {"broker": "10.0.2.2:61613", "vhost": "/", "login": "vm-ID",
     "passcode": "...", "slice": 3600, "cores": 1, "memory_mb": 1024,
     "max_run_time": 3600}

Every key is optional and a flag given on the command line wins.  ``broker``
is the address *as the guest sees it* (10.0.2.2 is the host's loopback
under QEMU and VirtualBox NAT).  Errors name the key but never echo a
passcode.  Standard library only: this runs inside the appliance.
"""

# -*- test-case-name: tests.unit.copilot.test_pilotconfig -*-

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["DEFAULTS", "PilotSettingsError", "load_settings", "merge_settings", "parse_address"]

#: What a pilot uses for a setting that neither the command line nor the file gives.
DEFAULTS: dict[str, Any] = {
    "broker": ("127.0.0.1", 61613),
    "vhost": "/",
    "login": None,
    "passcode": "",
    "slice": None,
    "cores": os.cpu_count() or 1,
    "memory_mb": 1024,
    "max_run_time": 24 * 3600.0,
}

_SECRET = {"passcode"}


class PilotSettingsError(ValueError):
    """A settings file that cannot be used; the message names the file and the key."""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``; ValueError saying what is expected."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: use HOST:PORT")
    return host, int(port)


def _check(key: str, value: Any, source: str) -> Any:
    shown = "(hidden)" if key in _SECRET else repr(value)
    if key == "broker":
        if not isinstance(value, str):
            raise PilotSettingsError(f"{source}: broker must be a \"HOST:PORT\" string, not {shown}")
        try:
            return parse_address(value)
        except ValueError as error:
            raise PilotSettingsError(f"{source}: broker {error}") from None
    if key in ("vhost", "login", "passcode"):
        if not isinstance(value, str) or (key != "passcode" and not value):
            raise PilotSettingsError(f"{source}: {key} must be a non-empty string, not {shown}")
        return value
    if key in ("cores", "memory_mb"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PilotSettingsError(f"{source}: {key} must be a whole number >= 1, not {shown}")
        return value
    # slice, max_run_time: seconds
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise PilotSettingsError(f"{source}: {key} must be a number of seconds > 0, not {shown}")
    return float(value)


def load_settings(path: str) -> dict[str, Any]:
    """The checked settings of a pilot settings file (only the keys it has)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        raise PilotSettingsError(f"cannot read pilot settings {path}: {error.strerror}") from None
    except ValueError:  # the decoder's message may quote the file, passcode included
        raise PilotSettingsError(f"pilot settings {path} are not valid JSON") from None
    if not isinstance(data, dict):
        raise PilotSettingsError(f"pilot settings {path}: must be a JSON object")
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise PilotSettingsError(f"pilot settings {path}: unknown keys {unknown}; "
                                 f"known: {sorted(DEFAULTS)}")
    return {key: _check(key, value, f"pilot settings {path}") for key, value in data.items()}


def merge_settings(flags: dict[str, Any], from_file: dict[str, Any]) -> dict[str, Any]:
    """Every setting: a flag that was given (not None), else the file's value, else the default.

    :raises PilotSettingsError: when no login is given anywhere.
    """
    merged = {}
    for key, default in DEFAULTS.items():
        value = flags.get(key)
        merged[key] = value if value is not None else from_file.get(key, default)
    if not merged["login"]:
        raise PilotSettingsError("no broker login: give --login or a settings file with \"login\"")
    return merged

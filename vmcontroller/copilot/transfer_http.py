"""The pilot's HTTP file transfers: fetch inputs, upload outputs, each sha256-checked.

Blocking :mod:`urllib` calls, meant to run in a thread
(:func:`twisted.internet.threads.deferToThread`).  Only the standard library:
the pilot runs inside the appliance.

A connection that is refused or reset (the manager restarting) is tried
again for up to :data:`RETRY_FOR` seconds: the lease survives a restart, and
giving up would cost the job an attempt and run it twice.  Both transfers
are idempotent (a file is written whole under its name).  A refusal the
manager *answered* (an HTTP error) is never retried.
"""

# -*- test-case-name: tests.integration.copilot.test_copilot -*-

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["TransferRefused", "download", "upload"]

_CHUNK = 1024 * 1024
#: Seconds a transfer is retried while the manager cannot be reached.
RETRY_FOR = 30.0


class TransferRefused(Exception):
    """The manager said no (``status`` 409 = the lease is gone) or the bytes were wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _refusal(error: urllib.error.HTTPError) -> TransferRefused:
    try:
        message = json.loads(error.read()).get("message", "")
    except ValueError:
        message = error.reason
    return TransferRefused(error.code, str(message))


def _unreachable(error: BaseException) -> bool:
    """A connection-level failure (not an answer from the manager)?"""
    if isinstance(error, urllib.error.HTTPError):
        return False
    if isinstance(error, urllib.error.URLError):
        return isinstance(error.reason, ConnectionError)
    return isinstance(error, ConnectionError)


def _retrying(transfer: Any, retry_for: float) -> Any:
    """Run ``transfer()``; while the manager is unreachable, again, for ``retry_for`` s."""
    deadline = time.monotonic() + retry_for
    delay = 0.1
    while True:
        try:
            return transfer()
        except (urllib.error.URLError, ConnectionError) as error:
            if not _unreachable(error) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def download(
    base_url: str, token: str, name: str, target: str, sha256: str, timeout: float = 60,
    retry_for: float = RETRY_FOR,
) -> int:
    """Fetch input ``name`` into ``target``; raises TransferRefused on a refusal or bad sha256."""
    url = f"{base_url.rstrip('/')}/lease/inputs/{urllib.parse.quote(name)}"
    digest = hashlib.sha256()

    def fetch() -> int:
        nonlocal digest
        digest = hashlib.sha256()
        size = 0
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(target, "wb") as out:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        return size

    try:
        size = _retrying(fetch, retry_for)
    except urllib.error.HTTPError as error:
        raise _refusal(error) from None
    if digest.hexdigest() != sha256:
        os.unlink(target)
        raise TransferRefused(0, f"input {name}: sha256 {digest.hexdigest()} != offered {sha256}")
    return size


def upload(
    base_url: str, token: str, name: str, source: str, sha256: str, timeout: float = 300,
    retry_for: float = RETRY_FOR,
) -> dict:
    """PUT output ``source`` as ``name``; the server checks size and sha256."""
    url = f"{base_url.rstrip('/')}/lease/outputs/{urllib.parse.quote(name)}"
    size = os.path.getsize(source)

    def put() -> dict:
        with open(source, "rb") as handle:
            request = urllib.request.Request(
                url, data=handle, method="PUT",
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Length": str(size),
                    "Content-Type": "application/octet-stream",
                    "X-Content-SHA256": sha256,
                },
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())

    try:
        return _retrying(put, retry_for)
    except urllib.error.HTTPError as error:
        raise _refusal(error) from None

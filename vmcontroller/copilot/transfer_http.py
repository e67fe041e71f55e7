"""The pilot's HTTP file transfers: fetch inputs, upload outputs, each sha256-checked.

Blocking :mod:`urllib` calls, meant to run in a thread
(:func:`twisted.internet.threads.deferToThread`).  Only the standard library:
the pilot runs inside the appliance.
"""

# -*- test-case-name: tests.integration.copilot.test_copilot -*-

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["TransferRefused", "download", "upload"]

_CHUNK = 1024 * 1024


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


def download(base_url: str, token: str, name: str, target: str, sha256: str, timeout: float = 60) -> int:
    """Fetch input ``name`` into ``target``; raises TransferRefused on a refusal or bad sha256."""
    url = f"{base_url.rstrip('/')}/lease/inputs/{urllib.parse.quote(name)}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(target, "wb") as out:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except urllib.error.HTTPError as error:
        raise _refusal(error) from None
    if digest.hexdigest() != sha256:
        os.unlink(target)
        raise TransferRefused(0, f"input {name}: sha256 {digest.hexdigest()} != offered {sha256}")
    return size


def upload(base_url: str, token: str, name: str, source: str, sha256: str, timeout: float = 300) -> dict:
    """PUT output ``source`` as ``name``; the server checks size and sha256."""
    url = f"{base_url.rstrip('/')}/lease/outputs/{urllib.parse.quote(name)}"
    size = os.path.getsize(source)
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
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise _refusal(error) from None

"""Keep secrets off the status page and out of kept logs.

The page is for the volunteer's eyes, but a screenshot of it ends up on a
forum sooner or later, and the guest's output can echo anything the job
prints. So every text shown goes through :class:`SecretFilter` first, which
masks two kinds of secret:

* values the wrapper knows are secret (the broker passcodes it generated, the
  account's authenticator from ``init_data.xml``), wherever they appear;
* anything that looks like one: ``passcode=...``, ``password: ...``,
  ``<authenticator>...</authenticator>``, and 32-hex-digit words (the shape of
  a BOINC account key).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: What a masked secret is replaced with.
MASK = "[hidden]"

#: Key names whose value is a secret in ``key=value`` / ``key: value`` text.
_SECRET_KEYS = r"passcode|password|passwd|authenticator|auth_token|token|secret|api_key|private_key"
_KEY_VALUE = re.compile(rf"(?i)\b({_SECRET_KEYS})(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&<\"']+)")
_XML_ELEMENT = re.compile(rf"(?is)<({_SECRET_KEYS})>.*?</\1>")
_HEX_KEY = re.compile(r"\b[0-9a-fA-F]{32}\b")
#: Known secrets shorter than this are not searched for (they would mask ordinary words).
MIN_SECRET_LENGTH = 6


class SecretFilter:
    """Masks secrets in text.

    :param secrets: exact values to hide wherever they appear (passcodes,
        authenticators); empty and very short values are ignored.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Also hide *secret* from now on (e.g. a passcode generated after start-up)."""
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        """*text* with every secret replaced by :data:`MASK`."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        text = _XML_ELEMENT.sub(lambda m: f"<{m.group(1)}>{MASK}</{m.group(1)}>", text)
        text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
        return _HEX_KEY.sub(MASK, text)

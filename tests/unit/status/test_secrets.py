"""The secret filter: nothing secret reaches the page, ordinary text stays readable."""

from __future__ import annotations

import pytest

from vmwrapper.status.secrets import MASK, SecretFilter


@pytest.mark.parametrize("text, secret", [
    ("passcode=hunter2hunter2", "hunter2hunter2"),
    ("PASSWORD: 'correct horse'", "correct horse"),
    ('login vm-3 password="x y z"', "x y z"),
    ("<authenticator>f00dcafe</authenticator>", "f00dcafe"),
    ("auth_token=abc.def-ghi;next", "abc.def-ghi"),
    ("account key 0123456789abcdef0123456789ABCDEF in use", "0123456789abcdef0123456789ABCDEF"),
])
def test_secret_shapes_are_masked(text, secret):
    shown = SecretFilter()(text)
    assert secret not in shown
    assert MASK in shown


def test_known_values_are_masked_anywhere():
    hide = SecretFilter(["Tr0ub4dor&3", "short"])
    shown = hide("stomp CONNECT login:vm-1 pc=Tr0ub4dor&3 and again Tr0ub4dor&3; short")
    assert "Tr0ub4dor&3" not in shown
    assert shown.count(MASK) == 2
    assert shown.endswith("short")  # too short to search for: it would mask ordinary words


def test_secret_added_later_is_masked():
    hide = SecretFilter()
    assert hide("value 9f8e7d6c5b") == "value 9f8e7d6c5b"
    hide.add("9f8e7d6c5b")
    assert hide("value 9f8e7d6c5b") == f"value {MASK}"


@pytest.mark.parametrize("text", [
    "the token expired, reconnecting",
    "Booting Linux 6.1.0-27-cloud-amd64",
    "event 42: checkpoint written (12.5 s)",
    "password change not needed",
])
def test_ordinary_text_is_left_alone(text):
    assert SecretFilter()(text) == text

"""vmcontroller.destinations: names and the authorisation table."""

from __future__ import annotations

import pytest

from vmcontroller import destinations as d


def test_names():
    assert d.to_guest("vm7") == "/queue/vmc.vm7.to_guest"
    assert d.to_host("vm7") == "/queue/vmc.vm7.to_host"
    assert d.PRESENCE == "/topic/vmc.presence"
    assert d.parse(d.to_host("x-1")) == ("to_host", "x-1")
    assert d.parse(d.PRESENCE) == ("presence", None)
    assert d.parse("/queue/vmc.a.b.to_guest") is None


@pytest.mark.parametrize("bad", ["", "a.b", "../x", "-x", "a" * 65, "a b", "*"])
def test_invalid_vm_ids_refused(bad):
    with pytest.raises(ValueError, match="invalid VM id"):
        d.to_guest(bad)


@pytest.mark.parametrize(
    "role, vm, destination, action, expected",
    [
        ("vm", "a", d.to_guest("a"), "subscribe", True),
        ("vm", "a", d.to_host("a"), "send", True),
        ("vm", "a", d.PRESENCE, "send", True),
        ("vm", "a", d.PRESENCE, "subscribe", False),
        ("vm", "a", d.to_guest("a"), "send", False),
        ("vm", "a", d.to_host("a"), "subscribe", False),
        ("vm", "a", d.to_guest("b"), "subscribe", False),
        ("vm", "a", d.to_host("b"), "send", False),
        ("vm", "a", "/queue/other", "send", False),
        ("host", None, d.to_guest("b"), "send", True),
        ("host", None, d.to_host("b"), "subscribe", True),
        ("host", None, d.PRESENCE, "subscribe", True),
        ("host", None, "/topic/other", "subscribe", False),
    ],
)
def test_allowed(role, vm, destination, action, expected):
    assert d.allowed(role, vm, destination, action) is expected


def test_allowed_rejects_unknown_role():
    with pytest.raises(ValueError):
        d.allowed("admin", None, d.PRESENCE, "send")

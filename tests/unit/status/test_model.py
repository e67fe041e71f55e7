"""The status snapshot: validation, what the page receives, the guest output tail."""

from __future__ import annotations

import math

import pytest

from vmwrapper.status.model import (
    OUTPUT_LINE_CHARS,
    STATE_TEXT,
    GuestOutputTail,
    SnapshotError,
    StatusSnapshot,
    format_duration,
)
from vmwrapper.status.secrets import SecretFilter


def test_public_form_has_every_field_the_page_shows():
    snapshot = StatusSnapshot(vm_state="paused", task="sim", task_progress=0.256,
                              fraction_done=0.5, cpu_time=3725.4, checkpoints=3,
                              last_checkpoint_cpu=3600.0, trickles_sent=2, cpu_reported=3600.0,
                              guest_output=("a", "b"), hypervisor="QEMU 7.2.0, KVM")
    public = snapshot.to_public()
    assert public == {
        "vm_state": "paused", "state_text": STATE_TEXT["paused"], "task": "sim",
        "task_progress": 25.6, "fraction_done": 50.0, "cpu_time": 3725.4,
        "cpu_time_text": "1 h 02 min 05 s", "checkpoints": 3,
        "last_checkpoint_text": "at 1 h 00 min 00 s CPU", "trickles_sent": 2,
        "cpu_reported_text": "1 h 00 min 00 s", "guest_output": ["a", "b"],
        "hypervisor": "QEMU 7.2.0, KVM", "message": "",
    }


def test_public_form_masks_secrets_in_every_text():
    snapshot = StatusSnapshot(task="job passcode=abcdefgh", message="key Zq9!Zq9!Zq9",
                              guest_output=("login with password: letmein99",),
                              hypervisor="token=xyz123456")
    public = snapshot.to_public(SecretFilter(["Zq9!Zq9!Zq9"]))
    text = repr(public)
    for secret in ("abcdefgh", "Zq9!Zq9!Zq9", "letmein99", "xyz123456"):
        assert secret not in text


@pytest.mark.parametrize("changes, field", [
    ({"vm_state": "dancing"}, "vm_state"),
    ({"fraction_done": 1.5}, "fraction_done"),
    ({"task_progress": -0.1}, "task_progress"),
    ({"cpu_time": math.nan}, "cpu_time"),
    ({"cpu_reported": -1.0}, "cpu_reported"),
    ({"checkpoints": 1.5}, "checkpoints"),
    ({"trickles_sent": True}, "trickles_sent"),
])
def test_bad_values_are_refused_naming_the_field(changes, field):
    with pytest.raises(SnapshotError, match=field):
        StatusSnapshot().but(**changes)


def test_snapshots_compare_by_value():
    a = StatusSnapshot(guest_output=["x"])
    assert a == StatusSnapshot(guest_output=("x",))
    assert a != a.but(cpu_time=1.0)


@pytest.mark.parametrize("seconds, text", [
    (0, "0 s"), (59.9, "59 s"), (60, "1 min 00 s"), (3599, "59 min 59 s"),
    (86400 + 61, "24 h 01 min 01 s"), (-5, "0 s"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_tail_keeps_last_complete_lines():
    tail = GuestOutputTail(lines=3)
    tail.feed(b"one\ntwo\nthr")
    assert tail.snapshot() == ("one", "two")
    tail.feed(b"ee\r\nfour\nfive\n")
    assert tail.snapshot() == ("three", "four", "five")


def test_tail_cuts_endless_lines_and_bad_bytes():
    tail = GuestOutputTail(lines=5)
    tail.on_output()("stdout", b"\xff" + b"x" * (OUTPUT_LINE_CHARS * 2))
    (line,) = tail.snapshot()
    assert len(line) == OUTPUT_LINE_CHARS and line.startswith("\ufffd")


def test_tail_needs_a_line():
    with pytest.raises(ValueError, match="at least one"):
        GuestOutputTail(lines=0)

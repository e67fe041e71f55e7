"""Output batching by size and time, on line boundaries, driven by a Clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from vmcontroller.guest.output import OutputBatcher


@pytest.fixture
def setup():
    clock = Clock()
    flushed = []
    batcher = OutputBatcher(clock, flushed.append, max_bytes=16, max_delay=0.1, partial_delay=0.5)
    return clock, flushed, batcher


def test_small_writes_are_batched_until_the_delay(setup):
    clock, flushed, batcher = setup
    batcher.feed(b"a\n")
    batcher.feed(b"b\n")
    assert flushed == []
    clock.advance(0.1)
    assert flushed == [b"a\nb\n"]


def test_a_full_buffer_flushes_at_once_cut_after_the_last_newline(setup):
    clock, flushed, batcher = setup
    batcher.feed(b"0123456\n89abcdefXYZ")
    assert flushed == [b"0123456\n"]
    batcher.feed(b"0123456789")
    assert flushed[1] == b"89abcdefXYZ01234"  # one long line: cut hard at max_bytes


def test_partial_lines_wait_for_their_newline_but_not_forever(setup):
    clock, flushed, batcher = setup
    batcher.feed(b"done\npart")
    clock.advance(0.1)
    assert flushed == [b"done\n"]
    clock.advance(0.2)
    assert flushed == [b"done\n"]
    clock.advance(0.5)
    assert flushed == [b"done\n", b"part"]


def test_close_flushes_everything_and_cancels_timers(setup):
    clock, flushed, batcher = setup
    batcher.feed(b"tail")
    batcher.close()
    assert flushed == [b"tail"] and clock.getDelayedCalls() == []
    with pytest.raises(ValueError):
        batcher.feed(b"more")


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        OutputBatcher(Clock(), print, max_bytes=0)

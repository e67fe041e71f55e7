"""reuse_large_buffers: freed chunk-sized buffers stop costing page faults."""

from __future__ import annotations

import gc
import platform
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from vmcontroller.stomp.heap import freeze_startup_objects, reuse_large_buffers, unfilled_bytearray

# One thread allocates chunk-sized buffers and another frees them, 16 in
# flight, as the broker's reading and writing threads do; prints the minor
# page faults of 400 chunks after a warm-up.  With "reuse" the helper runs first.
PROBE = """
import queue, resource, sys, threading
from vmcontroller.stomp.heap import freeze_startup_objects, reuse_large_buffers, unfilled_bytearray
if sys.argv[1] == "reuse":
    assert reuse_large_buffers()
todo, handoff, done = queue.Queue(), queue.Queue(maxsize=16), queue.Queue()
def reader():  # allocates each chunk, as the broker's reading thread does
    while (count := todo.get()):
        for i in range(count):
            handoff.put(bytearray(256 * 1024 + i % 7))
def writer():  # frees them, as its writing thread does
    while True:
        handoff.get()
        done.put(1)
for target in (reader, writer):
    threading.Thread(target=target, daemon=True).start()
def relay(count):
    todo.put(count)
    for _ in range(count):
        done.get()
relay(100)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
relay(400)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return int(out)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_freed_chunks_are_reused_without_page_faults():
    plain, reused = _faults("plain"), _faults("reuse")
    # Without it glibc maps and unmaps many of the 64-page chunks (about 4,300
    # faults on a quiet machine, 860-1,100 under load, when the threads interleave
    # differently); with it the warmed-up heap serves all 400 chunks with fewer
    # faults than chunks (0-64 seen).
    assert reused < 400, reused
    assert plain > 2 * reused, (plain, reused)


def test_bad_size_is_refused_with_the_value():
    with pytest.raises(ValueError, match="positive number of bytes, got 0"):
        reuse_large_buffers(0)


def test_unfilled_bytearray_is_a_writable_bytearray_of_that_size():
    for size in (0, 1, 256 * 1024):
        buffer = unfilled_bytearray(size)
        assert type(buffer) is bytearray and len(buffer) == size
        buffer[:] = b"\x5a" * size  # writable in full, and stays that size
        assert buffer == b"\x5a" * size
        with memoryview(buffer) as view:
            assert view.nbytes == size and not view.readonly


def test_freeze_startup_objects_exempts_live_objects_from_collection():
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        kept = [[] for _ in range(1000)]  # tracked containers alive now
        freeze_startup_objects()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()  # give pytest's own objects back to the collector

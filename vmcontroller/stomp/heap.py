"""Keep freed file-chunk buffers in the C heap instead of returning them to the kernel.

Every relayed file chunk (256 KiB by default) lives in a fresh buffer: the
socket read, the body the parser fills, the bytes sent on.  glibc serves
such sizes with ``mmap`` and gives them back with ``munmap``, so each chunk
costs the process ~64 page faults plus the kernel zeroing those pages; the
broker took ~25 faults per chunk relayed.  :func:`reuse_large_buffers`
raises glibc's mmap and trim thresholds so freed chunks stay in the heap and
the next chunk reuses the same, already mapped, pages: the broker's CPU per
relayed byte drops by about a sixth (``bench/bench_vmcontroller.py``).

Process-wide, so only entry points that own their process call it (the
broker CLI, the guest agent); elsewhere (musl, macOS, no libc found) it does
nothing.  Only the standard library: the guest agent uses it.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Any

__all__ = ["HEAP_KEEP_BYTES", "freeze_startup_objects", "reuse_large_buffers", "unfilled_bytearray"]

#: Allocations below this come from the heap, and up to twice this much freed
#: memory stays in it: several windows of 4 MiB chunks.
HEAP_KEEP_BYTES = 32 * 1024 * 1024

# mallopt() parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reuse_large_buffers(keep_bytes: int = HEAP_KEEP_BYTES) -> bool:
    """Tell glibc to keep freed buffers up to ``keep_bytes``; True if it agreed.

    :raises ValueError: for a non-positive ``keep_bytes`` (glibc caps the
        mmap threshold at 32 MiB on 64-bit hosts and refuses more).
    """
    if keep_bytes < 1:
        raise ValueError(f"keep_bytes must be a positive number of bytes, got {keep_bytes!r}")
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):  # no libc, or one without mallopt (musl)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, keep_bytes) and mallopt(_M_TRIM_THRESHOLD, 2 * keep_bytes)
    )


def freeze_startup_objects() -> None:
    """Exempt every object alive now from the cyclic garbage collector.

    A relayed chunk allocates a few dozen small containers (frame, header
    dicts, message, Deferreds), so collections run every few chunks, and
    each older-generation one walked every object of the imported modules
    (Twisted alone brings tens of thousands) although none of them is ever
    garbage: perf showed ~6 % of the agent's reactor time in the collector.
    Called by entry points that own their process, once they are set up.
    """
    gc.collect()  # free what start-up left behind rather than freezing it
    gc.freeze()


def _bytearray_maker() -> Any:
    """CPython's ``PyByteArray_FromStringAndSize``, or None where ctypes cannot reach it."""
    try:
        make = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except (AttributeError, OSError):  # not CPython
        return None
    make.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
    make.restype = ctypes.py_object
    return make


_make_bytearray = _bytearray_maker()


def unfilled_bytearray(size: int) -> bytearray:
    """A bytearray of ``size`` bytes whose contents are left as malloc gave them.

    For a buffer the caller overwrites completely before anyone reads it
    (a received file chunk): ``bytearray(size)`` zero-fills it first, a
    memset of every relayed byte that perf put at a tenth of the broker's
    reader threads, as much as the receive itself.  Falls back to
    ``bytearray(size)`` off CPython.
    """
    if _make_bytearray is None or size <= 0:
        return bytearray(size)
    return _make_bytearray(None, size)

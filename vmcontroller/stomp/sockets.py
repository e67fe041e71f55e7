"""Socket buffer sizes for connections that carry file chunks.

A transfer keeps a window of 4 MiB in flight (16 chunks of 256 KiB) through
two TCP hops.  Linux starts a loopback connection with small buffers and
grows them slowly, so a writer (the broker's per-connection writer thread,
a client's reactor) fills the send buffer after a few chunks and waits, and
every wait is a sleep, a wake-up and a context switch.  Asking for buffers
the size of a window up front keeps the window in the kernel; same-run A/B
of the relay: ratio up in 6 of 8 pairs, about +7 %
(``bench/bench_vmcontroller.py``).  The kernel caps the request at
``net.core.[rw]mem_max`` (4 MiB on this machine kind) without an error.

:func:`write_now` and :func:`write_parts_now` write to the socket at once
when Twisted has nothing queued, instead of queueing and waiting for the
next reactor turn to say the socket is writable: one poll and two
``epoll_ctl`` fewer per heart-beat (most of what an idle connection costs),
and a file chunk goes out with one ``sendmsg`` of its parts instead of being
joined into a copy by Twisted first.

Only the standard library: the guest agent uses it.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

__all__ = ["SOCKET_BUFFER_BYTES", "enlarge_buffers", "write_now", "write_parts_now"]

#: Send and receive buffer asked for on every broker and client connection.
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


def enlarge_buffers(sock: socket.socket, size: int = SOCKET_BUFFER_BYTES) -> None:
    """Ask for ``size``-byte send and receive buffers on ``sock`` (best effort).

    :raises ValueError: for a non-positive ``size``.
    """
    if size < 1:
        raise ValueError(f"socket buffer size must be a positive number of bytes, got {size!r}")
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            pass  # an unusual socket keeps the kernel's sizes: slower, not wrong


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` now if ``transport`` has nothing queued, else queue it behind."""
    write_parts_now(transport, (data,))


def write_parts_now(transport: Any, parts: Sequence[bytes | memoryview]) -> None:
    """Write ``parts`` back to back, now if ``transport`` has nothing queued.

    Order is kept: the socket is written directly (one ``sendmsg``, so the
    parts are never joined into a copy) only while Twisted's buffers are
    empty, i.e. everything written before is in the kernel; what the kernel
    does not take is handed to ``transport.writeSequence``, and later
    writes queue behind it.  Transports without a socket (tests, TLS) just
    get ``writeSequence``.
    """
    sock = getattr(transport, "socket", None)
    if (
        sock is None
        or getattr(transport, "dataBuffer", b"?")
        or getattr(transport, "_tempDataBuffer", [None])
        or getattr(transport, "disconnecting", True)
        or getattr(transport, "_writeDisconnected", True)
        or not getattr(transport, "connected", False)
    ):
        transport.writeSequence(parts)
        return
    try:
        sent = sock.sendmsg(parts)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        transport.writeSequence(parts)  # Twisted notices the error and closes
        return
    rest: list[bytes | memoryview] = []
    for part in parts:
        if sent >= len(part):
            sent -= len(part)
        else:
            # Twisted's writeSequence takes bytes: the rest of a part is copied
            rest.append(bytes(memoryview(part)[sent:]) if sent else part)
            sent = 0
    if rest:
        transport.writeSequence(rest)

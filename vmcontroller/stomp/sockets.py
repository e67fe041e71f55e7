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

:func:`write_now` writes small frames (heart-beats) to the socket at once
when Twisted has nothing queued, instead of queueing them and waiting for
the next reactor turn to say the socket is writable: one poll and two
``epoll_ctl`` fewer per heart-beat, which is most of what an idle
connection costs.

Only the standard library: the guest agent uses it.
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["SOCKET_BUFFER_BYTES", "enlarge_buffers", "write_now"]

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
    """Write ``data`` now if ``transport`` has nothing queued, else queue it behind.

    Order is kept: the socket is written directly only while Twisted's
    buffers are empty (everything written before is in the kernel); what
    the kernel does not take is handed to ``transport.write``.  Transports
    without a socket (tests, TLS) just get ``transport.write``.
    """
    sock = getattr(transport, "socket", None)
    if (
        sock is None
        or getattr(transport, "dataBuffer", b"?")
        or getattr(transport, "_tempDataBuffer", [None])
        or getattr(transport, "disconnecting", True)
        or not getattr(transport, "connected", False)
    ):
        transport.write(data)
        return
    try:
        sent = sock.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        transport.write(data)  # Twisted notices the error and closes as usual
        return
    if sent < len(data):
        transport.write(data[sent:])

"""enlarge_buffers on real loopback sockets."""

from __future__ import annotations

import socket

import pytest

from vmcontroller.stomp.sockets import enlarge_buffers


def _sizes(sock):
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    )


def test_buffers_grow_to_the_request_or_the_kernel_cap():
    with socket.socket() as sock:
        before = _sizes(sock)
        enlarge_buffers(sock, 1024 * 1024)
        after = _sizes(sock)
    # Linux doubles the request (bookkeeping) and caps it at [rw]mem_max.
    with open("/proc/sys/net/core/wmem_max") as w, open("/proc/sys/net/core/rmem_max") as r:
        caps = (int(w.read()), int(r.read()))
    for old, new, cap in zip(before, after, caps, strict=True):
        assert new >= min(1024 * 1024, cap) and new >= old


def test_a_closed_socket_is_left_alone_and_bad_sizes_refused():
    sock = socket.socket()
    sock.close()
    enlarge_buffers(sock)  # best effort: no exception
    with (
        socket.socket() as other,
        pytest.raises(ValueError, match="positive number of bytes, got -1"),
    ):
        enlarge_buffers(other, -1)

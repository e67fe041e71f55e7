"""10,000 random and mutated frames against the embedded broker, many connections.

The broker must never die, never hit an internal error, and give back
every connection, thread and file descriptor afterwards.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from vmcontroller import destinations
from vmcontroller.stomp.codec import Frame, encode_frame

FRAMES = 10_000
FRAMES_PER_CONNECTION = 25
WORKERS = 8


TRICKY_HEADERS = [
    "\nprefetch-count:\u00b2".encode(),
    "\nheart-beat:\u00b9,2".encode(),
    "\ncontent-length:\u0663".encode(),
    b"\nack:weird",
    b"\nack:client",
    b"\nid:",
    b"\ntransaction:zz",
    b"\nuser-id:someone",
    b"\nreceipt:r",
    b"\ndestination:",
    b"\ndestination:/queue/vmc.fuzz.to_guest",
]


def valid_frames(rng: random.Random, vm_id: str) -> list[bytes]:
    own_in, own_out = destinations.to_guest(vm_id), destinations.to_host(vm_id)
    version = rng.choice(["1.0", "1.1", "1.2"])
    body = rng.randbytes(rng.choice([0, 1, 10, 300, 5000]))
    candidates = [
        Frame("SEND", {"destination": own_out, "x": "a:b\\c"}, body),
        Frame("SEND", {"destination": destinations.PRESENCE}, body),
        Frame("SUBSCRIBE", {"destination": own_in, "id": str(rng.randrange(5)), "ack": "client"}),
        Frame("UNSUBSCRIBE", {"id": str(rng.randrange(5))}),
        Frame("ACK", {"id": "q-x-1", "message-id": "m", "subscription": "0"}),
        Frame("NACK", {"id": "t-x-1", "message-id": "m", "subscription": "0"}),
        Frame("BEGIN", {"transaction": "t1"}),
        Frame("COMMIT", {"transaction": "t1"}),
        Frame("ABORT", {"transaction": "t2"}),
        Frame("SEND", {"destination": own_out, "transaction": "t1"}, body),
        Frame("DISCONNECT", {"receipt": "r"}),
        Frame("SEND", {"destination": destinations.to_host("a1")}, body),  # forbidden
        Frame("CONNECTED", {}),
        Frame("SEND", {"destination": own_out, "receipt": "r"}, body),
    ]
    return [encode_frame(rng.choice(candidates), version) for _ in range(FRAMES_PER_CONNECTION)]


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(8)
        pos = rng.randrange(len(data) + 1)
        if kind == 0 and data:  # flip a byte
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:  # insert structure characters
            data[pos:pos] = rng.choice([b"\n", b"\x00", b":", b"\\", b"\r", b"\\t", b"\n\n"])
        elif kind == 2:  # truncate
            del data[pos:]
        elif kind == 3:  # absurd or broken content-length
            data[pos:pos] = rng.choice(
                [b"\ncontent-length:99999999999", b"\ncontent-length:-1", b"\ncontent-length:x"]
            )
        elif kind == 4:  # random garbage
            data[pos:pos] = rng.randbytes(rng.randrange(1, 64))
        elif kind == 5:  # non-UTF-8 header bytes
            data[pos:pos] = b"\xff\xfe"
        elif kind == 6:  # many headers
            data[pos:pos] = b"\nh:v" * rng.randrange(1, 300)
        else:  # tricky header values
            data[pos:pos] = rng.choice(TRICKY_HEADERS)
    return bytes(data)


def one_connection(address, login, seed: int) -> int:
    rng = random.Random(seed)
    connect = encode_frame(
        Frame(
            "CONNECT",
            {
                "accept-version": rng.choice(["1.0", "1.1,1.2", "1.2", "2.0", "1.1"]),
                "host": "localhost",
                "login": login.login,
                "passcode": login.passcode,
                "heart-beat": rng.choice(["0,0", "100,100", "x"]),
            },
        )
    )
    frames = valid_frames(rng, login.vm_id)
    frames = [mutate(rng, f) if rng.random() < 0.3 else f for f in frames]
    if rng.random() < 0.1:
        connect = mutate(rng, connect)
    if rng.random() < 0.05:
        connect = b""  # garbage first
    with socket.create_connection(address, timeout=3) as sock:
        try:
            sock.sendall(connect + b"".join(frames))
            sock.shutdown(socket.SHUT_WR) if rng.random() < 0.5 else None
            while sock.recv(65536):
                pass
        except (TimeoutError, OSError):
            pass  # broker waits for a frame's missing bytes, or already hung up
    return len(frames)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_fuzz_never_dies_never_leaks(broker, credentials, raw, caplog):
    login = credentials.vm_login("fuzz")
    # warm up so lazily created objects do not count as leaks
    one_connection(broker.address, login, 0)
    time.sleep(0.2)
    threads_before, fds_before = threading.active_count(), open_fds()

    caplog.set_level(logging.ERROR, logger="vmcontroller.broker")
    connections = FRAMES // FRAMES_PER_CONNECTION
    with ThreadPoolExecutor(WORKERS) as pool:
        sent = sum(pool.map(lambda s: one_connection(broker.address, login, s), range(connections)))
    assert sent == FRAMES

    deadline = time.monotonic() + 10
    while broker.connection_count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert broker.connection_count == 0
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before
    assert open_fds() <= fds_before
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []

    # and it still works
    host = raw()
    host.connect(credentials.host_login().login, credentials.host_login().passcode)
    agent = raw()
    agent.connect(login.login, login.passcode)
    host.send(destinations.to_guest("fuzz"), b"alive?")
    agent.subscribe(destinations.to_guest("fuzz"), "a")
    assert agent.receive(timeout=5).body == b"alive?"

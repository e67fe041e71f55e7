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


def session_frames(rng: random.Random, vm_id: str, as_host: bool, version: str) -> list[Frame]:
    """What an agent (or the host, mirrored) might send: mostly legal, a few refused."""
    own_in, own_out = destinations.to_guest(vm_id), destinations.to_host(vm_id)
    if as_host:  # the host reads what the agents send and feeds their queue
        own_in, own_out = own_out, own_in
    ack = rng.choice(["auto", "client", "client-individual"])
    values = ["plain", "a:b\\c"] + ([] if version == "1.0" else ["é\nx\r"])
    frames = [Frame("SUBSCRIBE", {"destination": own_in, "id": "s0", "ack": ack})]
    subscriptions = 1
    transaction = 0
    while len(frames) < FRAMES_PER_CONNECTION:
        body = rng.randbytes(rng.choice([0, 1, 10, 300, 5000, 70000]))
        headers = {"destination": own_out, "x": rng.choice(values)}
        roll = rng.random()
        if roll < 0.55:
            frames.append(Frame("SEND", headers, body))
        elif roll < 0.65:
            frames.append(Frame("SEND", {**headers, "receipt": f"r{len(frames)}"}, body))
        elif roll < 0.70 and not as_host:
            frames.append(Frame("SEND", {"destination": destinations.PRESENCE}, body))
        elif roll < 0.80:
            transaction += 1
            name = f"t{transaction}"
            frames.append(Frame("BEGIN", {"transaction": name}))
            frames.append(Frame("SEND", {**headers, "transaction": name}, body))
            frames.append(Frame(rng.choice(["COMMIT", "ABORT"]), {"transaction": name}))
        elif roll < 0.85:
            frames.append(
                Frame("SUBSCRIBE", {"destination": own_in, "id": f"s{subscriptions}", "ack": ack})
            )
            frames.append(Frame("UNSUBSCRIBE", {"id": f"s{subscriptions}"}))
            subscriptions += 1
        else:  # refused: each ends the connection with an ERROR
            frames.append(
                rng.choice(
                    [
                        Frame("ACK", {"id": "q-x-1", "message-id": "m", "subscription": "s0"}),
                        Frame("NACK", {"id": "t-x-1", "message-id": "m", "subscription": "s0"}),
                        Frame("SEND", {"destination": "/queue/elsewhere"}, body),
                        Frame("SUBSCRIBE", {"destination": destinations.to_guest("a1"), "id": "z"}),
                        Frame("CONNECTED", {}),
                        Frame("COMMIT", {"transaction": "never-begun"}),
                        Frame("DISCONNECT", {"receipt": "bye"}),
                    ]
                )
            )
    return frames[:FRAMES_PER_CONNECTION]


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


def one_connection(address, credentials, seed: int) -> int:
    rng = random.Random(seed)
    as_host = rng.random() < 0.5
    login = credentials.host_login() if as_host else credentials.vm_login("fuzz")
    version = rng.choice(["1.0", "1.1", "1.2"])
    connect_headers = {
        "accept-version": version,
        "host": "localhost",
        "login": login.login,
        "passcode": login.passcode,
        "heart-beat": rng.choice(["0,0", "0,0", "100,100"]),
    }
    if rng.random() < 0.05:  # refused at CONNECT
        connect_headers[rng.choice(["accept-version", "heart-beat", "passcode"])] = "2.0,x"
    connect = encode_frame(Frame("CONNECT", connect_headers))
    frames = [encode_frame(f, version) for f in session_frames(rng, "fuzz", as_host, version)]
    frames = [mutate(rng, f) if rng.random() < 0.1 else f for f in frames]
    if rng.random() < 0.05:
        connect = mutate(rng, connect)
    if rng.random() < 0.03:
        connect = b""  # no CONNECT at all
    with socket.create_connection(address, timeout=3) as sock:
        try:
            sock.sendall(connect + b"".join(frames))
            if rng.random() < 0.5:
                sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except (TimeoutError, OSError):
            pass  # broker waits for a frame's missing bytes, or already hung up
    return len(frames)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_fuzz_never_dies_never_leaks(broker, credentials, raw, caplog):
    login = credentials.vm_login("fuzzcheck")
    # warm up so lazily created objects do not count as leaks
    one_connection(broker.address, credentials, 0)
    time.sleep(0.2)
    threads_before, fds_before = threading.active_count(), open_fds()

    caplog.set_level(logging.ERROR, logger="vmcontroller.broker")
    connections = FRAMES // FRAMES_PER_CONNECTION
    with ThreadPoolExecutor(WORKERS) as pool:
        sent = sum(
            pool.map(lambda s: one_connection(broker.address, credentials, s), range(connections))
        )
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
    host.send(destinations.to_guest("fuzzcheck"), b"alive?")
    agent.subscribe(destinations.to_guest("fuzzcheck"), "a")
    assert agent.receive(timeout=5).body == b"alive?"

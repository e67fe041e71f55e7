"""Embedded broker vs RabbitMQ STOMP: throughput and ping round trip, same run, same clients.

Every party is its own process (broker, producer, consumer / requester,
responder), as in the baselines of ``stomp_brokers.md``; the clients are
our codec over plain blocking sockets
(:class:`vmcontroller.broker.blocking_client.BlockingClient`), not stomp.py,
whose per-frame cost would hide the brokers' differences.

Throughput = payload bytes from the producer's first SEND to the consumer's
last MESSAGE (CLOCK_MONOTONIC is shared across processes).  Ping = request
to ``to_guest`` -> responder -> reply on ``to_host``, sequential.

Targets (issue 4): throughput >= 0.8x RabbitMQ at 64 KiB and >= 1.0x at
1 KiB; ping p50 <= 0.5 ms through the embedded broker.

Usage: .venv/bin/python bench/bench_broker.py [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vmcontroller import destinations  # noqa: E402
from vmcontroller.broker.blocking_client import BlockingClient  # noqa: E402
from vmcontroller.broker.credentials import generate_credentials  # noqa: E402
from vmcontroller.stomp.codec import Frame, encode_frame  # noqa: E402

RABBITMQ = ("127.0.0.1", 61613)


class Target:
    """Where and how to reach one broker."""

    def __init__(self, name, address, host_login, vm_login, vhost, queue_in, queue_out):
        self.name, self.address, self.vhost = name, address, vhost
        self.host_login, self.vm_login = host_login, vm_login
        self.queue_in, self.queue_out = queue_in, queue_out

    def client(self, as_vm: bool = False) -> BlockingClient:
        client = BlockingClient(self.address, "1.2", timeout=60)
        login, passcode = self.vm_login if as_vm else self.host_login
        client.connect(login, passcode, host=self.vhost)
        return client


# -- processes -----------------------------------------------------------------


def consumer(target: Target, count: int, ready, result) -> None:
    client = target.client(as_vm=True)
    client.subscribe(target.queue_in, "c")
    client.sync()
    ready.set()
    received = 0
    payload = 0
    sock, parser = client.sock, client.parser
    sock.settimeout(60)
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    while received < count:
        size = sock.recv_into(buffer)
        if not size:
            raise ConnectionError("broker closed the consumer")
        for frame in parser.feed(view[:size]):
            if frame.command == "MESSAGE":
                received += 1
                payload += len(frame.body)
            elif frame.command == "ERROR":
                raise RuntimeError(frame.headers.get("message"))
    result.put((time.monotonic(), payload))
    client.disconnect()


def producer(target: Target, count: int, size: int, result) -> None:
    client = target.client()
    frame = encode_frame(Frame("SEND", {"destination": target.queue_in}, os.urandom(size)), "1.2")
    batch = max(1, (256 * 1024) // len(frame))
    started = time.monotonic()
    sent = 0
    while sent < count:
        n = min(batch, count - sent)
        client.sock.sendall(frame * n)
        sent += n
    result.put(started)
    client.sync()  # keep the connection until the broker has read everything
    client.disconnect()


def responder(target: Target, count: int, ready) -> None:
    client = target.client(as_vm=True)
    client.subscribe(target.queue_in, "r")
    client.sync()
    ready.set()
    for _ in range(count):
        request = client.receive(timeout=30)
        client.send(target.queue_out, request.body)
    client.disconnect()


# -- measurements ----------------------------------------------------------------


def throughput(ctx, target: Target, count: int, size: int) -> float:
    """MB/s of payload through ``target``."""
    ready, result_c, result_p = ctx.Event(), ctx.Queue(), ctx.Queue()
    cons = ctx.Process(target=consumer, args=(target, count, ready, result_c))
    cons.start()
    if not ready.wait(30):
        cons.kill()
        raise RuntimeError(f"{target.name}: consumer did not subscribe")
    prod = ctx.Process(target=producer, args=(target, count, size, result_p))
    prod.start()
    try:
        finished, payload = result_c.get(timeout=120)
        started = result_p.get(timeout=30)
    finally:
        for proc in (prod, cons):
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return payload / (finished - started) / 1e6


def ping(ctx, target: Target, count: int) -> list[float]:
    """Round-trip times in ms."""
    ready = ctx.Event()
    resp = ctx.Process(target=responder, args=(target, count, ready))
    resp.start()
    try:
        if not ready.wait(30):
            raise RuntimeError(f"{target.name}: responder did not subscribe")
        client = target.client()
        client.subscribe(target.queue_out, "p")
        client.sync()
        times = []
        request = encode_frame(Frame("SEND", {"destination": target.queue_in}, b"p" * 64), "1.2")
        for _ in range(count):
            t0 = time.perf_counter()
            client.sock.sendall(request)
            client.receive(timeout=30)
            times.append((time.perf_counter() - t0) * 1000)
        client.disconnect()
    finally:
        resp.join(10)
        if resp.is_alive():
            resp.kill()
            resp.join()
    return times


def idle_cpu(pid: int, target: Target, seconds: float) -> float:
    """Percent of one core the broker process uses while its clients are idle."""
    clients = []
    for as_vm in (False, True):
        client = BlockingClient(target.address, "1.2", timeout=30)
        login, passcode = target.vm_login if as_vm else target.host_login
        client.connect(login, passcode, heartbeat=(10000, 10000), host=target.vhost)
        clients.append(client)
    time.sleep(0.5)

    def cpu() -> float:
        """CPU seconds of every thread, from schedstat (ns; /proc/PID/stat counts 10 ms ticks)."""
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                    total += int(stat.read().split()[0])
            except FileNotFoundError:
                pass  # a thread ended meanwhile
        return total / 1e9

    before, t0 = cpu(), time.monotonic()
    time.sleep(seconds)
    used, elapsed = cpu() - before, time.monotonic() - t0
    for client in clients:
        client.disconnect()
    return 100 * used / elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- brokers ---------------------------------------------------------------------


def start_embedded(workdir: str):
    credentials = generate_credentials(["bench"], os.path.join(workdir, "credentials.json"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmcontroller.broker",
            "--listen",
            "127.0.0.1:0",
            "--credentials",
            os.path.join(workdir, "credentials.json"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"embedded broker did not start: {line!r}")
    host, port = line.split()[-1].rsplit(":", 1)
    host_login, vm_login = credentials.host_login(), credentials.vm_login("bench")
    target = Target(
        "embedded",
        (host, int(port)),
        (host_login.login, host_login.passcode),
        (vm_login.login, vm_login.passcode),
        "localhost",
        destinations.to_guest("bench"),
        destinations.to_host("bench"),
    )
    return proc, target


def rabbitmq_target() -> Target | None:
    try:
        socket.create_connection(RABBITMQ, timeout=2).close()
    except OSError:
        return None
    tag = uuid.uuid4().hex[:8]
    return Target(
        "rabbitmq",
        RABBITMQ,
        ("guest", "guest"),
        ("guest", "guest"),
        "/",
        f"/queue/bench-{tag}-in",
        f"/queue/bench-{tag}-out",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer messages (smoke run)")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    scale = 10 if args.quick else 1
    cases = [("1 KiB", 1024, 20000 // scale), ("64 KiB", 65536, 2000 // scale)]
    pings = 2000 // scale

    with tempfile.TemporaryDirectory(prefix="bench-broker-") as workdir:
        proc, embedded = start_embedded(workdir)
        try:
            targets = [embedded]
            rabbit = rabbitmq_target()
            if rabbit is None:
                print("RabbitMQ STOMP not reachable on 127.0.0.1:61613: no ratios")
            else:
                targets.append(rabbit)
            print(
                f"throughput, producer -> broker -> consumer; {args.runs} runs, brokers "
                "alternating within each run so load drift hits both; ratio = median of "
                "per-run ratios"
            )
            for label, size, count in cases:
                runs: dict[str, list[float]] = {t.name: [] for t in targets}
                for _ in range(args.runs):
                    for target in targets:
                        runs[target.name].append(throughput(ctx, target, count, size))
                for target in targets:
                    median = statistics.median(runs[target.name])
                    print(
                        f"  {label:>6} x {count:<6} {target.name:<9} {median:8.1f} MB/s "
                        f"({median * 1e6 / size:9.0f} msg/s)  runs: "
                        + ", ".join(f"{r:.1f}" for r in runs[target.name])
                    )
                if rabbit is not None:
                    ratios = [
                        e / r for e, r in zip(runs["embedded"], runs["rabbitmq"], strict=True)
                    ]
                    print(
                        f"  {label:>6} ratio embedded/rabbitmq = "
                        f"{statistics.median(ratios):.2f}x  (per run: "
                        + ", ".join(f"{x:.2f}" for x in ratios)
                        + ")"
                    )
            print(f"ping round trip, 64 B, n={pings} (requester -> broker -> responder -> back)")
            for target in targets:
                times = ping(ctx, target, pings)
                print(
                    f"  {target.name:<9} p50 {percentile(times, 0.5):.3f} ms  "
                    f"p99 {percentile(times, 0.99):.3f} ms"
                )
            idle = idle_cpu(proc.pid, embedded, seconds=5.0)
            print(
                f"idle embedded broker process, 2 connections with 10 s heart-beats: "
                f"{idle:.4f}% of a core over 5 s"
            )
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

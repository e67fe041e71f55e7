"""Benchmark the host controller and guest agent through the embedded broker.

Prints, all measured in this one run (loopback figures swing ~2x between
runs on a shared machine, so compare the ratios):

* file relay host->agent (put) and agent->host (get) through the embedded
  broker, against raw TCP loopback doing the same job end to end: one
  process reads the source file in 256 KiB blocks and ``sendall()``s them
  over one loopback TCP connection, a second process ``recv_into()``s a
  reused buffer and writes the destination file (no hashing, no framing):
  target >= 0.3x.  A memory-to-memory raw TCP figure (same connection, no
  files) is printed too, for scale, and the CPU time the broker, agent and
  host processes spent per transfer (steadier than wall time on a shared
  machine; what an optimisation of the relay should lower);
* ``ping`` round trip and ``run true`` end to end, p50/p99: target p50 <= 5 ms
  for ``true``;
* idle CPU of the agent process and of the host controller process, as a
  percentage of one core (from /proc/PID/task/*/schedstat, nanosecond
  resolution): target <= 0.01 % each.

Processes: the broker, the agent and the host each run in a process of their
own (the host is this script's process, driven on a private reactor thread).

Usage: .venv/bin/python bench/bench_vmcontroller.py [--size-mib 128] [--repeat 3]
       [--runs 300] [--idle-seconds 60] [--only relay latency idle]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import defer  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint  # noqa: E402
from twisted.internet.epollreactor import EPollReactor  # noqa: E402

from vmcontroller.broker.credentials import generate_credentials, load_credentials  # noqa: E402
from vmcontroller.host.controller import HostController  # noqa: E402
from vmcontroller.stomp.client import StompConfig, StompSession  # noqa: E402

RAW_RECEIVER = r"""
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
size = int(sys.argv[2]); got = 0
buf = bytearray(256 * 1024); view = memoryview(buf)
out = open(sys.argv[1], "wb") if sys.argv[1] != "-" else None  # "-": discard
while got < size:
    n = conn.recv_into(buf)
    if not n:
        break
    if out is not None:
        out.write(view[:n])
    got += n
if out is not None:
    out.close()
conn.sendall(b"k")
"""


class Reactor:
    """A private reactor in a thread; call() waits for a Deferred's result."""

    def __init__(self) -> None:
        self.reactor = EPollReactor()
        self.thread = threading.Thread(
            target=self.reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
        )
        self.thread.start()

    def call(self, function: Any, *args: Any, timeout: float = 600, **kw: Any) -> Any:
        results: queue.Queue[Any] = queue.Queue()
        self.reactor.callFromThread(
            lambda: defer.maybeDeferred(function, *args, **kw).addBoth(results.put)
        )
        outcome = results.get(timeout=timeout)
        if hasattr(outcome, "raiseException"):
            outcome.raiseException()
        return outcome


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid``, nanosecond resolution."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as handle:
            total += int(handle.read().split()[0])
    return total / 1e9


def process_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid``, threads that already ended included (clock-tick resolution).

    :func:`cpu_seconds` misses a thread once it has ended, such as the
    sha256 thread of a finished transfer.
    """
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sha256_cpu(path: Path) -> float:
    """CPU seconds hashlib takes for the sha256 of ``path`` (read time excluded)."""
    digest = hashlib.sha256()
    spent = 0.0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            started = time.thread_time()
            digest.update(block)
            spent += time.thread_time() - started
    return spent


def make_file(path: Path, size: int) -> str:
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            handle.write(piece)
            digest.update(piece)
            written += len(piece)
    return digest.hexdigest()


def raw_tcp_copy(source: Path | None, target: Path | None, size: int) -> float:
    """Seconds to copy ``source`` to ``target`` over a raw loopback socket.

    ``source``/``target`` None: send ``size`` bytes from memory / discard
    them (the memory-to-memory figure).  Blocks of 256 KiB, the relay's
    default chunk size.
    """
    receiver = subprocess.Popen(
        [sys.executable, "-c", RAW_RECEIVER, str(target) if target else "-", str(size)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(receiver.stdout.readline())
        block = memoryview(bytes(256 * 1024))
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as conn:
            if source is None:
                left = size
                while left:
                    conn.sendall(block[: min(left, len(block))])
                    left -= min(left, len(block))
            else:
                with open(source, "rb") as src:
                    while chunk := src.read(256 * 1024):
                        conn.sendall(chunk)
            conn.recv(1)
        return time.perf_counter() - started
    finally:
        receiver.wait(30)


def rate_line(size: int, seconds: list[float], baseline: float) -> str:
    """``median MB/s (min-max)  ratio`` for transfers of ``size`` bytes."""
    rates = sorted(size / t / 1e6 for t in seconds)
    median = statistics.median(rates)
    return (
        f"{median:8.1f} MB/s ({rates[0]:.0f}-{rates[-1]:.0f})   ratio {median / baseline:.2f}x"
        f" ({rates[0] / baseline:.2f}-{rates[-1] / baseline:.2f})"
    )


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


PARTS = ("relay", "latency", "idle")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=128, help="file relay size")
    parser.add_argument("--repeat", type=int, default=3, help="relay repetitions (median)")
    parser.add_argument("--runs", type=int, default=300, help="ping / run-true samples")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="idle CPU window")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="measure only these parts (default: all)",
    )
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-vmc-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            return run(args, size, tmp, processes)
        finally:
            for process in processes:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()


def run(args: argparse.Namespace, size: int, tmp: Path, processes: list) -> int:
    creds = tmp / "credentials.json"
    generate_credentials(["bench"], creds)
    credentials = load_credentials(creds)
    broker = subprocess.Popen(
        [sys.executable, "-m", "vmcontroller.cli", "broker", "--listen", "127.0.0.1:0",
         "--credentials", str(creds)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    processes.append(broker)
    port = int(broker.stdout.readline().rsplit(":", 1)[1])
    vm = credentials.vm_login("bench")
    work = tmp / "work"
    config = tmp / "agent.json"
    config.write_text(json.dumps({
        "broker_host": "127.0.0.1", "broker_port": port, "login": vm.login,
        "passcode": vm.passcode, "vm_id": "bench", "work_dir": str(work),
        "heartbeat_interval": 10.0,
    }))  # fmt: skip
    agent = subprocess.Popen(
        [sys.executable, "-m", "vmcontroller.guest", "--config", str(config)],
        stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    processes.append(agent)

    hr = Reactor()
    host_login = credentials.host_login()

    def build() -> HostController:
        session = StompSession(
            TCP4ClientEndpoint(hr.reactor, "127.0.0.1", port),
            StompConfig(host_login.login, host_login.passcode),
            clock=hr.reactor,
        )
        host = HostController(session, hr.reactor)
        host.start()
        return host

    host = hr.call(build)
    hr.call(host.when_connected)
    hr.call(host.wait_for_hello, "bench", 30)
    print(f"vmcontroller benchmark: embedded broker, separate processes, {os.cpu_count()} cores")

    if "relay" in args.only:
        roles = {"broker": broker.pid, "agent": agent.pid, "host": os.getpid()}
        relay_part(args, size, tmp, hr, host, roles, work)
    if "latency" in args.only:
        latency_part(args, hr, host)
    if "idle" in args.only:
        idle_part(args, agent.pid)
    hr.call(host.stop)
    return 0


def relay_part(
    args: argparse.Namespace,
    size: int,
    tmp: Path,
    hr: Reactor,
    host: HostController,
    roles: dict[str, int],
    work: Path,
) -> None:
    """File relay put/get against raw TCP file to file, interleaved."""
    source = tmp / "source.bin"
    digest = make_file(source, size)
    raw: list[float] = []
    raw_memory: list[float] = []
    relay: dict[tuple[str, int], list[float]] = {}
    # CPU seconds each process spent per transfer: steadier than wall time
    # on a shared machine, and it shows where the relay's cost lies.
    cpu: dict[tuple[str, int], list[dict[str, float]]] = {}

    def timed(key: tuple[str, int], function: Any, *call_args: Any) -> Any:
        before = {role: process_cpu_seconds(pid) for role, pid in roles.items()}
        started = time.perf_counter()
        result = hr.call(function, *call_args)
        relay.setdefault(key, []).append(time.perf_counter() - started)
        cpu.setdefault(key, []).append(
            {role: process_cpu_seconds(pid) - before[role] for role, pid in roles.items()}
        )
        return result

    chunk_sizes = (256 * 1024, 1024 * 1024)
    for _ in range(args.repeat):  # interleaved, so load swings hit every figure alike
        raw.append(raw_tcp_copy(source, tmp / "raw.bin", size))
        (tmp / "raw.bin").unlink()
        raw_memory.append(raw_tcp_copy(None, None, size))
        for chunk in chunk_sizes:
            host.chunk_size = chunk
            put = timed(("put", chunk), host.put_file, "bench", str(source), "copy.bin")
            got = timed(("get", chunk), host.get_file, "bench", "copy.bin", str(tmp / "back.bin"))
            assert put.sha256 == got.sha256 == digest, "checksum mismatch"
            (tmp / "back.bin").unlink()
            (work / "copy.bin").unlink()
    host.chunk_size = chunk_sizes[0]
    raw_rate = size / statistics.median(raw) / 1e6
    memory_rate = size / statistics.median(raw_memory) / 1e6
    print(
        f"\nfile relay, {args.size_mib} MiB, sha256 verified, median (range) of {args.repeat} "
        f"(target >= 0.3x raw TCP file to file); load average {os.getloadavg()[0]:.2f}"
    )
    print(f"  raw TCP file to file (baseline)   {rate_line(size, raw, raw_rate)}")
    print("    one process reads the file in 256 KiB blocks and sendall()s them over one")
    print("    loopback connection, another recv_into()s and writes the file; no hashing")
    print(f"  raw TCP memory to memory          {rate_line(size, raw_memory, raw_rate)}")
    for (direction, chunk), times in relay.items():
        label = "put host->agent" if direction == "put" else "get agent->host"
        default = " (default)" if chunk == chunk_sizes[0] else ""
        print(
            f"  {label}, {chunk // 1024:>4} KiB chunks {rate_line(size, times, raw_rate)}{default}"
        )
    print(f"  (ratios against memory to memory: the above times {raw_rate / memory_rate:.2f})")
    print(
        f"  CPU per transfer, median ms; host and agent each include one sha256 of the file,"
        f" {sha256_cpu(source) * 1000:.0f} ms here"
    )
    for key, samples in cpu.items():
        figures = "  ".join(
            f"{role} {statistics.median(s[role] for s in samples) * 1000:5.0f}" for role in roles
        )
        print(f"    {key[0]} {key[1] // 1024:>4} KiB chunks: {figures}")


def latency_part(args: argparse.Namespace, hr: Reactor, host: HostController) -> None:
    """Ping and ``run true`` round trips, p50/p99."""
    for _ in range(20):
        hr.call(host.ping, "bench")
        hr.call(host.run, "bench", argv=["true"])
    pings, runs = [], []
    for _ in range(args.runs):
        started = time.perf_counter()
        hr.call(host.ping, "bench")
        pings.append((time.perf_counter() - started) * 1000)
    for _ in range(args.runs):
        started = time.perf_counter()
        result = hr.call(host.run, "bench", argv=["true"])
        runs.append((time.perf_counter() - started) * 1000)
        assert result.code == 0
    print(f"\nlatency, {args.runs} sequential samples each")
    print(
        f"  ping round trip        p50 {percentile(pings, 50):6.3f} ms   p99 {percentile(pings, 99):6.3f} ms"
    )
    print(
        f"  run `true` end to end  p50 {percentile(runs, 50):6.3f} ms   p99 "
        f"{percentile(runs, 99):6.3f} ms   (target p50 <= 5 ms)"
    )


def idle_part(args: argparse.Namespace, agent_pid: int) -> None:
    """CPU of the idle agent and host controller processes."""
    time.sleep(2)  # let the last replies settle
    agent_before, host_before = cpu_seconds(agent_pid), cpu_seconds(os.getpid())
    started = time.monotonic()
    time.sleep(args.idle_seconds)
    wall = time.monotonic() - started
    agent_cpu = cpu_seconds(agent_pid) - agent_before
    host_cpu = cpu_seconds(os.getpid()) - host_before
    print(f"\nidle CPU over {wall:.0f} s, heartbeat every 10 s (target <= 0.01 % of a core)")
    for name, cpu in (("agent", agent_cpu), ("host controller", host_cpu)):
        print(
            f"  {name:<22} {cpu * 1000:7.2f} ms CPU = {100 * cpu / wall:.4f} % of a core "
            f"({cpu / wall * 3600:.2f} s per wall hour)"
        )


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark what the status page costs the wrapper process, and how fast it follows the VM.

Prints, each next to a baseline measured in the same run (the machine is
shared and noisy, so ratios matter more than absolute numbers):

* CPU of the wrapper process per wall second with the page serving 3 live
  pages (real ``curl -N`` clients on ``/events`` in other processes) while the
  snapshot changes every second, as a running VM's CPU time does; baseline:
  the same process with only a 1 s tick and no page. Phases alternate
  (baseline, page, baseline, page...) and the medians are compared;
* update latency: a snapshot change -> the event read by a client socket
  (in this process, over loopback), once waiting for the provider poll
  (every 0.1 s here, 1 s by default) and once pushed by calling
  ``server.poll()`` (what the wrapper can do on suspend/resume); baseline: a
  plain ``GET /status.json`` round trip on the same server;
* the pre-boot diagnostics (``check_host``); baseline: ``qemu-system-x86_64
  --version`` alone, which is the expensive part of it.

Usage: ``.venv/bin/python bench/bench_status_page.py [--phase SECONDS] [--rounds N]``
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from twisted.internet import task

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmwrapper.diagnostics.host import check_host  # noqa: E402
from vmwrapper.status.model import StatusSnapshot  # noqa: E402
from vmwrapper.status.server import StatusServer  # noqa: E402


class ChangingProvider:
    """A snapshot whose CPU time grows each time it is asked (like a running VM)."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.lines = tuple(f"guest line {n}: some output of the job" for n in range(20))

    def __call__(self) -> StatusSnapshot:
        self.cpu += 1.0
        return StatusSnapshot(vm_state="running", task="bench", fraction_done=0.5,
                              cpu_time=self.cpu, guest_output=self.lines)


def cpu_phases(reactor, seconds: float, rounds: int) -> tuple[list[float], list[float]]:
    """(baseline, with page) CPU milliseconds per wall second, one value per round."""
    baseline: list[float] = []
    paged: list[float] = []
    tick = task.LoopingCall(lambda: None)
    tick.clock = reactor
    tick.start(1.0)

    def measure(into: list[float], server: StatusServer | None) -> None:
        clients: list[subprocess.Popen] = []
        if server is not None:
            url = server.start()
            clients = [subprocess.Popen(["curl", "-sN", url + "events"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL) for _ in range(3)]
        started_wall, started_cpu = time.monotonic(), time.process_time()

        def done() -> None:
            into.append(1000 * (time.process_time() - started_cpu)
                        / (time.monotonic() - started_wall))
            for client in clients:
                client.kill()
                client.wait()
            if server is not None:
                server.stop()
            next_phase()

        reactor.callLater(seconds, done)

    plan = []
    for _ in range(rounds):
        plan.append((baseline, None))
        plan.append((paged, "page"))

    def next_phase() -> None:
        if not plan:
            tick.stop()
            reactor.stop()
            return
        into, page = plan.pop(0)
        server = StatusServer(ChangingProvider(), reactor, interval=1.0) if page else None
        # let the clients connect before measuring
        reactor.callLater(0.5, measure, into, server)

    reactor.callWhenRunning(next_phase)
    reactor.run()
    return baseline, paged


def latencies(samples: int) -> tuple[list[float], list[float], list[float]]:
    """(GET round trips, change -> event when polled, when pushed) in ms, reactor in a thread."""
    from twisted.internet.epollreactor import EPollReactor

    reactor = EPollReactor()
    snapshot = {"value": StatusSnapshot(vm_state="running")}
    server = StatusServer(lambda: snapshot["value"], reactor, interval=0.1)
    ready = threading.Event()

    def start() -> None:
        server.start()
        ready.set()

    reactor.callWhenRunning(start)
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                              daemon=True)
    thread.start()
    ready.wait(10)
    host = f"127.0.0.1:{server.port}"
    gets: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(f"GET /status.json HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            while s.recv(65536):
                pass
        gets.append(1000 * (time.perf_counter() - started))
    stream = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    stream.sendall(f"GET /events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    buffer = b""
    while buffer.count(b"data: ") < 1:
        buffer += stream.recv(65536)
    states = ["paused", "running"]
    polled: list[float] = []
    pushed: list[float] = []
    for n in range(2 * samples):
        buffer = b""
        started = time.perf_counter()
        snapshot["value"] = StatusSnapshot(vm_state=states[n % 2], cpu_time=float(n))
        if n % 2:
            reactor.callFromThread(server.poll)  # the wrapper pushing at once (e.g. on suspend)
        while b"data: " not in buffer:
            buffer += stream.recv(65536)
        (pushed if n % 2 else polled).append(1000 * (time.perf_counter() - started))
    stream.close()
    reactor.callFromThread(server.stop)
    reactor.callFromThread(reactor.stop)
    thread.join(10)
    return gets, polled, pushed


def diagnostics(samples: int) -> tuple[list[float], list[float]]:
    """(``--version`` alone, whole check_host) wall milliseconds."""
    versions: list[float] = []
    checks: list[float] = []
    with tempfile.TemporaryDirectory() as slot:
        for _ in range(samples):
            started = time.perf_counter()
            subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, check=True)
            versions.append(1000 * (time.perf_counter() - started))
            started = time.perf_counter()
            check_host(("qemu",), 512, Path(slot))
            checks.append(1000 * (time.perf_counter() - started))
    return versions, checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", type=float, default=10.0, help="seconds per CPU phase")
    parser.add_argument("--rounds", type=int, default=2, help="baseline/page phase pairs")
    parser.add_argument("--samples", type=int, default=40, help="latency samples")
    args = parser.parse_args()
    median = statistics.median

    gets, polled, pushed = latencies(args.samples)
    print(f"GET /status.json round trip (baseline): median {median(gets):.2f} ms")
    print(f"snapshot change -> event at a client, waiting for the 0.1 s poll: median "
          f"{median(polled):.1f} ms, max {max(polled):.1f} ms")
    print(f"snapshot change -> event at a client, pushed with server.poll(): median "
          f"{median(pushed):.2f} ms, max {max(pushed):.2f} ms; "
          f"{median(pushed) / median(gets):.1f}x the GET")
    versions, checks = diagnostics(max(3, args.samples // 8))
    print(f"qemu-system-x86_64 --version (baseline): median {median(versions):.1f} ms")
    print(f"check_host (virtualization, hypervisor, disk, memory): median {median(checks):.1f} ms;"
          f" {median(checks) / median(versions):.2f}x the --version run")

    from twisted.internet import reactor

    baseline, paged = cpu_phases(reactor, args.phase, args.rounds)
    print(f"process CPU, 1 s tick only (baseline): median {median(baseline):.3f} ms per s "
          f"({median(baseline) / 10:.4f} % of a core)")
    print(f"process CPU, + status page with 3 live clients, changing every 1 s: median "
          f"{median(paged):.3f} ms per s ({median(paged) / 10:.4f} % of a core); "
          f"+{median(paged) - median(baseline):.3f} ms per s over the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark Co-Pilot dispatch: throughput with many simulated pilots, submit-to-start latency.

Prints, all measured in this one run (loopback figures swing ~2x between runs
on a shared machine, so compare the ratios):

* dispatch throughput of empty jobs with N simulated pilots (default 200):
  each job is want_job -> offer -> accept -> accepted -> done -> done_ack,
  three broker round trips and five store writes; target >= 500 jobs/s;
* submit-to-start latency p50/p90: from the physicist's HTTP submit to the
  offer arriving at an idle pilot; target p50 <= 20 ms;
* the manager's CPU per dispatched job (from /proc: steadier than jobs/s when
  the machine is shared);
* the baseline: the same pilots doing bare request/reply round trips through
  the same broker against an echo process (no manager, no store), so
  ``3 x jobs/s / round trips/s`` is the share of the broker's capacity the
  manager reaches, and latency p50 / round-trip p50 its overhead.

Processes: the broker, the job manager (``copilot serve``, SQLite store) and
the echo responder each run in a process of their own; the simulated pilots
share this script's reactor.  ``--broker rabbitmq`` uses RabbitMQ on
127.0.0.1:61613 with a vhost ``copilot_bench`` and users ``copilot-bench-*``
imported once with ``rabbitmqctl import_definitions`` (they are kept for
later runs; ``--cleanup`` removes them).

Usage: .venv/bin/python bench/bench_copilot.py [--broker embedded|rabbitmq]
       [--agents 200] [--jobs 3000] [--latency-jobs 100]
       [--store mysql://root@127.0.0.1:3306/copilot_bench] [--store-thread auto|on|off]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, reactor, task, threads  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint  # noqa: E402

from vmcontroller.broker.credentials import generate_credentials  # noqa: E402
from vmcontroller.broker.rabbitmq import permissions_for  # noqa: E402
from vmcontroller.copilot import messages  # noqa: E402
from vmcontroller.copilot.client import CopilotClient  # noqa: E402
from vmcontroller.copilot.store import open_store  # noqa: E402
from vmcontroller.destinations import PRESENCE, Role, to_guest  # noqa: E402
from vmcontroller.stomp.client import StompConfig, StompSession  # noqa: E402

PYTHON = sys.executable
RABBIT_VHOST = "copilot_bench"

ECHO = r"""
import sys
sys.path.insert(0, sys.argv[1])
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from vmcontroller.copilot.dispatch import agent_for_login
from vmcontroller.destinations import PRESENCE, to_guest
from vmcontroller.stomp.client import StompConfig, StompSession
session = StompSession(TCP4ClientEndpoint(reactor, "127.0.0.1", int(sys.argv[2])),
                       StompConfig(sys.argv[3], sys.argv[4], vhost=sys.argv[5]), reactor)
def echo(frame):
    session.send(to_guest(agent_for_login(frame.headers["user-id"])), frame.body)
session.subscribe(PRESENCE, echo)
session.start()
session.when_connected().addCallback(lambda _: print("ready", flush=True))
reactor.run()
"""


# --- brokers ---------------------------------------------------------------------------


def embedded_broker(workdir: Path, agents: int) -> tuple[int, str, tuple[str, str], list, Any]:
    ids = [f"b{n:03d}" for n in range(agents)]
    creds = generate_credentials(ids, workdir / "creds.json")
    process = subprocess.Popen(
        [PYTHON, "-m", "vmcontroller.cli", "broker", "--listen", "127.0.0.1:0",
         "--credentials", str(workdir / "creds.json")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )  # fmt: skip
    port = int(process.stdout.readline().rsplit(":", 1)[1])
    host = creds.host_login()
    vms = [(creds.vm_login(i).login, creds.vm_login(i).passcode) for i in ids]
    return port, "/", (host.login, host.passcode), vms, process


def _rabbit_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def rabbit_broker(workdir: Path, agents: int) -> tuple[int, str, tuple[str, str], list, None]:
    """Users copilot-bench-host and vm-cb<NNN> with fixed passcodes kept in workdir's parent."""
    secret_file = Path(tempfile.gettempdir()) / "copilot-bench-rabbit.json"
    if secret_file.exists():
        passcode = json.loads(secret_file.read_text())["passcode"]
    else:
        passcode = secrets.token_urlsafe(16)
        secret_file.write_text(json.dumps({"passcode": passcode}))
        os.chmod(secret_file, 0o600)
    host = ("copilot-bench-host", passcode)
    vms = [(f"vm-cb{n:03d}", passcode) for n in range(agents)]
    users, permissions, topics = [], [], []
    for name, role, vm_id in [(host[0], Role.HOST, None)] + [(v, Role.VM, v[3:]) for v, _ in vms]:
        perms = permissions_for(role, vm_id)
        users.append({"name": name, "password_hash": _rabbit_hash(passcode),
                      "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""})
        permissions.append({"user": name, "vhost": RABBIT_VHOST, "configure": perms.configure,
                            "write": perms.write, "read": perms.read})
        topics.append({"user": name, "vhost": RABBIT_VHOST, "exchange": "amq.topic",
                       "write": perms.topic_write, "read": perms.topic_read})
    definitions = {"users": users, "vhosts": [{"name": RABBIT_VHOST}],
                   "permissions": permissions, "topic_permissions": topics}  # fmt: skip
    # Debian's rabbitmqctl runs as the rabbitmq user: it needs a file it can read (our
    # temporary directory is private), and 3.10 refuses "-" for stdin.  Only salted
    # hashes are in it, and it is removed at once.
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir="/tmp") as handle:
        json.dump(definitions, handle)
        handle.flush()
        os.chmod(handle.name, 0o644)
        done = subprocess.run(["rabbitmqctl", "-q", "import_definitions", handle.name],
                              text=True, capture_output=True, timeout=300)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl import_definitions failed: {done.stderr.strip()}")
    return 61613, RABBIT_VHOST, host, vms, None


def drop_database(url: str | None) -> None:
    """Remove a MariaDB/PostgreSQL bench database (SQLite lives in the temporary directory)."""
    if not url or url.startswith("sqlite"):
        return
    from urllib.parse import urlsplit

    name = urlsplit(url).path.lstrip("/")
    if url.startswith(("mysql", "mariadb")):
        import pymysql

        connection = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        connection.close()
    else:
        import psycopg

        with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres",
                             autocommit=True) as connection:  # fmt: skip
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rabbit_cleanup(agents: int) -> None:
    names = ["copilot-bench-host"] + [f"vm-cb{n:03d}" for n in range(agents)]
    for name in names:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", name], capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", RABBIT_VHOST], capture_output=True)


# --- simulated pilots ------------------------------------------------------------------


class SimPilot:
    """A pilot that runs empty jobs instantly, or just echoes round trips."""

    def __init__(self, port: int, login: str, passcode: str, vhost: str) -> None:
        self.agent = login[3:]
        self.session = StompSession(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port),
            StompConfig(login, passcode, vhost=vhost, heartbeat=0), reactor,
        )
        self.waiter: defer.Deferred | None = None
        self.session.subscribe(to_guest(self.agent), self._on_frame)
        self.session.start()

    def _on_frame(self, frame: Any) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.callback(bytes(frame.body))

    def ask(self, body: bytes) -> defer.Deferred:
        self.waiter = defer.Deferred()
        self.session.send(PRESENCE, body)
        return self.waiter

    @defer.inlineCallbacks
    def round_trips(self, until: float, counts: list[float]) -> Any:
        body = messages.encode("heartbeat", job_id="x", lease_id="y")
        while time.perf_counter() < until:
            started = time.perf_counter()
            yield self.ask(body)
            counts.append(time.perf_counter() - started)

    @defer.inlineCallbacks
    def work(self, state: dict[str, Any]) -> Any:
        seq = 0
        caps = {"cores": 1, "memory_mb": 256, "max_run_time": 3600}
        while not state["stop"]:
            seq += 1
            reply = messages.decode((yield self.ask(messages.encode(
                "want_job", seq=seq, capabilities=caps))))
            if reply["type"] != "offer":
                continue
            state["offers"].append((reply["job_id"], time.perf_counter()))
            job_id, lease_id = reply["job_id"], reply["lease_id"]
            yield self.ask(messages.encode("accept", job_id=job_id, lease_id=lease_id))
            answer = messages.decode((yield self.ask(messages.encode(
                "done", job_id=job_id, lease_id=lease_id, result={"exit_code": 0, "cpu_time": 0},
                outputs={}))))  # fmt: skip
            if answer["type"] == "done_ack":
                state["done"] += 1
                if state["done"] == state["target"] and not state["finished"].called:
                    state["finished"].callback(time.perf_counter())


# --- the run ---------------------------------------------------------------------------


_T0 = time.perf_counter()


def phase(text: str) -> None:
    """Progress on stderr, so a slow set-up is visible."""
    print(f"[{time.perf_counter() - _T0:6.1f} s] {text}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (Linux /proc): the manager's cost per
    job, which swings far less than jobs/s on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@defer.inlineCallbacks
def run(args: argparse.Namespace, workdir: Path) -> Any:
    setup = embedded_broker if args.broker == "embedded" else rabbit_broker
    port, vhost, host, vms, broker_process = setup(workdir, args.agents)
    children = [p for p in [broker_process] if p is not None]
    try:
        # Baseline: bare round trips through the broker to an echo process.
        echo = subprocess.Popen([PYTHON, "-c", ECHO, str(ROOT), str(port), host[0], host[1], vhost],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        children.append(echo)
        assert echo.stdout.readline().strip() == "ready"
        phase("broker and echo up")
        # A few at a time: the embedded broker listens with socketserver's backlog
        # of 5, and a burst of 200 SYNs costs seconds of TCP retransmission.
        pilots = []
        for first in range(0, len(vms), 4):
            batch = [SimPilot(port, login, passcode, vhost) for login, passcode in vms[first:first + 4]]
            yield defer.gatherResults([p.session.when_connected() for p in batch])
            pilots += batch
        phase(f"{len(pilots)} pilots connected")
        samples: list[float] = []
        started = time.perf_counter()
        until = started + args.seconds
        yield defer.gatherResults([p.round_trips(until, samples) for p in pilots])
        baseline_rate = len(samples) / (time.perf_counter() - started)
        single: list[float] = []
        yield pilots[0].round_trips(time.perf_counter() + 2, single)
        echo.terminate()
        echo.wait(5)
        for pilot in pilots:  # drop anything the echo sent late
            pilot.waiter = None

        # The manager, with its jobs submitted before the pilots start.
        store_url = args.store or f"sqlite:///{workdir}/jobs.db"
        store = open_store(store_url)
        token = store.add_user("bench")
        store.close()
        profile = ["-m", "cProfile", "-o", args.profile_manager] if args.profile_manager else []
        manager = subprocess.Popen(
            [PYTHON, *profile, "-m", "vmcontroller.copilot.cli", "serve", "--store", store_url,
             "--storage", str(workdir / "files"), "--http", "127.0.0.1:0",
             "--broker", f"127.0.0.1:{port}", "--login", host[0], "--passcode", host[1],
             "--vhost", vhost, "--lease-ttl", "600", "--offer-ttl", "600",
             "--heartbeat-interval", "60", "--retry-after", "5",
             "--store-thread", args.store_thread],
            stdout=subprocess.PIPE, stderr=open(workdir / "manager.log", "ab"), text=True,
            cwd=ROOT,
        )  # fmt: skip
        children.append(manager)
        url = manager.stdout.readline().split()[1]
        client = CopilotClient(url, token)

        def submit_many(count: int) -> None:
            for _ in range(count):
                client.submit({"argv": ["true"], "retries": 0}, {})

        phase("manager up; submitting")
        submit_started = time.perf_counter()
        yield threads.deferToThread(submit_many, args.jobs)
        submit_rate = args.jobs / (time.perf_counter() - submit_started)
        phase("jobs submitted; dispatching")
        state = {"stop": False, "offers": [], "done": 0, "target": args.jobs,
                 "finished": defer.Deferred()}  # fmt: skip
        started = time.perf_counter()
        cpu_before, own_before = cpu_seconds(manager.pid), cpu_seconds(os.getpid())
        for pilot in pilots:
            pilot.work(state)
        finished_at = yield state["finished"]
        throughput = args.jobs / (finished_at - started)
        manager_cpu = cpu_seconds(manager.pid) - cpu_before
        pilots_cpu = cpu_seconds(os.getpid()) - own_before

        phase("dispatched; measuring latency")
        # Latency: pilots are idle (parked at the manager); submit one job at a time.
        latencies = []
        for _ in range(args.latency_jobs):
            before = len(state["offers"])
            sent = time.perf_counter()
            yield threads.deferToThread(submit_many, 1)
            while len(state["offers"]) == before:
                yield task.deferLater(reactor, 0.001, lambda: None)
            latencies.append(state["offers"][-1][1] - sent)
            yield task.deferLater(reactor, 0.02, lambda: None)
        state["stop"] = True

        phase("done")
        rt_p50 = statistics.median(single) * 1000
        print(f"broker: {args.broker}, {args.agents} simulated pilots, store "
              f"{store_url.split(':')[0]}, --store-thread {args.store_thread}")
        print(f"baseline round trips through the broker: {baseline_rate:,.0f}/s "
              f"(all pilots), single p50 {rt_p50:.2f} ms")
        print(f"dispatch: {args.jobs} empty jobs in {finished_at - started:.2f} s = "
              f"{throughput:,.0f} jobs/s (target >= 500); "
              f"3 round trips per job = {3 * throughput / baseline_rate:.2f}x the broker baseline")
        print(f"manager CPU while dispatching: {manager_cpu * 1000 / args.jobs:.2f} ms per job "
              f"({manager_cpu / (finished_at - started):.0%} of one core); simulated pilots "
              f"{pilots_cpu * 1000 / args.jobs:.2f} ms ({pilots_cpu / (finished_at - started):.0%})")
        print(f"submissions over HTTP, one at a time: {submit_rate:,.0f}/s")
        p50, p90 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.9) * 1000
        print(f"submit-to-start latency: p50 {p50:.1f} ms, p90 {p90:.1f} ms "
              f"(target p50 <= 20 ms; {p50 / rt_p50:.1f}x a bare round trip)")
        for pilot in pilots:
            yield pilot.session.stop()
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=["embedded", "rabbitmq"], default="embedded")
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0, help="baseline duration")
    parser.add_argument("--store", help="the manager's store URL (default: SQLite in a temporary"
                        " directory); a MariaDB/PostgreSQL database named here is dropped after")
    parser.add_argument("--store-thread", choices=["auto", "on", "off"], default="auto",
                        help="the manager's --store-thread (store calls in a worker thread)")
    parser.add_argument("--profile-manager", metavar="FILE", help="cProfile the manager into FILE")
    parser.add_argument("--cleanup", action="store_true", help="remove the RabbitMQ bench users")
    args = parser.parse_args()
    if args.cleanup:
        rabbit_cleanup(args.agents)
        return
    with tempfile.TemporaryDirectory(prefix="bench-copilot-") as tmp:

        def report(failure: Any) -> None:
            print(f"bench failed: {failure.getTraceback()}", file=sys.stderr)
            return failure

        try:
            task.react(lambda _: run(args, Path(tmp)).addErrback(report))
        finally:
            drop_database(args.store)


if __name__ == "__main__":
    main()

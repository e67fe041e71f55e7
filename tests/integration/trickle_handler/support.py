"""Helpers for the trickle_handler integration tests: workloads with known answers, daemon processes."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trickle_handler import seed
from trickle_handler.credit import cobblestones
from trickle_handler.db import Database

T0 = 1_700_000_000
FPOPS = 2e9  # every host alike, so the percentile clamp (which switches on mid-run) changes nothing
TRICKLES_PER_RESULT = 8
NCPUS = 8  # room for the wall-time cap to absorb jitter and remainders before the last trickle
SECONDS_PER_TRICKLE = 3600


@dataclass
class Workload:
    """BOINC rows plus pending trickles, and what each host, user and team must end up with."""

    hosts: dict[int, int] = field(default_factory=dict)  # hostid -> userid
    users: dict[int, int] = field(default_factory=dict)  # userid -> teamid
    results: dict[int, tuple[str, int]] = field(default_factory=dict)  # id -> (name, hostid)
    messages: list[seed.StoredMessage] = field(default_factory=list)
    expected_seconds: dict[int, float] = field(default_factory=dict)  # resultid -> CPU s

    def store(self, db: Database) -> None:
        db.begin()
        seed.add_teams(db, sorted({t for t in self.users.values() if t}))
        seed.add_users(db, sorted(self.users.items()))
        seed.add_hosts(db, [(h, u, NCPUS, FPOPS) for h, u in sorted(self.hosts.items())])
        seed.add_results(
            db,
            [(r, n, h, self.hosts[h], T0) for r, (n, h) in sorted(self.results.items())],
        )
        seed.store_messages(db, self.messages)
        db.commit()

    def expected_credit(self) -> tuple[dict[int, float], dict[int, float], dict[int, float]]:
        """Total credit per host, user and team if every trickle is credited exactly once."""
        hosts: dict[int, float] = defaultdict(float)
        users: dict[int, float] = defaultdict(float)
        teams: dict[int, float] = defaultdict(float)
        for rid, seconds in self.expected_seconds.items():
            hostid = self.results[rid][1]
            credit = cobblestones(seconds, FPOPS)
            hosts[hostid] += credit
            users[self.hosts[hostid]] += credit
            team = self.users[self.hosts[hostid]]
            if team:
                teams[team] += credit
        return hosts, users, teams


def build_workload(
    rng: random.Random, n_hosts: int, results_per_host: int, resends: int = 2, forgeries: int = 0
) -> Workload:
    """Trickles as a real project sees them: hourly, resent, some out of order, a few forged.

    Two results in ten send ``<runtime>`` increments (trickle_credit's tag), the rest cumulative
    ``<cpu_time>``. A third of the cumulative results deliver two trickles in one scheduler RPC
    (same ``create_time``, row order random). A third of the trickles but the last two are resent
    ``resends`` times within the hour. With these rules every result is credited in full (the
    wall-time cap defers remainders, and the last two trickles are clean periods to catch up).
    """
    w = Workload()
    nusers = max(1, n_hosts // 4)
    w.users = {u: u % 6 for u in range(1, nusers + 1)}  # team 0 = no team
    w.hosts = {h: 1 + h % nusers for h in range(1, n_hosts + 1)}
    rows: list[tuple[int, float, seed.StoredMessage]] = []
    rid = 0
    for hostid in w.hosts:
        for _ in range(results_per_host):
            rid += 1
            name = f"wu{rid}_{hostid}_0"
            w.results[rid] = (name, hostid)
            kind = "runtime" if rng.random() < 0.2 else "cpu_time"
            created = [T0 + SECONDS_PER_TRICKLE * k + rng.randint(0, 60) for k in range(1, 9)]
            if kind == "cpu_time" and rng.random() < 0.33:
                # Trickles k+1 and k+2 arrive in one RPC. Not the last two: the wall-time cap then
                # defers part of the pair to the next trickle, and the last one has no next.
                k = rng.randint(0, 4)
                created[k] = created[k + 1]
            for k in range(1, TRICKLES_PER_RESULT + 1):
                value = SECONDS_PER_TRICKLE * (k if kind == "cpu_time" else 1)
                body = f"<{kind}>{value:f}</{kind}>\n"
                xml = seed.scheduler_xml(name, created[k - 1] - 7, body)
                rows.append(
                    (
                        created[k - 1],
                        rng.random(),
                        seed.StoredMessage(created[k - 1], hostid, "cpu_time", xml),
                    )
                )
                for _ in range(resends if k <= 6 and rng.random() < 0.3 else 0):
                    later = created[k - 1] + rng.randint(60, 3000)
                    rows.append(
                        (later, rng.random(), seed.StoredMessage(later, hostid, "cpu_time", xml))
                    )
            w.expected_seconds[rid] = float(SECONDS_PER_TRICKLE * TRICKLES_PER_RESULT)
    for _ in range(forgeries):  # a host claiming another host's result
        victim = rng.randint(1, rid)
        name, owner = w.results[victim]
        thief = owner % n_hosts + 1
        xml = seed.scheduler_xml(name, T0 + 100, "<cpu_time>3600.000000</cpu_time>\n")
        rows.append(
            (T0 + 3700, rng.random(), seed.StoredMessage(T0 + 3700, thief, "cpu_time", xml))
        )
    rows.sort(key=lambda r: (r[0], r[1]))
    w.messages = [m for _, _, m in rows]
    return w


def check_totals(db: Database, w: Workload) -> None:
    """Every host's, user's and team's total equals the expected sum; every result fully credited."""
    hosts, users, teams = w.expected_credit()
    for table, expected in (("host", hosts), ("user", users), ("team", teams)):
        got = dict(db.query(f"SELECT id, total_credit FROM {table}"))
        wrong = {
            i: (got.get(i, 0.0), v)
            for i, v in expected.items()
            if got.get(i, 0.0) != pytest.approx(v, rel=1e-9)
        }
        extra = {i: v for i, v in got.items() if i not in expected and v != 0}
        assert not wrong and not extra, f"{table}: wrong {wrong} extra {extra}"
    credited = dict(db.query("SELECT resultid, credited_cpu FROM trickle_result_state"))
    assert credited == w.expected_seconds
    assert db.query("SELECT COUNT(*) FROM msg_from_host WHERE handled = 0")[0][0] == 0


def handled_count(db: Database) -> int:
    db.begin()
    try:
        return int(db.query("SELECT COUNT(*) FROM msg_from_host WHERE handled <> 0")[0][0])
    finally:
        db.commit()


class Daemons:
    """Starts ``python -m trickle_handler`` processes and kills any still running at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[tuple[subprocess.Popen[str], Path]] = []

    def start(self, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        log = self.tmp_path / f"daemon{len(self.procs)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "trickle_handler", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=cwd or self.tmp_path,
            )
        self.procs.append((proc, log))
        return proc

    def log_of(self, proc: subprocess.Popen[str]) -> str:
        return next(log for p, log in self.procs if p is proc).read_text()

    def wait(self, proc: subprocess.Popen[str], timeout: float = 60) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"daemon did not exit in {timeout}s:\n{self.log_of(proc)}"
            ) from None

    def run_for(self, proc: subprocess.Popen[str], seconds: float) -> None:
        """Let ``proc`` run ``seconds`` more (or until it exits)."""
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass

    def kill_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

"""Trickles per second of the trickle_handler daemon on MariaDB (issue 5's benchmark).

Fills a scratch database ``trickle_bench_<pid>`` on 127.0.0.1:3306 with BOINC's tables, 1,000 hosts
and 20,000 pending ``cpu_time`` (or ``--kind runtime``) trickles stored exactly as BOINC's scheduler stores them, then runs
the real daemon (``python -m trickle_handler``) on it three ways, each on a fresh copy:

1. one daemon, ``--one_pass``, batches of 1,000 messages per transaction (the default);
2. the same code with ``--batch_size 1`` (one message per transaction), stopped after a while;
3. two daemons, ``--mod 2 0`` and ``--mod 2 1``, at once.

Rates come from the daemons' own log timestamps ("connected" to the last batch), so interpreter
start-up is not counted. Compare figures from the same run: the machine is shared.
Target: >= 6,600 trickles/s for one daemon (10x BOINC's C++ trickle_credit, credit_rules.md s. 9).
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trickle_handler import schema, seed  # noqa: E402
from trickle_handler.db import MySQLDatabase, parse_database_url  # noqa: E402

SERVER = "mysql://root@127.0.0.1:3306"
T0 = 1_700_000_000
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{4}) UTC ")


def populate(
    db_name: str, hosts: int, trickles: int, kind: str = "cpu_time", seed_value: int = 1
) -> None:
    """A fresh database holding ``trickles`` pending trickles spread over ``hosts`` hosts.

    ``kind`` ``cpu_time``: cumulative values (vboxwrapper, our wrapper); ``runtime``: hourly
    increments (BOINC's trickle_credit, as in its 660/s anchor).
    """
    rng = random.Random(seed_value)
    admin = MySQLDatabase(parse_database_url(f"{SERVER}/mysql"))
    admin.connect()
    admin.execute(f"DROP DATABASE IF EXISTS {db_name}")
    admin.execute(f"CREATE DATABASE {db_name}")
    admin.close()
    db = MySQLDatabase(parse_database_url(f"{SERVER}/{db_name}"))
    db.connect()
    schema.create_tables(db)
    db.begin()
    nteams, nusers = max(1, hosts // 100), max(1, hosts // 10)
    seed.add_teams(db, range(1, nteams + 1))
    seed.add_users(db, [(u, (u % (nteams + 1))) for u in range(1, nusers + 1)])
    seed.add_hosts(
        db,
        [
            (h, 1 + h % nusers, rng.choice((1, 2, 4, 8)), rng.uniform(1e9, 6e9))
            for h in range(1, hosts + 1)
        ],
    )
    per_result = 10
    nresults = trickles // per_result
    results = [
        (r, f"wu{r}_0", 1 + r % hosts, 1 + (1 + r % hosts) % nusers, T0)
        for r in range(1, nresults + 1)
    ]
    seed.add_results(db, results)
    messages = []
    for _, name, hostid, _, _ in results:
        for k in range(1, per_result + 1):
            when = T0 + 3600 * k + rng.randint(0, 30)
            value = 3600.0 * k if kind == "cpu_time" else 3600.0
            xml = seed.scheduler_xml(name, when - 5, f"<{kind}>{value:f}</{kind}>\n")
            messages.append(seed.StoredMessage(when, hostid, "cpu_time", xml))
    messages.sort(key=lambda m: m.create_time)  # the scheduler stores them as requests arrive
    seed.store_messages(db, messages)
    db.commit()
    db.close()


def drop(db_name: str) -> None:
    admin = MySQLDatabase(parse_database_url(f"{SERVER}/mysql"))
    admin.connect()
    admin.execute(f"DROP DATABASE IF EXISTS {db_name}")
    admin.close()


def handled(db_name: str) -> int:
    db = MySQLDatabase(parse_database_url(f"{SERVER}/{db_name}"))
    db.connect()
    n = int(db.query("SELECT COUNT(*) FROM msg_from_host WHERE handled <> 0")[0][0])
    db.close()
    return n


def _stamp(line: str) -> float | None:
    m = _STAMP.match(line)
    if not m:
        return None
    when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
    return when.replace(tzinfo=datetime.UTC).timestamp()


def _span(log: str) -> tuple[float, float]:
    """(time of "connected", time of the last line) in one daemon's log."""
    start = end = None
    for line in log.splitlines():
        when = _stamp(line)
        if when is None:
            continue
        if start is None and "connected to" in line:
            start = when
        end = when
    if start is None or end is None:
        raise RuntimeError(f"no timestamps in daemon log:\n{log}")
    return start, end


def daemons(
    db_name: str, extra_args: list[list[str]], stop_after: float | None = None
) -> list[str]:
    """Run one daemon per argument list at once; return their logs."""
    outs = [tempfile.TemporaryFile("w+") for _ in extra_args]  # a pipe could fill up and stall
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "trickle_handler", "--db", f"{SERVER}/{db_name}", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for args, out in zip(extra_args, outs, strict=True)
    ]
    try:
        if stop_after is not None:
            time.sleep(stop_after)
            for p in procs:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=600)
        logs = []
        for out in outs:
            out.seek(0)
            logs.append(out.read())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for out in outs:
            out.close()
    for p, log in zip(procs, logs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"daemon exited {p.returncode}:\n{log}")
    return logs


def rate(db_name: str, logs: list[str]) -> tuple[int, float]:
    spans = [_span(log) for log in logs]
    elapsed = max(e for _, e in spans) - min(s for s, _ in spans)
    return handled(db_name), elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--trickles", type=int, default=20000)
    ap.add_argument(
        "--single_seconds", type=float, default=8.0, help="run time of the batch=1 path"
    )
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--kind", choices=("cpu_time", "runtime"), default="cpu_time")
    args = ap.parse_args()
    name = f"trickle_bench_{os.getpid()}"
    print(
        f"{args.trickles} pending {args.kind} trickles from {args.hosts} hosts, MariaDB 127.0.0.1:3306"
    )
    try:
        for _ in range(args.repeat):
            populate(name, args.hosts, args.trickles, args.kind)
            n, t = rate(name, daemons(name, [["--one_pass"]]))
            batched = n / t
            print(
                f"  one daemon, 1000 msgs/transaction : {n:6d} msgs in {t:6.2f}s = {batched:8.0f}/s"
            )

            populate(name, args.hosts, args.trickles, args.kind)
            n, t = rate(
                name, daemons(name, [["--batch_size", "1"]], stop_after=args.single_seconds)
            )
            single = n / t
            print(
                f"  one daemon, 1 msg/transaction     : {n:6d} msgs in {t:6.2f}s = {single:8.0f}/s"
            )

            populate(name, args.hosts, args.trickles, args.kind)
            n, t = rate(
                name,
                daemons(
                    name, [["--one_pass", "--mod", "2", "0"], ["--one_pass", "--mod", "2", "1"]]
                ),
            )
            modded = n / t
            print(
                f"  two daemons --mod 2 0 / --mod 2 1  : {n:6d} msgs in {t:6.2f}s = {modded:8.0f}/s"
            )
            print(
                f"  batching gain x{batched / single:.1f}; --mod 2 scaling x{modded / batched:.2f};"
                f" target 6600/s: {'met' if batched >= 6600 else 'NOT met'} (x{batched / 660:.1f}"
                " BOINC trickle_credit's 660/s)"
            )
    finally:
        drop(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

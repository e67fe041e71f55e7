"""Exactly-once on real MariaDB: SIGKILL at random points, two --mod daemons, a lost connection."""

from __future__ import annotations

import random
import re
import signal

import pytest

from tests.integration.trickle_handler.support import (
    build_workload,
    check_totals,
    handled_count,
)
from tests.polling import wait_until

pytestmark = pytest.mark.mariadb

# --max_runtime is large so only the wall-time cap (which the workload's spacing satisfies) applies.
ARGS = ("--max_runtime", "100000", "--sleep", "1")


def test_sigkill_at_random_points_loses_and_doubles_nothing(mariadb_project, daemons):
    url, db = mariadb_project
    rng = random.Random(20261125)
    work = build_workload(rng, n_hosts=180, results_per_host=5, forgeries=60)
    total = len(work.messages)
    assert total >= 10_000
    work.store(db)

    progress = []
    while len(progress) < 8:
        before = handled_count(db)
        proc = daemons.start("--db", url, "--batch_size", "100", *ARGS)
        # Let it start working, then kill it at a random moment inside its run.
        wait_until(lambda p=proc, b=before: handled_count(db) > b or p.poll() is not None)
        daemons.run_for(proc, rng.uniform(0.0, 0.12))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        progress.append(handled_count(db))
        if progress[-1] == total:
            break
    print(f"handled after each SIGKILL: {progress} of {total}")
    final = daemons.start("--db", url, "--one_pass", *ARGS)
    assert daemons.wait(final) == 0, daemons.log_of(final)

    killed_mid_run = [n for n in progress if 0 < n < total]
    assert len(killed_mid_run) >= 3, f"kills did not land during the run: {progress}"
    check_totals(db, work)
    reasons = dict(db.query("SELECT reason, COUNT(*) FROM trickle_reason GROUP BY reason"))
    assert reasons["foreign_result"] == 60


def test_two_daemons_with_mod_share_the_work_exactly_once(mariadb_project, daemons):
    url, db = mariadb_project
    work = build_workload(random.Random(7), n_hosts=60, results_per_host=5, forgeries=20)
    work.store(db)
    procs = [
        daemons.start("--db", url, "--one_pass", "--mod", "2", str(i), "--batch_size", "100", *ARGS)
        for i in (0, 1)
    ]
    assert [daemons.wait(p) for p in procs] == [0, 0]
    check_totals(db, work)
    # Each daemon handled exactly the messages of its half of the hosts.
    by_parity = dict(db.query("SELECT hostid % 2, COUNT(*) FROM msg_from_host GROUP BY hostid % 2"))
    for i, proc in enumerate(procs):
        log = daemons.log_of(proc)
        assert f"mod 2 {i}" in log
        done = re.search(r"queue empty; (\d+) messages", log)
        assert done and int(done.group(1)) == by_parity[i] > 0, log


def test_lost_connection_is_reopened_and_nothing_is_lost(mariadb_project, mariadb_admin, daemons):
    url, db = mariadb_project
    work = build_workload(random.Random(3), n_hosts=60, results_per_host=5)
    work.store(db)
    dbname = url.rsplit("/", 1)[1]
    proc = daemons.start("--db", url, "--one_pass", "--batch_size", "20", *ARGS)
    wait_until(lambda: handled_count(db) > 0)
    ids = mariadb_admin.query(
        "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()"
        " AND id <> ?",
        [dbname, db.query("SELECT CONNECTION_ID()")[0][0]],
    )
    assert ids, "the daemon's connection was not found"
    for (conn_id,) in ids:
        mariadb_admin.execute(f"KILL CONNECTION {int(conn_id)}")
    assert daemons.wait(proc) == 0
    log = daemons.log_of(proc)
    assert "lost the database connection" in log and log.count("connected to") == 2, log
    check_totals(db, work)

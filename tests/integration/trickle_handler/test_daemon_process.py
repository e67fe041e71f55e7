"""The real daemon process on MariaDB: stop triggers, --one_pass, finding config.xml, bad options."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest

from tests.integration.trickle_handler.support import build_workload, handled_count
from tests.polling import wait_until

pytestmark = pytest.mark.mariadb

BATCH = 10


def start_busy(url, db, daemons, *extra, cwd=None):
    """A daemon with a few thousand trickles to do, once it has committed its first batch."""
    work = build_workload(random.Random(11), n_hosts=60, results_per_host=5)
    work.store(db)
    args = ("--db", url) if url else ()
    proc = daemons.start(*args, "--batch_size", str(BATCH), "--sleep", "1", *extra, cwd=cwd)
    wait_until(lambda: handled_count(db) > 0 or proc.poll() is not None)
    return proc, len(work.messages)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_stops_it_within_one_batch(mariadb_project, daemons, signum):
    url, db = mariadb_project
    proc, total = start_busy(url, db, daemons)
    proc.send_signal(signum)
    at_signal = handled_count(db)
    assert daemons.wait(proc, timeout=10) == 0
    after = handled_count(db)
    assert at_signal < total, "the daemon finished before the signal; the test proves nothing"
    assert after - at_signal <= BATCH  # at most the batch in progress was finished
    assert after % BATCH == 0  # and no batch was left half done
    assert f"stopping ({signal.Signals(signum).name})" in daemons.log_of(proc)


def make_project(root, dbname):
    (root / "cgi-bin").mkdir(parents=True)
    (root / "tmp_testhost").mkdir()
    (root / "config.xml").write_text(
        "<boinc>\n  <config>\n"
        f"    <db_name>{dbname}</db_name>\n    <db_host>127.0.0.1:3306</db_host>\n"
        "    <db_user>root</db_user>\n    <db_passwd></db_passwd>\n"
        "  </config>\n</boinc>\n"
    )
    return root


def test_stop_daemons_file_stops_a_daemon_started_like_bin_start(
    mariadb_project, daemons, tmp_path
):
    url, db = mariadb_project
    project = make_project(tmp_path / "project", url.rsplit("/", 1)[1])
    # No --db: it finds ../config.xml from <project>/tmp_<host>, as bin/start runs it.
    proc, total = start_busy(None, db, daemons, cwd=project / "tmp_testhost")
    (project / "stop_daemons").write_text("<stop/>\n")
    at_stop = handled_count(db)
    assert daemons.wait(proc, timeout=10) == 0
    after = handled_count(db)
    assert at_stop < total and after - at_stop <= BATCH
    log = daemons.log_of(proc)
    assert f"from {project.resolve()}/config.xml" in log and "stop_daemons" in log


def test_one_pass_on_an_empty_queue_exits_0(mariadb_project, daemons):
    url, _ = mariadb_project
    proc = daemons.start("--db", url, "--one_pass")
    assert daemons.wait(proc) == 0
    assert "--one_pass: queue empty; 0 messages" in daemons.log_of(proc)


def test_missing_tables_are_a_clear_fatal_error(mariadb_admin, daemons):
    name = f"trickle_test_empty_{os.getpid()}"
    url = f"mysql://root@127.0.0.1:3306/{name}"
    mariadb_admin.execute(f"CREATE DATABASE IF NOT EXISTS {name}")
    try:
        proc = daemons.start("--db", url, "--one_pass")
        assert daemons.wait(proc) == 1
        assert "[CRITICAL] giving up" in daemons.log_of(proc)
        proc = daemons.start("--db", url, "--one_pass", "--create_tables")
        assert daemons.wait(proc) == 0
        assert "created tables: trickle_result_state" in daemons.log_of(proc)
    finally:
        mariadb_admin.execute(f"DROP DATABASE IF EXISTS {name}")


def test_usage_errors(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "trickle_handler", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=30,
        )

    assert run("--help").returncode == 0
    bad = run("--mod", "2", "5")
    assert bad.returncode == 2 and "--mod 2 5" in bad.stderr
    nowhere = run("--one_pass")
    assert nowhere.returncode == 1 and "--project_dir DIR or --db URL" in nowhere.stdout
    bad_url = run("--db", "postgres://x/y")
    assert bad_url.returncode == 1 and "unknown scheme" in bad_url.stdout

"""The daemon loop on a real SQLite file, driven by a task.Clock: stops, sleeps, retries."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from trickle_handler import schema, seed
from trickle_handler.batch import BatchHandler
from trickle_handler.boinclog import BoincLog
from trickle_handler.credit import cobblestones
from trickle_handler.daemon import Daemon
from trickle_handler.db import SQLiteDatabase, parse_database_url
from trickle_handler.rules import Policy

SENT = 1_700_000_000


def fill(db, n_results: int = 10, per_result: int = 3) -> None:
    """n_results results on 2 hosts, each with per_result hourly cumulative trickles."""
    db.begin()
    seed.add_teams(db, [1])
    seed.add_users(db, [(1, 1)])
    seed.add_hosts(db, [(1, 1, 1, 1e9), (2, 1, 1, 1e9)])
    seed.add_results(db, [(r, f"wu{r}_0", 1 + r % 2, 1, SENT) for r in range(1, n_results + 1)])
    messages = [
        seed.StoredMessage(
            SENT + 3600 * k,
            1 + r % 2,
            "cpu_time",
            seed.scheduler_xml(
                f"wu{r}_0", SENT + 3600 * k, f"<cpu_time>{3600.0 * k:f}</cpu_time>\n"
            ),
        )
        for k in range(1, per_result + 1)
        for r in range(1, n_results + 1)
    ]
    seed.store_messages(db, messages)
    db.commit()


@pytest.fixture
def project(tmp_path):
    url = parse_database_url(f"sqlite:///{tmp_path}/project.db")
    db = SQLiteDatabase(url)
    db.connect()
    schema.create_tables(db)
    yield url, db
    db.close()


def make_daemon(url, clock, batch_size=5, **kwargs):
    out = io.StringIO()
    log = BoincLog(3, out, clock=clock.seconds)
    db = SQLiteDatabase(url, busy_timeout=kwargs.pop("busy_timeout", 10))
    handler = BatchHandler(db, clock.seconds, policy=Policy(max_runtime=1e6), batch_size=batch_size)
    return Daemon(clock, handler, log, **kwargs), out


def handled(db) -> int:
    return db.query("SELECT COUNT(*) FROM msg_from_host WHERE handled <> 0")[0][0]


def results_of(d):
    status = []
    d.addCallback(status.append)
    return status


def test_one_pass_on_an_empty_queue_exits_0(project):
    url, _ = project
    clock = Clock()
    daemon, out = make_daemon(url, clock, one_pass=True)
    status = results_of(daemon.run())
    clock.advance(0)
    clock.advance(0)
    assert status == [0]
    assert "--one_pass: queue empty" in out.getvalue()


def test_one_pass_credits_everything_in_batches(project):
    url, db = project
    fill(db)
    clock = Clock()
    daemon, out = make_daemon(url, clock, one_pass=True)
    status = results_of(daemon.run())
    for _ in range(20):
        clock.advance(0)
    assert status == [0]
    assert handled(db) == 30 and daemon.batches == 6
    expected = 5 * cobblestones(3 * 3600, 1e9)
    hosts = db.query("SELECT total_credit FROM host ORDER BY id")
    assert [h[0] for h in hosts] == [pytest.approx(expected)] * 2
    assert db.query("SELECT total_credit FROM team")[0][0] == pytest.approx(2 * expected)
    assert out.getvalue().count("batch: 5 messages, 5 credited") == 6


def test_stop_request_takes_effect_after_the_batch_in_progress(project):
    url, db = project
    fill(db)
    clock = Clock()
    daemon, out = make_daemon(url, clock)
    seen = []

    def signal_during_first_batch(msg, *_):
        seen.append(msg.id)
        daemon.stop("SIGTERM")

    daemon.handler.message_log = signal_during_first_batch
    status = results_of(daemon.run())
    clock.advance(0)
    assert status == [0]
    assert handled(db) == 5 == len(seen)  # the batch in progress was finished, no other started
    assert "stopping (SIGTERM)" in out.getvalue()


def test_stop_daemons_file_stops_it_while_sleeping_within_a_second(project, tmp_path):
    url, db = project
    clock = Clock()
    stop_file = tmp_path / "stop_daemons"
    daemon, _ = make_daemon(url, clock, sleep=60, stop_file=stop_file)
    status = results_of(daemon.run())
    clock.advance(0)
    clock.advance(0)
    clock.advance(5)
    assert status == []
    stop_file.write_text("<stop/>")
    clock.advance(1)
    assert status == [0]


def test_sleeps_when_idle_then_handles_new_messages(project):
    url, db = project
    clock = Clock()
    daemon, _ = make_daemon(url, clock, sleep=5)
    status = results_of(daemon.run())
    clock.advance(0)
    clock.advance(0)
    fill(db, n_results=2, per_result=1)
    clock.pump([1, 1, 1, 1])
    assert handled(db) == 0
    clock.advance(1)
    assert handled(db) == 2
    daemon.stop("SIGHUP")
    clock.advance(0)
    assert status == [0]


def test_unreachable_database_is_retried_with_backoff(tmp_path):
    url = parse_database_url(f"sqlite:///{tmp_path}/not_yet/project.db")
    clock = Clock()
    daemon, out = make_daemon(url, clock, one_pass=True, create_tables=True)
    status = results_of(daemon.run())
    clock.advance(0)
    for delay in (1, 2, 4):
        assert f"retry in {delay}s" in out.getvalue()
        clock.advance(delay)
    (tmp_path / "not_yet").mkdir()
    clock.advance(8)
    clock.advance(0)
    assert status == [0]
    assert "created tables: trickle_result_state" in out.getvalue()


def test_lock_conflict_rolls_back_and_retries(project):
    url, db = project
    fill(db, n_results=2, per_result=1)
    blocker = SQLiteDatabase(url)
    blocker.connect()
    blocker.begin()  # another writer holds the database
    clock = Clock()
    daemon, out = make_daemon(url, clock, one_pass=True, busy_timeout=0.01)
    status = results_of(daemon.run())
    clock.advance(0)
    clock.advance(0)
    assert "batch rolled back" in out.getvalue() and status == []
    blocker.rollback()
    blocker.close()
    clock.pump([1] * 5)
    assert status == [0] and handled(db) == 2


def test_percentile_clamp_from_the_hosts_table(project):
    url, db = project
    fill(db, n_results=2, per_result=1)
    db.begin()
    # Twelve hosts with recent credit (> 10) and speeds 1..12 GFLOPS; one without, at 50 GFLOPS.
    seed.add_hosts(db, [(10 + i, 1, 1, i * 1e9) for i in range(1, 13)])
    seed.add_hosts(db, [(30, 1, 1, 5e10)])
    db.execute("UPDATE host SET expavg_credit = 20 WHERE id BETWEEN 11 AND 22")
    db.execute("UPDATE host SET p_fpops = 9e11 WHERE id = 1")
    db.commit()
    handler = BatchHandler(db, lambda: SENT + 7200, policy=Policy(max_runtime=1e6))
    p = handler.refresh_percentiles()
    assert (p.p50, p.p95, p.hosts, p.active) == (7e9, 12e9, 12, True)  # rows 6 and 11 of 12
    handler.run_batch()
    credit = dict(db.query("SELECT id, total_credit FROM host WHERE id IN (1, 2)"))
    assert credit == {1: cobblestones(3600, 12e9), 2: cobblestones(3600, 1e9)}


def test_other_varieties_are_left_for_their_own_handler(project):
    url, db = project
    fill(db, n_results=2, per_result=1)
    db.begin()
    xml = seed.scheduler_xml("wu1_0", SENT + 60, "<status>booting</status>\n")
    seed.store_messages(db, [seed.StoredMessage(SENT + 60, 2, "vmstatus", xml)])
    db.commit()
    handler = BatchHandler(db, lambda: SENT + 7200)
    assert handler.run_batch().messages == 2
    assert handler.run_batch().messages == 0
    assert db.query("SELECT handled FROM msg_from_host WHERE variety = 'vmstatus'") == [(0,)]


def test_create_tables_never_alters_an_existing_boinc_table(tmp_path):
    db = SQLiteDatabase(parse_database_url(f"sqlite:///{tmp_path}/prod.db"))
    db.connect()
    db.execute(
        "CREATE TABLE msg_from_host (id integer primary key, create_time integer, hostid integer,"
        " variety varchar(254), handled smallint, xml text)"
    )
    created = schema.create_tables(db)
    assert "msg_from_host" not in created and {"trickle_reason", "host", "result"} <= set(created)
    indexes = db.query(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'msg_from_host'"
    )
    assert indexes == []
    assert schema.create_tables(db) == []  # a second run finds everything
    db.close()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([1, 2, 3, 999]),  # hosts 1 and 2 exist
            st.sampled_from(["wu1_0", "wu2_0", "wu3_0", "nope", ""]),
            st.one_of(st.integers(-5, 2**40), st.text(max_size=12)),
            st.sampled_from(["cpu_time", "runtime", "other"]),
            st.one_of(st.floats(allow_nan=True), st.text(max_size=12)),
            st.integers(SENT - 100, SENT + 90000),
        ),
        max_size=40,
    )
)
def test_random_messages_never_break_a_batch(rows):
    db = SQLiteDatabase(parse_database_url("sqlite:///:memory:"))
    db.connect()
    schema.create_tables(db)
    fill(db, n_results=3, per_result=0)
    db.begin()
    seed.store_messages(
        db,
        [
            seed.StoredMessage(
                created, host, "cpu_time", seed.scheduler_xml(name, t, f"<{tag}>{v}</{tag}>\n")
            )
            for host, name, t, tag, v, created in rows
        ],
    )
    db.commit()
    handler = BatchHandler(db, lambda: SENT + 100000, batch_size=16)
    stats = [handler.run_batch() for _ in range(4)]
    assert sum(s.messages for s in stats) == len(rows)
    assert handled(db) == len(rows)
    for (total,) in db.query("SELECT total_credit FROM host"):
        assert 0 <= total <= cobblestones(3 * 90000 * 1, 1e9) + 1e-9
    db.close()

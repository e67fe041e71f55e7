"""``trickle_handler stats`` over a real SQLite project database handled by the real BatchHandler.

Hosts, results and trickles are stored as BOINC's scheduler stores them
(``trickle_handler.seed``); the real batch handler credits or rejects them;
its ``BatchStats`` go into the ledger with :func:`record_batch`, as the daemon
will once it is wired. The view must then agree with what the handler did.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trickle_handler import schema, seed
from trickle_handler.batch import BatchHandler, BatchStats
from trickle_handler.db import SQLiteDatabase, parse_database_url
from trickle_handler.stats import (
    HOUR,
    collect,
    ensure_ledger,
    hour_of,
    record_batch,
    render,
)
from trickle_handler.stats import main as stats_main

T0 = 1_700_000_000 // HOUR * HOUR  # an hour boundary


def trickle(result: str, hostid: int, at: int, body: str) -> seed.StoredMessage:
    return seed.StoredMessage(at, hostid, "cpu_time", seed.scheduler_xml(result, at, body))


@pytest.fixture
def project(tmp_path):
    url = f"sqlite:///{tmp_path}/project.db"
    db = SQLiteDatabase(parse_database_url(url))
    db.connect()
    schema.create_tables(db)
    db.begin()
    seed.add_users(db, [(1, 0)])
    seed.add_hosts(db, [(10, 1, 4, 2e9)])
    seed.add_results(db, [(100, "wu_a_0", 10, 1, T0 - HOUR), (101, "wu_b_0", 10, 1, T0 - HOUR)])
    seed.store_messages(db, [
        trickle("wu_a_0", 10, T0 + 10, "<cpu_time>600</cpu_time>\n"),
        trickle("wu_b_0", 10, T0 + 20, "<cpu_time>300</cpu_time>\n"),
        trickle("wu_nope_0", 10, T0 + 30, "<cpu_time>300</cpu_time>\n"),   # unknown result
        trickle("wu_a_0", 10, T0 + HOUR + 5, "<cpu_time>1200</cpu_time>\n"),
        trickle("wu_a_0", 10, T0 + HOUR + 6, "<cpu_time>-5</cpu_time>\n"),  # negative
        trickle("wu_b_0", 10, T0 + HOUR + 7, "not xml <"),                  # malformed
        trickle("wu_b_0", 10, T0 + 2 * HOUR + 1, "<cpu_time>900</cpu_time>\n"),  # left pending
    ])
    db.commit()
    yield url, db
    db.close()


def handle(db, now: float, limit: int) -> BatchStats:
    """One real batch: the handler adds it to the ledger in the batch's own transaction."""
    return BatchHandler(db, now=lambda: now, batch_size=limit).run_batch()


def test_view_agrees_with_what_the_handler_did(project):
    _, db = project
    ensure_ledger(db)
    first = handle(db, T0 + 100, limit=3)
    second = handle(db, T0 + HOUR + 100, limit=3)
    view = collect(db, "cpu_time", T0, T0 + 3 * HOUR)
    assert view.ledger
    by_hour = {h.hour: h for h in view.hours}
    assert (by_hour[T0].received, by_hour[T0].credited, by_hour[T0].rejected) == (3, 2, 1)
    assert (by_hour[T0 + HOUR].credited, by_hour[T0 + HOUR].rejected) == (1, 2)
    assert (by_hour[T0 + 2 * HOUR].pending, by_hour[T0 + 2 * HOUR].credit) == (1, None)
    assert by_hour[T0].credit == pytest.approx(first.credit) and first.credit > 0
    assert by_hour[T0 + HOUR].credit == pytest.approx(second.credit)
    assert by_hour[T0].cpu_seconds == pytest.approx(first.seconds)
    assert view.credit_total == pytest.approx(first.credit + second.credit)
    expected = first.reasons + second.reasons
    assert view.rejections == {code: n for code, n in expected.items()
                               if code not in view.notes}
    assert set(view.rejections) == {"unknown_result", "negative_value", "malformed_xml"}
    text = render(view)
    assert "unknown_result" in text and "credit granted" in text
    assert f"{first.credit:.2f}" in text


def test_ledger_adds_batches_of_the_same_hour(project):
    _, db = project
    ensure_ledger(db)
    for credited in (2, 3):
        db.begin()
        record_batch(db, "cpu_time", BatchStats(messages=credited, credited=credited,
                                                seconds=10.0, credit=1.5), T0 + 60 * credited)
        db.commit()
    db.begin()
    record_batch(db, "cpu_time", BatchStats(), T0)  # an empty batch adds nothing
    db.commit()
    assert db.query("SELECT batches, messages, credited, cpu_seconds, credit "
                    "FROM trickle_credit_hour") == [(2, 5, 5, 20.0, 3.0)]


def test_without_ledger_credit_is_not_guessed(project):
    _, db = project
    BatchHandler(db, now=lambda: T0 + 100).run_batch()
    db.execute("DROP TABLE trickle_credit_hour")  # a database from before the ledger existed
    view = collect(db, "cpu_time", T0, T0 + 3 * HOUR)
    assert not view.ledger and all(h.credit is None for h in view.hours)
    assert "credit per hour: not recorded" in render(view)


def test_empty_range_is_refused(project):
    with pytest.raises(ValueError, match="empty time range"):
        collect(project[1], "cpu_time", T0, T0)


def test_hour_of():
    assert hour_of(T0 + HOUR - 0.5) == T0


def test_command_line_table_and_json(project, capsys):
    url, db = project
    ensure_ledger(db)
    handle(db, T0 + 100, limit=10)
    assert stats_main(["--db", url, "--hours", "4"], now=T0 + 2 * HOUR + 5) == 0
    table = capsys.readouterr().out
    assert "trickle statistics, variety cpu_time" in table and "negative_value" in table
    assert stats_main(["--db", url, "--json"], now=T0 + 2 * HOUR + 5) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rejections"]["unknown_result"] == 1 and data["credit_total"] > 0


def test_trickle_handler_command_dispatches_stats(project):
    url, db = project
    run = subprocess.run([sys.executable, "-m", "trickle_handler", "stats", "--db", url,
                          "--until", "2023-11-15T01", "--hours", "48"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "trickle statistics, variety cpu_time" in run.stdout
    assert run.stdout.split("total")[1].split()[0] == "7"  # every stored message counted


def test_command_line_errors(tmp_path, capsys):
    assert stats_main(["--db", "postgres://x/y"]) == 1
    assert "unknown scheme" in capsys.readouterr().err
    assert stats_main(["--db", f"sqlite:///{tmp_path}/missing.db"]) == 1
    assert "no database file" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()
    empty = tmp_path / "empty.db"
    empty.touch()
    assert stats_main(["--db", f"sqlite:///{empty}"]) == 1
    assert "no msg_from_host table" in capsys.readouterr().err
    for bad in (["--hours", "0"], ["--until", "yesterday"]):
        with pytest.raises(SystemExit):
            stats_main(bad)

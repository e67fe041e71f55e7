"""The statistics ledger and view on the real MariaDB server (the production dialect).

Two real connections add batches to the same hour at once, as two daemons
sharing the work with ``--mod`` would: the ledger row must hold both.
The database is ours alone (``status_stats_<pid>``) and dropped afterwards.
"""

from __future__ import annotations

import os
import threading

import pytest

from trickle_handler import schema, seed
from trickle_handler.batch import BatchStats
from trickle_handler.db import ConnectionLostError, MySQLDatabase, parse_database_url
from trickle_handler.stats import HOUR, collect, ensure_ledger, record_batch
from trickle_handler.stats import main as stats_main

pytestmark = pytest.mark.mariadb
SERVER = "mysql://root@127.0.0.1:3306"
T0 = 1_700_000_000 // HOUR * HOUR


@pytest.fixture
def mariadb_url():
    name = f"status_stats_{os.getpid()}"
    admin = MySQLDatabase(parse_database_url(f"{SERVER}/mysql"))
    try:
        admin.connect()
    except ConnectionLostError as exc:
        pytest.skip(f"MariaDB is not running on 127.0.0.1:3306 ({exc}); "
                    "scripts/bootstrap.sh --services starts it")
    admin.execute(f"DROP DATABASE IF EXISTS {name}")
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{SERVER}/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


def connect(url):
    db = MySQLDatabase(parse_database_url(url))
    db.connect()
    return db


def test_concurrent_batches_of_one_hour_add_up(mariadb_url, capsys):
    db = connect(mariadb_url)
    schema.create_tables(db)
    ensure_ledger(db)
    ensure_ledger(db)  # idempotent
    db.begin()
    seed.store_messages(db, [seed.StoredMessage(T0 + i, 1, "cpu_time", "<x/>") for i in range(4)])
    db.execute("UPDATE msg_from_host SET handled = 1")
    db.commit()

    def daemon(n: int) -> None:
        conn = connect(mariadb_url)
        try:
            for _ in range(20):
                conn.begin()
                record_batch(conn, "cpu_time", BatchStats(messages=1, credited=1, seconds=60.0,
                                                          credit=0.25), T0 + 100 + n)
                conn.commit()
        finally:
            conn.close()

    threads = [threading.Thread(target=daemon, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    view = collect(db, "cpu_time", T0, T0 + HOUR)
    (hour,) = view.hours
    assert (hour.received, hour.credited, hour.credit, hour.cpu_seconds) == (4, 4, 10.0, 2400.0)
    assert db.query("SELECT batches FROM trickle_credit_hour") == [(40,)]
    db.close()
    assert stats_main(["--db", mariadb_url, "--until", "2023-11-14T22", "--hours", "1"]) == 0
    out = capsys.readouterr().out
    assert "10.00" in out and "0.67" in out  # credit, CPU hours

"""Row locks on real MariaDB: a batch that cannot get its locks is rolled back whole, then retried."""

from __future__ import annotations

import random

import pytest

from tests.integration.trickle_handler.support import build_workload, check_totals, handled_count
from trickle_handler.batch import BatchHandler
from trickle_handler.db import MySQLDatabase, RetryableError, parse_database_url
from trickle_handler.rules import Policy

pytestmark = pytest.mark.mariadb


def test_lock_wait_timeout_rolls_back_the_batch_and_a_retry_completes_it(mariadb_project):
    url, db = mariadb_project
    work = build_workload(random.Random(5), n_hosts=8, results_per_host=2)
    work.store(db)
    # Another program (the validator, say) holds every user row.
    db.begin()
    db.query("SELECT id FROM user ORDER BY id FOR UPDATE")
    daemon_db = MySQLDatabase(parse_database_url(url), lock_wait_timeout=1)
    daemon_db.connect()
    handler = BatchHandler(daemon_db, lambda: 1.8e9, policy=Policy(max_runtime=1e5), batch_size=50)
    try:
        with pytest.raises(RetryableError, match="Lock wait timeout"):
            handler.run_batch()
        db.commit()  # the other program finishes
        assert handled_count(db) == 0  # nothing of the failed batch remains
        assert db.query("SELECT COUNT(*) FROM trickle_result_state")[0][0] == 0
        while handler.run_batch().messages:
            pass
    finally:
        daemon_db.close()
    check_totals(db, work)

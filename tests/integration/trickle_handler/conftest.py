"""Real MariaDB on 127.0.0.1:3306 (root, no password): one scratch database per test.

Databases are named ``trickle_test_<pid>_<n>`` so engineers sharing the server never collide, and
are dropped at teardown even when the test fails.
"""

from __future__ import annotations

import itertools
import os

import pytest

from tests.integration.trickle_handler.support import Daemons
from trickle_handler import schema
from trickle_handler.db import ConnectionLostError, MySQLDatabase, parse_database_url

SERVER = "mysql://root@127.0.0.1:3306"
_counter = itertools.count()


@pytest.fixture(scope="session")
def mariadb_admin():
    admin = MySQLDatabase(parse_database_url(f"{SERVER}/mysql"))
    try:
        admin.connect()
    except ConnectionLostError as exc:
        pytest.skip(
            f"MariaDB is not running on 127.0.0.1:3306 ({exc}); scripts/bootstrap.sh --services starts it"
        )
    yield admin
    admin.close()


@pytest.fixture
def mariadb_project(mariadb_admin):
    """(url string, connected Database) of a fresh database with BOINC's and our tables."""
    name = f"trickle_test_{os.getpid()}_{next(_counter)}"
    mariadb_admin.execute(f"DROP DATABASE IF EXISTS {name}")
    mariadb_admin.execute(f"CREATE DATABASE {name}")
    url = f"{SERVER}/{name}"
    db = MySQLDatabase(parse_database_url(url))
    db.connect()
    schema.create_tables(db)
    yield url, db
    db.close()
    mariadb_admin.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def daemons(tmp_path):
    started = Daemons(tmp_path)
    yield started
    started.kill_all()

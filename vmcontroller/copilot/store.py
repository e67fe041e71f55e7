"""The job manager's durable store: SQLite by default, MariaDB or PostgreSQL at scale.

Open one with :func:`open_store` and a URL::

    sqlite:///var/lib/copilot/jobs.db          (the default, embedded)
    mysql://root@127.0.0.1:3306/copilot        (MariaDB; the database is created)
    postgresql://postgres@127.0.0.1:5432/copilot  (PostgreSQL; created too)

Every change is a compare-and-set on the job's ``version`` (see
:meth:`Store.save`), committed together with its history event, so two
manager processes (or a manager racing its own expiry sweep) can never
both hand out or complete the same attempt.  Tokens are kept as sha256
digests, never in clear.

Calls block.  :attr:`Store.blocking` says whether they wait on a network
database (MariaDB, PostgreSQL: the manager then makes them from a worker
thread, see :mod:`.executor`) or on a local file (SQLite: inline).
"""

# -*- test-case-name: tests.unit.copilot.test_store -*-

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import urllib.parse
from typing import Any

from vmcontroller.copilot.lease import Event, JobRecord
from vmcontroller.copilot.spec import Capabilities, JobSpec, JobState

__all__ = ["Store", "StoreError", "open_store"]

_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DB_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")

_COLUMNS = (
    "id", "owner", "spec", "state", "created", "attempts", "version", "lease_id",
    "lease_token", "lease_agent", "lease_expires", "lease_deadline", "lease_accepted",
    "result", "cores", "memory_mb", "max_run_time", "releases",
)  # fmt: skip

_SELECT = ", ".join(_COLUMNS)

#: What a save may change: the owner, the spec and the submit time never do.
_MUTABLE_ASSIGNMENTS = ", ".join(
    f"{name} = ?" for name in (
        "state", "attempts", "version", "lease_id", "lease_token", "lease_agent",
        "lease_expires", "lease_deadline", "lease_accepted", "result", "releases",
    )
)  # fmt: skip
#: Parsed specs kept per store.
_SPEC_CACHE = 10000


class StoreError(RuntimeError):
    """The store URL is wrong or the database refused us."""


def _schema(auto_increment: str, text: str, double: str = "DOUBLE") -> list[str]:
    return [statement.replace("DOUBLE", double) for statement in [
        "CREATE TABLE IF NOT EXISTS copilot_jobs ("
        " id VARCHAR(32) PRIMARY KEY, owner VARCHAR(64) NOT NULL, spec TEXT NOT NULL,"
        " state VARCHAR(16) NOT NULL, created DOUBLE NOT NULL, attempts INTEGER NOT NULL,"
        " version INTEGER NOT NULL, lease_id VARCHAR(32), lease_token VARCHAR(64),"
        " lease_agent VARCHAR(64), lease_expires DOUBLE, lease_deadline DOUBLE,"
        f" lease_accepted INTEGER NOT NULL, result {text} NOT NULL, cores INTEGER NOT NULL,"
        " memory_mb INTEGER NOT NULL, max_run_time DOUBLE NOT NULL,"
        " releases INTEGER NOT NULL DEFAULT 0)",
        "CREATE INDEX IF NOT EXISTS copilot_jobs_state ON copilot_jobs (state, created)",
        "CREATE INDEX IF NOT EXISTS copilot_jobs_owner ON copilot_jobs (owner, created)",
        "CREATE INDEX IF NOT EXISTS copilot_jobs_token ON copilot_jobs (lease_token)",
        f"CREATE TABLE IF NOT EXISTS copilot_events (n {auto_increment},"
        " job_id VARCHAR(32) NOT NULL, at DOUBLE NOT NULL, state VARCHAR(16) NOT NULL,"
        " detail TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS copilot_events_job ON copilot_events (job_id, n)",
        "CREATE TABLE IF NOT EXISTS copilot_users (name VARCHAR(64) PRIMARY KEY,"
        " token_sha256 CHAR(64) NOT NULL UNIQUE)",
    ]]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Store:
    """Jobs, their history and the users' tokens in one SQL database.

    :param connection: a DB-API connection (autocommit off), used by one
        thread at a time.
    :param paramstyle: ``qmark`` (sqlite3) or ``format`` (PyMySQL).
    :param blocking: calls wait on a database server (see :mod:`.executor`).
    """

    def __init__(
        self, connection: Any, paramstyle: str, schema: list[str], blocking: bool = False
    ) -> None:
        self.connection = connection
        self.blocking = blocking
        self._format = paramstyle == "format"
        self._specs: dict[str, JobSpec] = {}
        with self._transaction() as cursor:
            for statement in schema:
                cursor.execute(statement)
        self._add_releases_column()

    # --- plumbing --------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self._format else statement

    class _Tx:
        def __init__(self, store: Store) -> None:
            self.store = store

        def __enter__(self) -> Any:
            self.cursor = self.store.connection.cursor()
            return self.cursor

        def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
            try:
                if kind is None:
                    self.store.connection.commit()
                else:
                    self.store.connection.rollback()
            finally:
                self.cursor.close()

    def _transaction(self) -> Store._Tx:
        return Store._Tx(self)

    def _add_releases_column(self) -> None:
        """Give a table made before ``releases`` existed that column (counted from 0)."""
        try:
            self._query("SELECT releases FROM copilot_jobs WHERE 1 = 0")
        except Exception:  # each driver names "no such column" its own way
            with self._transaction() as cursor:
                cursor.execute(
                    "ALTER TABLE copilot_jobs ADD COLUMN releases INTEGER NOT NULL DEFAULT 0"
                )

    def _query(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._transaction() as cursor:
            cursor.execute(self._sql(statement), params)
            return list(cursor.fetchall())

    def close(self) -> None:
        self.connection.close()

    # --- users -----------------------------------------------------------------

    def add_user(self, name: str) -> str:
        """Create ``name`` (or give it a new token); returns the token, shown once."""
        if not isinstance(name, str) or not _USER.fullmatch(name):
            raise StoreError(
                f"invalid user name {name!r}: 1-64 letters, digits, '_', '.' or '-'"
            )
        token = secrets.token_urlsafe(24)
        with self._transaction() as cursor:
            cursor.execute(self._sql("DELETE FROM copilot_users WHERE name = ?"), (name,))
            cursor.execute(
                self._sql("INSERT INTO copilot_users (name, token_sha256) VALUES (?, ?)"),
                (name, _digest(token)),
            )
        return token

    def user_for_token(self, token: str) -> str | None:
        """The user a token belongs to, or None."""
        rows = self._query(
            "SELECT name FROM copilot_users WHERE token_sha256 = ?", (_digest(token),)
        )
        return rows[0][0] if rows else None

    # --- jobs ------------------------------------------------------------------

    @staticmethod
    def _row(job: JobRecord) -> tuple[Any, ...]:
        return (
            job.id, job.owner, json.dumps(job.spec.to_dict()), str(job.state), job.created,
            job.attempts, job.version, job.lease_id, job.lease_token, job.lease_agent,
            job.lease_expires, job.lease_deadline, int(job.lease_accepted),
            json.dumps(job.result), job.spec.cores, job.spec.memory_mb, job.spec.max_run_time,
            job.releases,
        )  # fmt: skip

    def _spec(self, text: str) -> JobSpec:
        """Parse a stored spec, once: specs never change, and dispatch loads them often."""
        spec = self._specs.get(text)
        if spec is None:
            if len(self._specs) >= _SPEC_CACHE:
                self._specs.clear()
            spec = self._specs[text] = JobSpec.from_dict(json.loads(text))
        return spec

    def _record(self, row: tuple[Any, ...]) -> JobRecord:
        # Unpacked in _COLUMNS order (no name -> value dict: every dispatch step loads a job).
        (job_id, owner, spec, state, created, attempts, version, lease_id, lease_token,
         lease_agent, lease_expires, lease_deadline, lease_accepted, result, _, _, _,
         releases) = row  # fmt: skip
        return JobRecord(
            id=job_id, owner=owner, spec=self._spec(spec), state=JobState(state),
            created=float(created), attempts=int(attempts), version=int(version),
            lease_id=lease_id, lease_token=lease_token, lease_agent=lease_agent,
            lease_expires=lease_expires, lease_deadline=lease_deadline,
            lease_accepted=bool(lease_accepted),
            result={} if result == "{}" else json.loads(result), releases=int(releases),
        )  # fmt: skip

    def _add_event(self, cursor: Any, job_id: str, event: Event) -> None:
        cursor.execute(
            self._sql("INSERT INTO copilot_events (job_id, at, state, detail) VALUES (?, ?, ?, ?)"),
            (job_id, event.at, str(event.state), event.detail),
        )

    def insert(self, job: JobRecord, event: Event) -> None:
        """Store a new job and its first history event."""
        marks = ", ".join("?" * len(_COLUMNS))
        with self._transaction() as cursor:
            cursor.execute(
                self._sql(f"INSERT INTO copilot_jobs ({', '.join(_COLUMNS)}) VALUES ({marks})"),
                self._row(job),
            )
            self._add_event(cursor, job.id, event)

    def save(self, job: JobRecord, expected_version: int, event: Event | None = None) -> bool:
        """Write ``job`` if the stored copy still has ``expected_version``.

        :returns: False when someone else changed the job first (nothing written).
        """
        with self._transaction() as cursor:
            cursor.execute(
                self._sql(f"UPDATE copilot_jobs SET {_MUTABLE_ASSIGNMENTS}"
                          " WHERE id = ? AND version = ?"),
                (
                    str(job.state), job.attempts, job.version, job.lease_id, job.lease_token,
                    job.lease_agent, job.lease_expires, job.lease_deadline,
                    int(job.lease_accepted), json.dumps(job.result), job.releases, job.id,
                    expected_version,
                ),
            )
            if cursor.rowcount != 1:
                return False
            if event is not None:
                self._add_event(cursor, job.id, event)
        return True

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._query(f"SELECT {_SELECT} FROM copilot_jobs WHERE id = ?", (job_id,))
        return self._record(rows[0]) if rows else None

    def by_lease_token(self, token: str) -> JobRecord | None:
        """The job whose current lease has this secret token."""
        rows = self._query(
            f"SELECT {', '.join(_COLUMNS)} FROM copilot_jobs WHERE lease_token = ?", (token,)
        )
        return self._record(rows[0]) if rows else None

    def jobs_of(self, owner: str, limit: int = 1000) -> list[JobRecord]:
        """``owner``'s jobs, oldest first."""
        rows = self._query(
            f"SELECT {', '.join(_COLUMNS)} FROM copilot_jobs WHERE owner = ?"
            f" ORDER BY created, id LIMIT {int(limit)}",
            (owner,),
        )
        return [self._record(row) for row in rows]

    def candidates(self, caps: Capabilities, now: float, limit: int = 8) -> list[JobRecord]:
        """Queued jobs without a live offer that fit ``caps``, oldest first."""
        rows = self._query(
            f"SELECT {', '.join(_COLUMNS)} FROM copilot_jobs WHERE state = ?"
            " AND (lease_id IS NULL OR lease_expires <= ?)"
            " AND cores <= ? AND memory_mb <= ? AND max_run_time <= ?"
            f" ORDER BY created, id LIMIT {int(limit)}",
            (str(JobState.QUEUED), now, caps.cores, caps.memory_mb, caps.max_run_time),
        )
        return [self._record(row) for row in rows]

    def expired(self, now: float, limit: int = 100) -> list[JobRecord]:
        """Jobs holding a lease that ran out at or before ``now``."""
        rows = self._query(
            f"SELECT {', '.join(_COLUMNS)} FROM copilot_jobs WHERE lease_id IS NOT NULL"
            f" AND lease_expires <= ? AND state IN (?, ?) LIMIT {int(limit)}",
            (now, str(JobState.QUEUED), str(JobState.RUNNING)),
        )
        return [self._record(row) for row in rows]

    def history(self, job_id: str) -> list[Event]:
        rows = self._query(
            "SELECT at, state, detail FROM copilot_events WHERE job_id = ? ORDER BY n", (job_id,)
        )
        return [Event(float(at), state, detail) for at, state, detail in rows]


#: WAL bytes between automatic checkpoints (SQLite's default: 1000 pages of 4 KiB).
_WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024


def _tune_sqlite(connection: sqlite3.Connection) -> None:
    """Durable against a crash of the manager, and cheap per commit.

    WAL with ``synchronous=NORMAL``: a commit is a write() into the WAL, so a
    committed job survives a SIGKILL of the manager (the kernel has the data;
    the next open replays the WAL); only an OS crash or power loss may lose
    the last commits.  ``FULL`` would fsync on every commit (measured: 3x the
    cost per commit) for a guarantee this process does not need.

    1 KiB pages (taken only by a new, empty database; an existing one keeps
    its size): a dispatch commit dirties ~5 pages of two tables and three
    indexes, each written whole to the WAL and again at the checkpoint, and
    the checkpoint's writes and fsync are what a commit waits on.  Measured
    with 2000 jobs (offer, accept, done): 95 -> 29 KiB written per job, and
    with the checkpoint interval kept at 4 MiB of WAL, 1.2 -> 0.7 ms of
    store time per job.
    """
    connection.execute("PRAGMA page_size=1024")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=5000")
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    connection.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_BYTES // page_size}")


def open_store(url: str) -> Store:
    """Open (and create the tables of) the store named by ``url`` (see module doc)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "sqlite":
        path = parsed.path or ":memory:"
        if parsed.netloc:
            raise StoreError(f"store URL {url!r}: use sqlite:///ABSOLUTE/PATH (three slashes)")
        try:
            # check_same_thread off: with --store-thread on, the worker thread uses
            # the connection opened here (never two threads at once).
            connection = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
            _tune_sqlite(connection)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open SQLite store {path}: {error}") from None
        return Store(connection, "qmark", _schema("INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT"))
    if parsed.scheme in ("mysql", "mariadb"):
        import pymysql

        database = parsed.path.lstrip("/")
        if not _DB_NAME.fullmatch(database):
            raise StoreError(f"store URL {url!r}: name a database (letters, digits, '_')")
        try:
            connection = pymysql.connect(
                host=parsed.hostname or "127.0.0.1",
                port=parsed.port or 3306,
                user=urllib.parse.unquote(parsed.username or "root"),
                password=urllib.parse.unquote(parsed.password or ""),
                autocommit=False,
                charset="utf8mb4",
            )
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
                cursor.execute(f"USE `{database}`")
            connection.commit()
        except pymysql.MySQLError as error:
            raise StoreError(f"cannot open MariaDB store {url}: {error}") from None
        return Store(
            connection, "format", _schema("BIGINT AUTO_INCREMENT PRIMARY KEY", "MEDIUMTEXT"),
            blocking=True,
        )
    if parsed.scheme in ("postgresql", "postgres"):
        return _open_postgresql(url, parsed)
    raise StoreError(
        f"unknown store URL {url!r}: use sqlite:///PATH, mysql://USER@HOST:PORT/DB "
        "or postgresql://USER@HOST:PORT/DB"
    )


def _open_postgresql(url: str, parsed: urllib.parse.SplitResult) -> Store:
    import psycopg

    database = parsed.path.lstrip("/")
    if not _DB_NAME.fullmatch(database):
        raise StoreError(f"store URL {url!r}: name a database (letters, digits, '_')")
    params = dict(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 5432,
        user=urllib.parse.unquote(parsed.username or "postgres"),
        password=urllib.parse.unquote(parsed.password or ""),
    )
    try:
        with psycopg.connect(dbname="postgres", autocommit=True, **params) as admin:
            exists = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if not exists:
                admin.execute(f'CREATE DATABASE "{database}"')
        connection = psycopg.connect(dbname=database, autocommit=False, **params)
    except psycopg.Error as error:
        raise StoreError(f"cannot open PostgreSQL store {url}: {error}") from None
    return Store(
        connection, "format", _schema("BIGSERIAL PRIMARY KEY", "TEXT", "DOUBLE PRECISION"),
        blocking=True,
    )

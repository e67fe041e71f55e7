"""One small database abstraction over MariaDB/MySQL (PyMySQL) and SQLite (the embedded default).

The daemon's queries are written once, with ``?`` placeholders; each backend adapts the few places
where the dialects differ (placeholders, ``FOR UPDATE``, upserts, how a transaction starts) and
sorts driver exceptions into the two kinds the daemon reacts to:

- :class:`RetryableError`: a deadlock, a lock-wait timeout, a busy SQLite file. The transaction was
  rolled back; run the batch again.
- :class:`ConnectionLostError`: the server went away. Reconnect with backoff; the open transaction
  was rolled back by the server, so nothing was half-written.

Anything else is a bug or a broken schema and propagates.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql

Row = tuple[Any, ...]


class DatabaseError(Exception):
    """Base of the errors the daemon handles itself."""


class RetryableError(DatabaseError):
    """The transaction lost a lock race and was rolled back; running it again is safe."""


class ConnectionLostError(DatabaseError):
    """The connection is gone (or could not be made); reconnect with backoff."""


class BadDatabaseURL(ValueError):
    """A ``--db`` value this daemon cannot use."""


@dataclass(frozen=True)
class DatabaseURL:
    """Where the project database is: ``mysql://user:pw@host:port/db`` or ``sqlite:///path``.

    SQLite paths follow SQLAlchemy: ``sqlite:///rel.db`` is relative, ``sqlite:////abs.db``
    absolute.
    """

    scheme: str  # "mysql" or "sqlite"
    database: str  # db name, or the file path for sqlite
    host: str = "localhost"
    port: int = 3306
    user: str = ""
    password: str = ""

    def redacted(self) -> str:
        """The URL without its password, for logs."""
        if self.scheme == "sqlite":
            return f"sqlite:///{self.database}"  # an absolute path gives the four slashes
        return f"mysql://{self.user}@{self.host}:{self.port}/{self.database}"


def parse_database_url(url: str) -> DatabaseURL:
    """Parse a ``--db`` URL; raise :class:`BadDatabaseURL` naming what is wrong and the valid forms."""
    forms = "use mysql://user:password@host:port/dbname or sqlite:///path/to/file.db"
    parts = urlsplit(url)
    if parts.scheme in ("mysql", "mariadb"):
        name = unquote(parts.path.lstrip("/"))
        if not name or "/" in name:
            raise BadDatabaseURL(f"--db {url!r} names no database; {forms}")
        if parse_qs(parts.query):
            raise BadDatabaseURL(f"--db {url!r}: query parameters are not supported; {forms}")
        try:
            port = parts.port or 3306
        except ValueError as exc:
            raise BadDatabaseURL(f"--db {url!r}: bad port ({exc}); {forms}") from None
        return DatabaseURL(
            "mysql",
            name,
            host=parts.hostname or "localhost",
            port=port,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
        )
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path or parts.path == "/":
            raise BadDatabaseURL(
                f"--db {url!r}: a sqlite URL has three slashes and a path; {forms}"
            )
        # As SQLAlchemy spells it: sqlite:///relative.db, sqlite:////absolute/path.db
        return DatabaseURL("sqlite", parts.path[1:])
    raise BadDatabaseURL(f"--db {url!r}: unknown scheme {parts.scheme!r}; {forms}")


def placeholders(n: int) -> str:
    """``?, ?, ?`` for an ``IN (...)`` list of ``n`` values."""
    if n <= 0:
        raise ValueError("an IN list needs at least one value")
    return ", ".join("?" * n)


class Database:
    """A connection to the project database with the daemon's dialect helpers.

    Subclasses implement :meth:`connect`, :meth:`_translate`, :meth:`_classify` and the dialect
    attributes. All methods may raise :class:`RetryableError` or :class:`ConnectionLostError`.
    """

    #: SQL appended to a SELECT that must lock its rows until commit.
    for_update: str = ""

    def __init__(self, url: DatabaseURL) -> None:
        self.url = url
        self._conn: Any = None
        #: Called with each SQL statement before it runs (``-d 4`` prints them, like BOINC).
        self.trace: Any = None

    # -- connection --
    def connect(self) -> None:
        """Open the connection (closing any old one first)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection; never raises."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a dead connection may fail to close; it is gone anyway
                pass

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # -- statements --
    def begin(self) -> None:
        """Start a transaction."""
        self.execute("START TRANSACTION")

    def commit(self) -> None:
        self._guard(lambda: self._conn.commit())

    def rollback(self) -> None:
        """Roll back; a lost connection is ignored here (the server rolled back already)."""
        if self._conn is None:
            return
        try:
            self._conn.rollback()
        except Exception:  # noqa: BLE001 - see docstring
            self.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""

        def run() -> int:
            cur = self._conn.cursor()
            try:
                cur.execute(self._translate(sql), params)
                return cur.rowcount
            finally:
                cur.close()

        self._trace(sql)
        return self._guard(run)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one SELECT; return all rows as tuples."""

        def run() -> list[Row]:
            cur = self._conn.cursor()
            try:
                cur.execute(self._translate(sql), params)
                return list(cur.fetchall())
            finally:
                cur.close()

        self._trace(sql)
        return self._guard(run)

    def table_exists(self, table: str) -> bool:
        """True when ``table`` exists in this database."""
        raise NotImplementedError

    def insert_many(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        """Insert ``rows`` in one multi-row statement."""
        rows = list(rows)
        if rows:
            self.execute(self._values_sql("INSERT INTO", table, columns, len(rows)), _flat(rows))

    def upsert_many(
        self, table: str, columns: Sequence[str], key: str, rows: Iterable[Sequence[Any]]
    ) -> None:
        """Insert ``rows``, replacing every non-key column of rows whose ``key`` exists."""
        raise NotImplementedError

    # -- internals --
    def _values_sql(self, verb: str, table: str, columns: Sequence[str], n: int) -> str:
        one = "(" + placeholders(len(columns)) + ")"
        return f"{verb} {table} ({', '.join(columns)}) VALUES " + ", ".join([one] * n)

    def _translate(self, sql: str) -> str:
        return sql

    def _classify(self, exc: Exception) -> type[DatabaseError] | None:
        raise NotImplementedError

    def _trace(self, sql: str) -> None:
        if self.trace is not None:
            self.trace(sql)

    def _guard(self, func: Any) -> Any:
        if self._conn is None:
            raise ConnectionLostError("not connected")
        try:
            return func()
        except Exception as exc:
            kind = self._classify(exc)
            if kind is None:
                raise
            if kind is ConnectionLostError:
                self.close()
            raise kind(f"{type(exc).__name__}: {exc}") from exc


def _flat(rows: Iterable[Sequence[Any]]) -> list[Any]:
    return [value for row in rows for value in row]


#: MySQL/MariaDB error numbers (include/mysqld_error.h, errmsg.h).
_MYSQL_RETRY = {1205, 1213}  # lock wait timeout, deadlock
_MYSQL_LOST = {2002, 2003, 2005, 2006, 2013, 2014, 2055, 1927, 1053, 1077, 1078, 1079, 1080}


class MySQLDatabase(Database):
    """MariaDB/MySQL through PyMySQL: READ COMMITTED, explicit transactions, row locks."""

    for_update = " FOR UPDATE"

    def __init__(self, url: DatabaseURL, connect_timeout: float = 10, lock_wait_timeout: int = 20):
        super().__init__(url)
        self.connect_timeout = connect_timeout
        self.lock_wait_timeout = lock_wait_timeout
        self._sql_cache: dict[str, str] = {}

    def connect(self) -> None:
        self.close()
        try:
            self._conn = pymysql.connect(
                host=self.url.host,
                port=self.url.port,
                user=self.url.user,
                password=self.url.password,
                database=self.url.database,
                connect_timeout=self.connect_timeout,
                autocommit=False,
                charset="utf8mb4",
            )
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] in _MYSQL_LOST:
                raise ConnectionLostError(str(exc)) from exc
            raise
        # READ COMMITTED: no gap locks, and rows a scan skips are not kept locked, so daemons
        # started with different --mod values never wait for each other's messages.
        self.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        self.execute(f"SET SESSION innodb_lock_wait_timeout = {int(self.lock_wait_timeout)}")
        self.commit()

    def table_exists(self, table: str) -> bool:
        rows = self.query(
            "SELECT COUNT(*) FROM information_schema.tables"
            " WHERE table_schema = DATABASE() AND table_name = ?",
            [table],
        )
        return bool(rows[0][0])

    def upsert_many(
        self, table: str, columns: Sequence[str], key: str, rows: Iterable[Sequence[Any]]
    ) -> None:
        rows = list(rows)
        if not rows:
            return
        update = ", ".join(f"{c} = VALUES({c})" for c in columns if c != key)
        sql = self._values_sql("INSERT INTO", table, columns, len(rows))
        self.execute(f"{sql} ON DUPLICATE KEY UPDATE {update}", _flat(rows))

    def _translate(self, sql: str) -> str:
        out = self._sql_cache.get(sql)
        if out is None:
            out = sql.replace("%", "%%").replace("?", "%s")
            if len(self._sql_cache) < 512:
                self._sql_cache[sql] = out
        return out

    def _classify(self, exc: Exception) -> type[DatabaseError] | None:
        if isinstance(exc, pymysql.err.InterfaceError):
            return ConnectionLostError
        if isinstance(exc, pymysql.err.MySQLError) and exc.args:
            code = exc.args[0]
            if code in _MYSQL_RETRY:
                return RetryableError
            if code in _MYSQL_LOST:
                return ConnectionLostError
        if isinstance(exc, (ConnectionError, BrokenPipeError, TimeoutError)):
            return ConnectionLostError
        return None


class SQLiteDatabase(Database):
    """An SQLite file: one writer at a time (``BEGIN IMMEDIATE``), WAL so readers never block."""

    def __init__(self, url: DatabaseURL, busy_timeout: float = 10) -> None:
        super().__init__(url)
        self.busy_timeout = busy_timeout

    def connect(self) -> None:
        self.close()
        try:
            conn = sqlite3.connect(
                self.url.database, timeout=self.busy_timeout, isolation_level=None
            )
        except sqlite3.OperationalError as exc:
            raise ConnectionLostError(f"cannot open {self.url.database}: {exc}") from exc
        self._conn = conn
        if self.url.database != ":memory:":
            self.query("PRAGMA journal_mode=WAL")

    def begin(self) -> None:
        # IMMEDIATE takes the write lock now, so two daemons serialize here instead of failing
        # at their first write with a transaction they cannot upgrade.
        self.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                self.close()

    def table_exists(self, table: str) -> bool:
        rows = self.query(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?", [table]
        )
        return bool(rows[0][0])

    def upsert_many(
        self, table: str, columns: Sequence[str], key: str, rows: Iterable[Sequence[Any]]
    ) -> None:
        rows = list(rows)
        if not rows:
            return
        update = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
        sql = self._values_sql("INSERT INTO", table, columns, len(rows))
        self.execute(f"{sql} ON CONFLICT ({key}) DO UPDATE SET {update}", _flat(rows))

    def _classify(self, exc: Exception) -> type[DatabaseError] | None:
        if isinstance(exc, sqlite3.OperationalError):
            text = str(exc).lower()
            if "locked" in text or "busy" in text:
                return RetryableError
            if "disk i/o" in text or "unable to open" in text:
                return ConnectionLostError
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc).lower():
            return ConnectionLostError
        return None


def open_database(url: DatabaseURL) -> Database:
    """A (not yet connected) :class:`Database` for ``url``."""
    if url.scheme == "mysql":
        return MySQLDatabase(url)
    if url.scheme == "sqlite":
        return SQLiteDatabase(url)
    raise BadDatabaseURL(f"unknown database scheme {url.scheme!r}")

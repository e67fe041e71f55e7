"""Fill a project database the way BOINC's server does, for tests, benchmarks and the demo.

:func:`scheduler_xml` and :func:`store_messages` reproduce what the scheduler's
``handle_msgs_from_host`` writes into ``msg_from_host`` (``../shared/credit_rules.md`` section 1):
every line of the client's element except ``<variety>``, the variety in its own column,
``handled = 0``, ``create_time`` on the server's clock and the authenticated ``hostid``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from trickle_handler.db import Database
from trickle_handler.rules import RESULT_SERVER_STATE_IN_PROGRESS

_ROWS_PER_INSERT = 1000


def scheduler_xml(result_name: str, client_time: int, body: str) -> str:
    """``msg_from_host.xml`` for a client message: its two header lines, then the body lines.

    ``body`` is the app's ``trickle_up.xml`` without the ``<variety>`` line, e.g.
    ``"<cpu_time>3600.000000</cpu_time>\\n"``. The client indents its own lines by six spaces.
    """
    return (
        f"      <result_name>{result_name}</result_name>\n      <time>{client_time}</time>\n{body}"
    )


@dataclass(frozen=True)
class StoredMessage:
    """A row for ``msg_from_host``, as the scheduler inserts it."""

    create_time: int
    hostid: int
    variety: str
    xml: str


def _insert(
    db: Database, table: str, columns: Sequence[str], rows: Iterable[Sequence[object]]
) -> None:
    batch: list[Sequence[object]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == _ROWS_PER_INSERT:
            db.insert_many(table, columns, batch)
            batch = []
    db.insert_many(table, columns, batch)


def store_messages(db: Database, messages: Iterable[StoredMessage]) -> None:
    """Insert ``messages`` with ``handled = 0`` (autocommitted by the caller's transaction)."""
    _insert(
        db,
        "msg_from_host",
        ("create_time", "hostid", "variety", "handled", "xml"),
        ((m.create_time, m.hostid, m.variety, 0, m.xml) for m in messages),
    )


def add_teams(db: Database, ids: Iterable[int]) -> None:
    """Teams with no credit yet."""
    _insert(db, "team", ("id", "name"), ((i, f"team{i}") for i in ids))


def add_users(db: Database, users: Iterable[tuple[int, int]]) -> None:
    """Users (id, teamid) with no credit yet."""
    _insert(db, "user", ("id", "name", "teamid"), ((i, f"user{i}", t) for i, t in users))


def add_hosts(db: Database, hosts: Iterable[tuple[int, int, int, float]]) -> None:
    """Hosts (id, userid, p_ncpus, p_fpops) with no credit yet."""
    _insert(db, "host", ("id", "userid", "p_ncpus", "p_fpops"), hosts)


def add_results(
    db: Database,
    results: Iterable[tuple[int, str, int, int, int]],
    server_state: int = RESULT_SERVER_STATE_IN_PROGRESS,
) -> None:
    """Results (id, name, hostid, userid, sent_time) in ``server_state`` (default: in progress)."""
    _insert(
        db,
        "result",
        ("id", "name", "hostid", "userid", "sent_time", "server_state"),
        ((i, n, h, u, s, server_state) for i, n, h, u, s in results),
    )

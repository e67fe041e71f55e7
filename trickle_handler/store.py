"""The daemon's SQL: read pending messages and the rows they name, write credit and state.

Every function runs inside the caller's transaction (see :mod:`trickle_handler.batch`). Rows that
will be written are read with ``FOR UPDATE`` in one fixed order — messages, result state, host,
user, team, each by ascending id — so daemons sharing the work (``--mod``) cannot deadlock each
other (only user and team rows are shared between them, and those are locked last); a deadlock with another program (the validator also updates user and team) surfaces as
:class:`~trickle_handler.db.RetryableError` and the batch is run again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from trickle_handler.credit import (
    PERCENTILE_MIN_EXPAVG,
    Average,
    SpeedPercentiles,
    percentile_index,
)
from trickle_handler.db import Database, placeholders
from trickle_handler.rules import HostRow, Message, ResultCredit, ResultRow

#: Rows per IN list / multi-row statement; keeps statements well under max_allowed_packet.
CHUNK = 1000

#: Rows per ``CASE id WHEN ...`` update: the server tries each WHEN in turn for every row, so the
#: cost grows with the square of this; 100 took about 25 % less time than 1000 on MariaDB 10.11.
CASE_CHUNK = 100

#: ``msg_from_host.handled`` for a message that earned credit or needed none, and for a rejected one.
HANDLED_OK = 1
HANDLED_REJECTED = 2


@dataclass
class Account:
    """A host, user or team row's credit, changed in memory during a batch."""

    id: int
    average: Average
    link: int = 0  # host: userid; user: teamid; team: unused
    added: float = 0.0  # credit granted in this batch (added to total_credit)
    changed: bool = False


def _chunks(values: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def fetch_pending(
    db: Database, variety: str, limit: int, mod: tuple[int, int] | None = None
) -> list[Message]:
    """Up to ``limit`` unhandled messages of ``variety``, oldest id first (not locked)."""
    sql = "SELECT id, create_time, hostid, xml FROM msg_from_host WHERE handled = 0 AND variety = ?"
    params: list[Any] = [variety]
    if mod is not None:
        sql += " AND hostid % ? = ?"
        params += list(mod)
    sql += " ORDER BY id LIMIT ?"
    params.append(limit)
    return [Message(int(i), int(c), int(h), x) for i, c, h, x in db.query(sql, params)]


def claim(db: Database, ids: Sequence[int]) -> int:
    """Mark ``ids`` handled if nobody did yet; returns how many this transaction claimed.

    The row locks taken here are held to commit, so a second daemon reaching the same messages
    waits, then finds them handled.
    """
    claimed = 0
    for part in _chunks(sorted(ids)):
        claimed += db.execute(
            f"UPDATE msg_from_host SET handled = {HANDLED_OK}"
            f" WHERE id IN ({placeholders(len(part))}) AND handled = 0",
            part,
        )
    return claimed


def mark_rejected(db: Database, ids: Sequence[int]) -> None:
    """Set ``handled`` to :data:`HANDLED_REJECTED` for messages that earned nothing."""
    for part in _chunks(sorted(ids)):
        db.execute(
            f"UPDATE msg_from_host SET handled = {HANDLED_REJECTED}"
            f" WHERE id IN ({placeholders(len(part))})",
            part,
        )


def results_by_name(db: Database, names: Iterable[str]) -> dict[str, ResultRow]:
    """The named results that exist (not locked: the scheduler owns these rows)."""
    found: dict[str, ResultRow] = {}
    for part in _chunks(sorted(set(names))):
        rows = db.query(
            "SELECT id, name, hostid, server_state, outcome, sent_time, received_time"
            f" FROM result WHERE name IN ({placeholders(len(part))})",
            part,
        )
        for row in rows:
            result = ResultRow(*(int(v) if i != 1 else v for i, v in enumerate(row)))
            found[result.name] = result
    return found


def lock_states(
    db: Database, results: dict[int, int], with_runtime: set[int]
) -> dict[int, ResultCredit]:
    """Our state for ``results`` (resultid -> hostid), locked; new ones start at zero.

    ``with_runtime`` lists the results whose ``<runtime>`` client times must be loaded.
    """
    states = {rid: ResultCredit(rid, hostid) for rid, hostid in results.items()}
    ids = sorted(results)
    for part in _chunks(ids):
        rows = db.query(
            "SELECT resultid, credited_cpu, last_credit_time, granted_credit, ntrickles"
            f" FROM trickle_result_state WHERE resultid IN ({placeholders(len(part))})"
            f" ORDER BY resultid{db.for_update}",
            part,
        )
        for rid, cpu, last, granted, n in rows:
            state = states[int(rid)]
            state.credited_cpu, state.last_credit_time = float(cpu), int(last)
            state.granted_credit, state.ntrickles = float(granted), int(n)
    for part in _chunks(sorted(with_runtime)):
        rows = db.query(
            "SELECT resultid, client_time FROM trickle_runtime_seen"
            f" WHERE resultid IN ({placeholders(len(part))})",
            part,
        )
        for rid, client_time in rows:
            states[int(rid)].runtime_times.add(float(client_time))
    return states


def _lock_accounts(db: Database, table: str, link: str, ids: Iterable[int]) -> dict[int, Account]:
    found: dict[int, Account] = {}
    for part in _chunks(sorted(set(ids))):
        rows = db.query(
            f"SELECT id, expavg_credit, expavg_time, {link} FROM {table}"
            f" WHERE id IN ({placeholders(len(part))}) ORDER BY id{db.for_update}",
            part,
        )
        for i, avg, when, linked in rows:
            found[int(i)] = Account(int(i), Average(float(avg), float(when)), int(linked))
    return found


def lock_hosts(db: Database, ids: Iterable[int]) -> tuple[dict[int, HostRow], dict[int, Account]]:
    """The hosts' speed fields and credit accounts, locked."""
    rows_by_id: dict[int, HostRow] = {}
    accounts: dict[int, Account] = {}
    for part in _chunks(sorted(set(ids))):
        rows = db.query(
            "SELECT id, userid, p_ncpus, p_fpops, expavg_credit, expavg_time FROM host"
            f" WHERE id IN ({placeholders(len(part))}) ORDER BY id{db.for_update}",
            part,
        )
        for i, userid, ncpus, fpops, avg, when in rows:
            rows_by_id[int(i)] = HostRow(int(i), int(userid), int(ncpus), float(fpops))
            accounts[int(i)] = Account(int(i), Average(float(avg), float(when)), int(userid))
    return rows_by_id, accounts


def user_teams(db: Database, ids: Iterable[int]) -> dict[int, int]:
    """userid -> teamid of the users that exist (not locked; see :func:`lock_users`)."""
    found: dict[int, int] = {}
    for part in _chunks(sorted(set(ids))):
        rows = db.query(
            f"SELECT id, teamid FROM user WHERE id IN ({placeholders(len(part))})", part
        )
        found.update((int(i), int(t)) for i, t in rows)
    return found


def lock_users(db: Database, ids: Iterable[int]) -> dict[int, Account]:
    """The users' credit accounts (``link`` = teamid), locked."""
    return _lock_accounts(db, "user", "teamid", ids)


def lock_teams(db: Database, ids: Iterable[int]) -> dict[int, Account]:
    """The teams' credit accounts, locked."""
    return _lock_accounts(db, "team", "0", ids)


def save_accounts(db: Database, table: str, accounts: Iterable[Account]) -> None:
    """Add each changed account's batch credit to ``total_credit`` and store its new average."""
    changed = sorted((a for a in accounts if a.changed), key=lambda a: a.id)
    for part in _chunks(changed, CASE_CHUNK):
        cases = " ".join(["WHEN ? THEN ?"] * len(part))
        params: list[Any] = []
        for a in part:
            params += [a.id, a.added]
        for a in part:
            params += [a.id, a.average.credit]
        for a in part:
            params += [a.id, a.average.time]
        params += [a.id for a in part]
        db.execute(
            f"UPDATE {table} SET"
            f" total_credit = total_credit + (CASE id {cases} END),"
            f" expavg_credit = (CASE id {cases} END),"
            f" expavg_time = (CASE id {cases} END)"
            f" WHERE id IN ({placeholders(len(part))})",
            params,
        )


def save_states(db: Database, states: Iterable[ResultCredit]) -> None:
    """Write the result states changed in this batch, and their new ``<runtime>`` client times."""
    dirty = sorted((s for s in states if s.dirty), key=lambda s: s.resultid)
    columns = (
        "resultid",
        "hostid",
        "credited_cpu",
        "last_credit_time",
        "granted_credit",
        "ntrickles",
    )
    for part in _chunks(dirty):
        db.upsert_many(
            "trickle_result_state",
            columns,
            "resultid",
            [
                (
                    s.resultid,
                    s.hostid,
                    s.credited_cpu,
                    s.last_credit_time,
                    s.granted_credit,
                    s.ntrickles,
                )
                for s in part
            ],
        )
    seen = [(s.resultid, t, msgid) for s in dirty for t, msgid in s.new_runtime]
    for part in _chunks(seen):
        db.insert_many("trickle_runtime_seen", ("resultid", "client_time", "msgid"), part)


def save_reasons(db: Database, rows: Sequence[tuple[int, str, int, int, str]]) -> None:
    """Insert (msgid, reason, hostid, create_time, detail) rows into ``trickle_reason``."""
    for part in _chunks(rows):
        db.insert_many(
            "trickle_reason", ("msgid", "reason", "hostid", "create_time", "detail"), part
        )


def load_percentiles(db: Database) -> SpeedPercentiles:
    """The 50th/95th percentile of ``p_fpops`` over hosts with ``expavg_credit`` above 10.

    Counted first, then two single-row reads (``LIMIT 1 OFFSET m``), like BOINC, so a project with
    a million hosts does not ship every row to the daemon.
    """
    where = f"FROM host WHERE expavg_credit > {PERCENTILE_MIN_EXPAVG}"
    n = int(db.query(f"SELECT COUNT(*) {where}")[0][0])
    if n == 0:
        return SpeedPercentiles(0.0, 0.0, 0)

    def at(pct: int) -> float:
        offset = percentile_index(n, pct)
        row = db.query(f"SELECT p_fpops {where} ORDER BY p_fpops LIMIT 1 OFFSET ?", [offset])
        return float(row[0][0]) if row else 0.0

    return SpeedPercentiles(at(50), at(95), n)

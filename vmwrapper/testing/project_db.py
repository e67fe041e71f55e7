"""The test project's BOINC database: what BOINC's scheduler would have stored.

Give :class:`~vmwrapper.testing.project_server.ProjectServer` a
:class:`ProjectDatabase` (``ProjectDatabase(url).attach(server)``) and every
scheduler RPC leaves in the project database (MariaDB ``mysql://...`` or the
embedded default, SQLite ``sqlite:///...``) the rows ``trickle_handler``
reads, written the way BOINC's ``sched/handle_request.cpp`` writes them
(``../shared/credit_rules.md`` section 1):

1. ``host``: the RPC's host, with ``p_ncpus``/``p_fpops`` from the request's
   ``<host_info>``, owned by the project's one user (whose team is created too);
2. reported ``<result>``\\ s: ``server_state`` OVER, ``received_time`` = server
   time, ``outcome`` SUCCESS when uploaded with exit status 0 (else client
   error), ``cpu_time``/``elapsed_time`` as reported; results are handled
   **before** messages, as BOINC does;
3. each ``<msg_from_host>``: a ``msg_from_host`` row with ``create_time`` =
   server time, ``hostid`` = the authenticated host, ``variety`` from the
   ``<variety>`` line, ``handled`` 0 and every other line of the element as
   ``xml`` (truncated at 256 KB); if storing fails the reply carries no
   ``<message_ack/>`` and the client sends the messages again;
4. results sent in the reply: a ``result`` row IN_PROGRESS with ``sent_time``
   = server time and the host's ``hostid``/``userid``/``teamid`` (a real
   project creates the row UNSENT with the work unit; the test server makes
   work units without a database, so the row appears when it is sent).

The tables are BOINC's, created by ``trickle_handler``'s schema when absent.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from trickle_handler.db import Database, DatabaseError, open_database, parse_database_url
from trickle_handler.rules import RESULT_SERVER_STATE_IN_PROGRESS, RESULT_SERVER_STATE_OVER
from trickle_handler.schema import create_tables
from trickle_handler.seed import StoredMessage, store_messages
from vmwrapper.testing import scheduler_protocol as proto

if TYPE_CHECKING:
    from vmwrapper.testing.project_server import ProjectServer

log = logging.getLogger(__name__)

#: The user every scheduler reply names (``<userid>7</userid>`` in scheduler_protocol).
USERID = 7
#: The team that user belongs to in the database, so team credit is exercised too.
TEAMID = 1
#: result.outcome values (db/boinc_db_types.h).
OUTCOME_SUCCESS = 1
OUTCOME_CLIENT_ERROR = 3
#: BOINC keeps at most this much of a message (sched MSG_FROM_HOST_BLOB_SIZE).
MSG_FROM_HOST_BLOB_SIZE = 256 * 1024

_HOST_INFO = re.compile(r"<host_info>(.*?)</host_info>", re.DOTALL)


def host_speed(raw_request: str) -> tuple[int, float]:
    """``(p_ncpus, p_fpops)`` from the request's ``<host_info>``; (1, 0) when absent."""
    match = _HOST_INFO.search(raw_request)
    if match is None:
        return 1, 0.0
    info = match.group(1)
    ncpus = re.search(r"<p_ncpus>\s*([0-9]+)\s*</p_ncpus>", info)
    fpops = re.search(r"<p_fpops>\s*([0-9.eE+-]+)\s*</p_fpops>", info)
    return (int(ncpus.group(1)) if ncpus else 1, float(fpops.group(1)) if fpops else 0.0)


def result_outcome(result: proto.ReportedResult) -> int:
    """SUCCESS for a task whose files were uploaded with exit status 0, else CLIENT_ERROR."""
    if result.state == proto.RESULT_STATE_FILES_UPLOADED and result.exit_status == 0:
        return OUTCOME_SUCCESS
    return OUTCOME_CLIENT_ERROR


class ProjectDatabase:
    """A project database the test server writes like BOINC's scheduler (see the module doc).

    ``url`` is ``mysql://user:pw@127.0.0.1:3306/name`` (the database must
    exist) or ``sqlite:///path``. BOINC's tables are created when absent.

    The server calls :meth:`record_rpc` from its request threads and tests read
    from theirs, so each operation opens its own connection (an SQLite
    connection belongs to one thread) under one lock.
    """

    def __init__(self, url: str, userid: int = USERID, teamid: int = TEAMID) -> None:
        self.url = parse_database_url(url)
        self.userid = userid
        self.teamid = teamid
        self._lock = threading.Lock()
        with self._connection() as db:
            create_tables(db)
            _transaction(db, lambda: self._add_user_and_team(db))

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Database]:
        with self._lock:
            db = open_database(self.url)
            db.connect()
            try:
                yield db
            finally:
                db.close()

    def attach(self, server: ProjectServer) -> ProjectDatabase:
        """Make ``server`` store every scheduler RPC here; returns self."""
        server.on_scheduler_request = self.record_rpc
        return self

    # -- the scheduler's writes ---------------------------------------------
    def record_rpc(self, request: proto.SchedulerRequest, raw_request: str, hostid: int,
                   now: float, content: proto.ReplyContent) -> None:
        """Store one RPC: host, reported results, then messages, then the results sent.

        Called by the server before it builds the reply. A failure to store the
        messages clears ``content.message_ack`` (the client resends them).
        """
        stamp = int(now)
        try:
            with self._connection() as db:
                self._record(db, request, raw_request, hostid, stamp, content)
        except DatabaseError as exc:
            log.error("project database: cannot connect: %s", exc)
            content.message_ack = False

    def _record(self, db: Database, request: proto.SchedulerRequest, raw_request: str,
                hostid: int, now: int, content: proto.ReplyContent) -> None:
        try:
            _transaction(db, lambda: self._store_host(db, hostid, raw_request, now))
            _transaction(db, lambda: self._store_reported(db, request.results, hostid, now))
        except Exception as exc:  # noqa: BLE001 - logged; BOINC carries on with the messages
            log.error("project database: host/results of host %d not stored: %s", hostid, exc)
        if request.trickles:
            try:
                _transaction(db, lambda: store_messages(db, (
                    StoredMessage(now, hostid, t.variety, t.xml[:MSG_FROM_HOST_BLOB_SIZE])
                    for t in request.trickles)))
            except Exception as exc:  # noqa: BLE001 - any failed insert: no ack, as in BOINC
                log.error("project database: %d messages of host %d not stored (no ack): %s",
                          len(request.trickles), hostid, exc)
                content.message_ack = False
        if content.workunits:
            try:
                _transaction(db, lambda: self._store_sent(db, content.workunits, hostid, now))
            except Exception as exc:  # noqa: BLE001 - logged; the reply still goes out
                log.error("project database: sent results not stored: %s", exc)

    def _add_user_and_team(self, db: Database) -> None:
        if self.teamid and not db.query("SELECT id FROM team WHERE id = ?", [self.teamid]):
            db.execute("INSERT INTO team (id, name) VALUES (?, ?)",
                       [self.teamid, f"team{self.teamid}"])
        if not db.query("SELECT id FROM user WHERE id = ?", [self.userid]):
            db.execute("INSERT INTO user (id, name, teamid) VALUES (?, ?, ?)",
                       [self.userid, "tester", self.teamid])

    def _store_host(self, db: Database, hostid: int, raw_request: str, now: int) -> None:
        ncpus, fpops = host_speed(raw_request)
        if db.query("SELECT id FROM host WHERE id = ?", [hostid]):
            db.execute("UPDATE host SET p_ncpus = ?, p_fpops = ? WHERE id = ?",
                       [ncpus, fpops, hostid])
        else:
            db.execute("INSERT INTO host (id, create_time, userid, p_ncpus, p_fpops)"
                       " VALUES (?, ?, ?, ?, ?)", [hostid, now, self.userid, ncpus, fpops])

    def _store_reported(self, db: Database, results: tuple[proto.ReportedResult, ...],
                        hostid: int, now: int) -> None:
        for r in results:
            changed = db.execute(
                "UPDATE result SET server_state = ?, outcome = ?, client_state = ?,"
                " received_time = ?, cpu_time = ?, elapsed_time = ?"
                " WHERE name = ? AND hostid = ? AND server_state = ?",
                [RESULT_SERVER_STATE_OVER, result_outcome(r), r.state, now, r.final_cpu_time,
                 r.final_elapsed_time, r.name, hostid, RESULT_SERVER_STATE_IN_PROGRESS],
            )
            if changed == 0:  # BOINC logs and ignores results it did not send to this host
                log.warning("project database: host %d reported %s, not in progress for it",
                            hostid, r.name)

    def _store_sent(self, db: Database, workunits: list[proto.Workunit], hostid: int,
                    now: int) -> None:
        for wu in workunits:
            db.execute("DELETE FROM result WHERE name = ?", [wu.result_name])
            db.execute(
                "INSERT INTO result (create_time, name, hostid, userid, teamid, server_state,"
                " sent_time, report_deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [now, wu.result_name, hostid, self.userid, self.teamid,
                 RESULT_SERVER_STATE_IN_PROGRESS, now, wu.report_deadline],
            )

    # -- what tests read back -------------------------------------------------
    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of a SELECT, on a fresh connection."""
        with self._connection() as db:
            return db.query(sql, list(params))


def _transaction(db: Database, work: Callable[[], object]) -> None:
    """Run ``work`` in one transaction of ``db``; roll back on any error."""
    db.begin()
    try:
        work()
        db.commit()
    except BaseException:
        db.rollback()
        raise

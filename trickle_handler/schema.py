"""Table definitions: our own state tables, and a subset of BOINC's for tests and demos.

Our tables (always ``CREATE TABLE IF NOT EXISTS``, so ``--create_tables`` is safe on a production
database):

- ``trickle_result_state``: per result, the CPU seconds credited from trickles so far and the
  server time of the last credited trickle. ``result`` has no such column and reusing ``cpu_time``
  or ``granted_credit`` would collide with the scheduler and validator.
- ``trickle_runtime_seen``: the (result, client ``<time>``) of every ``<runtime>`` trickle handled,
  so a resent one is credited once.
- ``trickle_reason``: why a message was rejected or credited less than it claimed.
- ``trickle_credit_hour``: credit granted and messages handled per hour and variety, added to in
  each batch's transaction (``trickle_handler stats`` reads it; BOINC keeps only running totals).

BOINC's tables (``msg_from_host``, ``result``, ``host``, ``user``, ``team``) carry BOINC's names and
types (``db/schema.sql``) for the columns this daemon and the scheduler use; every other column a
real project has is left out. They are created only when absent.
"""

from __future__ import annotations

from trickle_handler.db import Database, MySQLDatabase

_OURS = [
    """CREATE TABLE IF NOT EXISTS trickle_result_state (
        resultid            integer     not null,
        hostid              integer     not null,
        credited_cpu        double      not null,
        last_credit_time    integer     not null,
        granted_credit      double      not null,
        ntrickles           integer     not null,
        primary key (resultid)
    ){engine}""",
    """CREATE TABLE IF NOT EXISTS trickle_runtime_seen (
        resultid            integer     not null,
        client_time         double      not null,
        msgid               integer     not null,
        primary key (resultid, client_time)
    ){engine}""",
    """CREATE TABLE IF NOT EXISTS trickle_reason (
        msgid               integer     not null,
        reason              varchar(32) not null,
        hostid              integer     not null,
        create_time         integer     not null,
        detail              varchar(255) not null,
        primary key (msgid, reason)
    ){engine}""",
    """CREATE TABLE IF NOT EXISTS trickle_credit_hour (
        hour                integer     not null,
        variety             varchar(254) not null,
        batches             integer     not null,
        messages            integer     not null,
        credited            integer     not null,
        rejected            integer     not null,
        cpu_seconds         double      not null,
        credit              double      not null,
        primary key (hour, variety)
    ){engine}""",
]

#: The per-hour ledger's table definition (see ``trickle_handler.stats``).
LEDGER_DDL = _OURS[-1]

_BOINC: dict[str, list[str]] = {
    "msg_from_host": [
        """CREATE TABLE msg_from_host (
            id                  integer     not null {autoinc},
            create_time         integer     not null,
            hostid              integer     not null,
            variety             varchar(254) not null,
            handled             smallint    not null,
            xml                 mediumtext
        ){engine}""",
        "CREATE INDEX mfh_handled ON msg_from_host (handled)",
        "CREATE INDEX mfh_hostid ON msg_from_host (hostid)",
    ],
    "result": [
        """CREATE TABLE result (
            id                  integer     not null {autoinc},
            create_time         integer     not null default 0,
            workunitid          integer     not null default 0,
            server_state        integer     not null,
            outcome             integer     not null default 0,
            client_state        integer     not null default 0,
            hostid              integer     not null,
            userid              integer     not null,
            report_deadline     integer     not null default 0,
            sent_time           integer     not null,
            received_time       integer     not null default 0,
            name                varchar(254) not null,
            cpu_time            double      not null default 0,
            elapsed_time        double      not null default 0,
            claimed_credit      double      not null default 0,
            granted_credit      double      not null default 0,
            appid               integer     not null default 0,
            teamid              integer     not null default 0
        ){engine}""",
        "CREATE UNIQUE INDEX res_name ON result (name)",
    ],
    "host": [
        """CREATE TABLE host (
            id                  integer     not null {autoinc},
            create_time         integer     not null default 0,
            userid              integer     not null,
            total_credit        double      not null default 0,
            expavg_credit       double      not null default 0,
            expavg_time         double      not null default 0,
            p_ncpus             integer     not null default 1,
            p_fpops             double      not null default 0
        ){engine}""",
    ],
    "user": [
        """CREATE TABLE user (
            id                  integer     not null {autoinc},
            create_time         integer     not null default 0,
            name                varchar(254),
            total_credit        double      not null default 0,
            expavg_credit       double      not null default 0,
            expavg_time         double      not null default 0,
            teamid              integer     not null default 0
        ){engine}""",
    ],
    "team": [
        """CREATE TABLE team (
            id                  integer     not null {autoinc},
            create_time         integer     not null default 0,
            name                varchar(254) not null default '',
            total_credit        double      not null default 0,
            expavg_credit       double      not null default 0,
            expavg_time         double      not null default 0
        ){engine}""",
    ],
}


def _render(db: Database, statement: str) -> str:
    if isinstance(db, MySQLDatabase):
        return statement.format(autoinc="auto_increment primary key", engine=" ENGINE=InnoDB")
    return statement.format(autoinc="primary key autoincrement", engine="").replace(
        "mediumtext", "text"
    )


def create_tables(db: Database, boinc_tables: bool = True) -> list[str]:
    """Create our state tables, and BOINC's (when ``boinc_tables``) that do not exist.

    An existing BOINC table is never touched, not even to add an index: on a production database
    that would lock a big table. Returns the names of the tables created.
    """
    created = []
    db.begin()
    try:
        for statement in _OURS:
            table = statement.split()[5]
            if not db.table_exists(table):
                db.execute(_render(db, statement))
                created.append(table)
        for table, statements in _BOINC.items() if boinc_tables else ():
            if not db.table_exists(table):
                for statement in statements:
                    db.execute(_render(db, statement))
                created.append(table)
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return created

"""A corpus of malformed and hostile trickles through the real daemon, on MariaDB and SQLite.

Each message is stored as BOINC's scheduler stores it; each must be handled without a crash, earn
exactly the credit the rules allow, and leave its reason code in ``trickle_reason``. Every reason
code the daemon knows appears at least once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pytest

from trickle_handler import schema, seed
from trickle_handler.credit import cobblestones
from trickle_handler.db import SQLiteDatabase, parse_database_url
from trickle_handler.reasons import Reason
from trickle_handler.rules import RESULT_SERVER_STATE_OVER, RESULT_SERVER_STATE_UNSENT
from trickle_handler.store import HANDLED_OK, HANDLED_REJECTED

T0 = 1_700_000_000
NOW = T0 + 7200  # when the scheduler stored the messages

# host id -> (userid, p_ncpus, p_fpops); user id -> teamid. User 99 and team 77 do not exist.
HOSTS = {
    1: (1, 1, 1e9),
    2: (2, 4, 3e9),
    3: (99, 1, 1e9),
    4: (4, 1, 1e9),
    5: (1, 1, 0.0),
    6: (1, 1, 1e12),
}
USERS = {1: 1, 2: 0, 4: 77}


@dataclass
class Case:
    label: str
    body: str | None  # None: the whole xml is given in ``xml``
    reasons: tuple[Reason, ...] = ()
    seconds: float = 0.0  # CPU seconds credited
    flops: float = 1e9
    hostid: int = 1
    xml: str | None = None
    result: dict | None = None  # overrides for this case's result row; False = no result
    created: int = NOW
    result_host: int | None = None


def head(name: str) -> str:
    return f"      <result_name>{name}</result_name>\n      <time>{NOW - 60}</time>\n"


LAUGHS = (
    '<!DOCTYPE l [<!ENTITY l0 "ha">'
    + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    + "]>"
)

CASES = [
    Case("ok", "<cpu_time>3600.000000</cpu_time>\n", seconds=3600),
    Case("runtime_ok", "<runtime>600</runtime>\n", seconds=600),
    # -- text --
    Case("too_large", "<cpu_time>1</cpu_time><pad>" + "x" * 20000 + "</pad>", (Reason.TOO_LARGE,)),
    Case("empty", None, (Reason.EMPTY_MESSAGE,), xml=""),
    Case("control", "<cpu_time>1\x01</cpu_time>", (Reason.CONTROL_CHARACTERS,)),
    Case("malformed", "<cpu_time>1</cpu", (Reason.MALFORMED_XML,)),
    Case(
        "dtd",
        None,
        (Reason.DTD_FORBIDDEN,),
        xml=LAUGHS + head("r_dtd") + "<cpu_time>&l9;</cpu_time>",
    ),
    Case(
        "entity_decl",
        None,
        (Reason.ENTITY_FORBIDDEN,),
        xml='<!ENTITY e "1">' + head("r_entity_decl"),
    ),
    Case("entity_ref", "<cpu_time>&e;</cpu_time>", (Reason.ENTITY_FORBIDDEN,)),
    Case("nested", "<cpu_time><b>1</b></cpu_time>", (Reason.NESTED_ELEMENT,)),
    Case(
        "duplicate_field",
        "<cpu_time>1</cpu_time><cpu_time>9999</cpu_time>",
        (Reason.DUPLICATE_FIELD,),
    ),
    Case(
        "no_name", None, (Reason.MISSING_RESULT_NAME,), xml="<time>1</time><cpu_time>1</cpu_time>"
    ),
    Case(
        "empty_name",
        None,
        (Reason.EMPTY_RESULT_NAME,),
        xml="<result_name></result_name><time>1</time><cpu_time>1</cpu_time>",
    ),
    Case(
        "spaced_name",
        None,
        (Reason.BAD_RESULT_NAME,),
        xml="<result_name>r ok</result_name><time>1</time><cpu_time>1</cpu_time>",
    ),
    Case(
        "sql_injection",
        None,
        (Reason.UNKNOWN_RESULT,),
        xml="<result_name>x'OR'1'='1</result_name><time>1</time><cpu_time>1</cpu_time>",
    ),
    Case(
        "no_time",
        None,
        (Reason.MISSING_TIME,),
        xml="<result_name>r_no_time</result_name><cpu_time>1</cpu_time>",
    ),
    Case(
        "bad_time",
        None,
        (Reason.BAD_TIME,),
        xml="<result_name>r_bad_time</result_name><time>yesterday</time><cpu_time>1</cpu_time>",
    ),
    Case(
        "time_range",
        None,
        (Reason.TIME_OUT_OF_RANGE,),
        xml="<result_name>r_time_range</result_name><time>1e12</time><cpu_time>1</cpu_time>",
    ),
    Case("no_value", "<fraction_done>0.5</fraction_done>", (Reason.MISSING_VALUE,)),
    Case("both_values", "<cpu_time>1</cpu_time><runtime>1</runtime>", (Reason.AMBIGUOUS_VALUE,)),
    Case("words", "<cpu_time>an hour</cpu_time>", (Reason.NON_NUMERIC_VALUE,)),
    Case("underscores", "<cpu_time>3_600</cpu_time>", (Reason.NON_NUMERIC_VALUE,)),
    Case("nan", "<cpu_time>nan</cpu_time>", (Reason.NAN_VALUE,)),
    Case("inf", "<cpu_time>Infinity</cpu_time>", (Reason.INFINITE_VALUE,)),
    Case("overflow", "<runtime>1e999</runtime>", (Reason.INFINITE_VALUE,)),
    Case("negative", "<cpu_time>-3600</cpu_time>", (Reason.NEGATIVE_VALUE,)),
    Case("zero_runtime", "<runtime>0</runtime>", (Reason.ZERO_RUNTIME,)),
    # -- the rows it names --
    Case(
        "unknown_host",
        "<cpu_time>3600</cpu_time>",
        (Reason.UNKNOWN_HOST,),
        hostid=999,
        result_host=1,
    ),
    Case("unknown_user", "<cpu_time>3600</cpu_time>", (Reason.UNKNOWN_USER,), hostid=3),
    Case("unknown_result", "<cpu_time>3600</cpu_time>", (Reason.UNKNOWN_RESULT,), result=False),
    Case("forgery", "<cpu_time>3600</cpu_time>", (Reason.FOREIGN_RESULT,), hostid=1, result_host=2),
    Case(
        "unsent",
        "<cpu_time>3600</cpu_time>",
        (Reason.RESULT_NOT_SENT,),
        result={"server_state": RESULT_SERVER_STATE_UNSENT},
    ),
    Case(
        "reported",
        "<cpu_time>3600</cpu_time>",
        (Reason.RESULT_REPORTED,),
        result={"server_state": RESULT_SERVER_STATE_OVER, "received_time": NOW - 3601},
    ),
    Case(
        "timed_out",
        "<cpu_time>3600</cpu_time>",
        (Reason.RESULT_OVER,),
        result={"server_state": RESULT_SERVER_STATE_OVER},
    ),
    Case(
        "before_sent",
        "<cpu_time>3600</cpu_time>",
        (Reason.BEFORE_SENT,),
        result={"sent_time": NOW + 10},
    ),
    Case(
        "reported_in_grace",
        "<cpu_time>1800</cpu_time>",
        seconds=1800,
        result={"server_state": RESULT_SERVER_STATE_OVER, "received_time": NOW - 100},
    ),
    # -- replays and ordering (same result as the "ok" and "runtime_ok" cases) --
    Case(
        "replay",
        None,
        (Reason.REPLAYED_CPU_TIME,),
        xml=head("r_ok") + "<cpu_time>3600.000000</cpu_time>\n",
        result=False,
    ),
    Case(
        "regression",
        None,
        (Reason.CPU_TIME_REGRESSION,),
        xml=head("r_ok") + "<cpu_time>1200</cpu_time>\n",
        result=False,
    ),
    Case(
        "duplicate_runtime",
        None,
        (Reason.DUPLICATE_RUNTIME,),
        xml=head("r_runtime_ok") + "<runtime>600</runtime>\n",
        result=False,
    ),
    Case(
        "no_wall_time",
        None,
        (Reason.NO_WALL_TIME,),
        xml=head("r_ok") + "<cpu_time>5000</cpu_time>\n",
        result=False,
    ),
    # -- credited, with a note --
    Case(
        "wall_cap",
        "<cpu_time>500</cpu_time>",
        (Reason.CAPPED_WALL_TIME,),
        seconds=100,
        result={"sent_time": NOW - 100},
    ),
    Case("huge", "<cpu_time>1e300</cpu_time>", (Reason.CAPPED_MAX_RUNTIME,), seconds=3600),
    Case("unknown_team", "<cpu_time>60</cpu_time>", (Reason.UNKNOWN_TEAM,), seconds=60, hostid=4),
    Case("no_speed", "<cpu_time>60</cpu_time>", seconds=60, hostid=5),  # p_fpops 0 -> 1e9
    Case("too_fast", "<cpu_time>60</cpu_time>", seconds=60, flops=1e10, hostid=6),  # -> --max_fpops
    Case("fast_host", "<cpu_time>60</cpu_time>", seconds=60, flops=3e9, hostid=2),
]


def store_corpus(db) -> None:
    db.begin()
    seed.add_teams(db, [1])
    seed.add_users(db, sorted(USERS.items()))
    seed.add_hosts(db, [(h, u, n, f) for h, (u, n, f) in HOSTS.items()])
    for i, case in enumerate(CASES, start=1):
        if case.result is False:
            continue
        owner = case.result_host or case.hostid
        row = {"sent_time": T0, "server_state": 4, "received_time": 0, **(case.result or {})}
        db.insert_many(
            "result",
            ("id", "name", "hostid", "userid", "sent_time", "server_state", "received_time"),
            [
                (
                    i,
                    f"r_{case.label}",
                    owner,
                    HOSTS.get(owner, (1,))[0],
                    row["sent_time"],
                    row["server_state"],
                    row["received_time"],
                )
            ],
        )
    seed.store_messages(
        db,
        [
            seed.StoredMessage(
                case.created,
                case.hostid,
                "cpu_time",
                case.xml if case.xml is not None else head(f"r_{case.label}") + case.body,
            )
            for case in CASES
        ],
    )
    db.commit()


def check_outcome(db) -> None:
    ids = [row[0] for row in db.query("SELECT id FROM msg_from_host ORDER BY id")]
    assert len(ids) == len(CASES)
    reasons = defaultdict(set)
    for msgid, code in db.query("SELECT msgid, reason FROM trickle_reason"):
        reasons[msgid].add(code)
    handled = dict(db.query("SELECT id, handled FROM msg_from_host"))
    expected_host = defaultdict(float)
    for msgid, case in zip(ids, CASES, strict=True):
        assert reasons[msgid] == {r.code for r in case.reasons}, case.label
        rejected = any(r.is_rejection for r in case.reasons)
        assert handled[msgid] == (HANDLED_REJECTED if rejected else HANDLED_OK), case.label
        if case.seconds:
            expected_host[case.hostid] += cobblestones(case.seconds, case.flops)
    got = dict(db.query("SELECT id, total_credit FROM host"))
    assert got == {h: pytest.approx(expected_host.get(h, 0.0), rel=1e-12) for h in HOSTS}
    user_totals = dict(db.query("SELECT id, total_credit FROM user"))
    assert user_totals[1] == pytest.approx(sum(expected_host[h] for h in (1, 5, 6)))
    assert user_totals[4] == pytest.approx(expected_host[4])
    team = db.query("SELECT total_credit FROM team WHERE id = 1")[0][0]
    assert team == pytest.approx(user_totals[1])


def test_corpus_covers_every_reason_code():
    covered = {r for case in CASES for r in case.reasons}
    assert covered == set(Reason)
    assert len({r for r in covered if r.is_rejection}) >= 30


@pytest.mark.mariadb
def test_hostile_corpus_on_mariadb(mariadb_project, daemons):
    url, db = mariadb_project
    store_corpus(db)
    proc = daemons.start("--db", url, "--one_pass", "-d", "4")
    assert daemons.wait(proc) == 0, daemons.log_of(proc)
    check_outcome(db)
    log = daemons.log_of(proc)
    assert "rejected foreign_result" in log and "Traceback" not in log


def test_hostile_corpus_on_sqlite(tmp_path, daemons):
    url = f"sqlite:///{tmp_path}/project.db"
    proc = daemons.start("--db", url, "--one_pass", "--create_tables")
    assert daemons.wait(proc) == 0, daemons.log_of(proc)
    db = SQLiteDatabase(parse_database_url(url))
    db.connect()
    store_corpus(db)
    proc = daemons.start("--db", url, "--one_pass", "--batch_size", "7")
    assert daemons.wait(proc) == 0, daemons.log_of(proc)
    check_outcome(db)
    schema.create_tables(db)  # idempotent on a database that has them
    db.close()

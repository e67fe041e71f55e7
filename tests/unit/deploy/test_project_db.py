"""The test project server storing RPCs in a BOINC database (SQLite), as BOINC's scheduler does.

Requests are the captured 7.20.5 request (tests/data/boinc) with its trickle
changed into a CPU-time trickle, posted over HTTP to a real ProjectServer; the
credit check runs the real ``trickle_handler --one_pass``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import ROOT
from trickle_handler import db as thdb
from vmwrapper.testing import project_db
from vmwrapper.testing.project_db import ProjectDatabase, host_speed
from vmwrapper.testing.project_server import FIRST_HOSTID, ProjectServer

CAPTURED = (ROOT / "tests/data/boinc/sched_request_with_trickle.xml").read_text()
T0 = 1_795_600_000


def request_text(hostid: int, *, trickle: str | None = None, report: str | None = None) -> str:
    """The captured request with our hostid, and a trickle and/or a reported result (or none)."""
    text = re.sub(r"<hostid>\d+</hostid>", f"<hostid>{hostid}</hostid>", CAPTURED, count=1)
    message = re.search(r"  <msg_from_host>.*?</msg_from_host>\n", text, re.DOTALL).group(0)
    text = text.replace(message, trickle or "")
    if report:
        text = text.replace("</scheduler_request>", report + "</scheduler_request>")
    return text


def cpu_trickle(result: str, client_time: int, cpu: float) -> str:
    return ("  <msg_from_host>\n"
            f"      <result_name>{result}</result_name>\n      <time>{client_time}</time>\n"
            f"<variety>cpu_time</variety>\n<cpu_time>{cpu:f}</cpu_time>\n  </msg_from_host>\n")


def reported(result: str, cpu: float) -> str:
    return (f"<result>\n    <name>{result}</name>\n    <final_cpu_time>{cpu:f}</final_cpu_time>\n"
            "    <final_elapsed_time>130.5</final_elapsed_time>\n    <exit_status>0</exit_status>\n"
            "    <state>5</state>\n</result>\n")


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def project(tmp_path):
    clock = Clock()
    url = f"sqlite:///{tmp_path / 'project.db'}"
    with ProjectServer(clock=clock) as server:
        database = ProjectDatabase(url).attach(server)
        yield server, database, clock, url


def post(server: ProjectServer, body: str) -> str:
    with urllib.request.urlopen(server.scheduler_url, body.encode(), timeout=10) as reply:
        return reply.read().decode()


def test_host_speed_from_host_info():
    assert host_speed(CAPTURED) == (2, 1e9)
    assert host_speed("<scheduler_request></scheduler_request>") == (1, 0.0)


def test_rpcs_leave_the_rows_trickle_handler_needs_and_it_grants_credit(project):
    server, database, clock, url = project
    server.add_workunit("wu1")
    post(server, request_text(0))  # new host: gets hostid 42 and the work
    hostid = FIRST_HOSTID
    assert database.rows("SELECT id, userid, p_ncpus, p_fpops FROM host") == [(hostid, 7, 2, 1e9)]
    assert database.rows("SELECT id, teamid FROM user") == [(7, 1)]
    assert database.rows("SELECT id FROM team") == [(1,)]
    assert database.rows("SELECT name, hostid, userid, teamid, server_state, sent_time FROM result") \
        == [("wu1_0", hostid, 7, 1, 4, T0)]

    clock.now += 100
    reply = post(server, request_text(hostid, trickle=cpu_trickle("wu1_0", T0 + 95, 50.0)))
    assert "<message_ack/>" in reply
    assert database.rows("SELECT create_time, hostid, variety, handled, xml FROM msg_from_host") == [
        (T0 + 100, hostid, "cpu_time", 0,
         f"      <result_name>wu1_0</result_name>\n      <time>{T0 + 95}</time>\n"
         "<cpu_time>50.000000</cpu_time>\n")]

    clock.now += 50
    post(server, request_text(hostid, report=reported("wu1_0", 60.0)))
    assert database.rows("SELECT server_state, outcome, received_time, cpu_time, elapsed_time"
                         " FROM result") == [(5, 1, T0 + 150, 60.0, 130.5)]

    done = subprocess.run([sys.executable, "-m", "trickle_handler", "--db", url, "--one_pass"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = 50 * 1e9 * 200 / 86400e9
    for table, key in (("host", hostid), ("user", 7), ("team", 1)):
        (credit,), = database.rows(f"SELECT total_credit FROM {table} WHERE id = ?", (key,))
        assert credit == pytest.approx(expected), table
    assert database.rows("SELECT handled FROM msg_from_host") == [(1,)]


def test_results_are_stored_before_messages(project, monkeypatch):
    server, database, clock, _ = project
    server.add_workunit("wu2")
    post(server, request_text(0))
    statements: list[str] = []
    real_open = project_db.open_database

    def traced(url):
        db = real_open(url)
        db.trace = lambda sql: statements.append(" ".join(sql.split())[:30])
        return db

    monkeypatch.setattr(project_db, "open_database", traced)
    clock.now += 10
    post(server, request_text(FIRST_HOSTID, trickle=cpu_trickle("wu2_0", T0 + 9, 5.0),
                              report=reported("wu2_0", 5.0)))
    kinds = ("UPDATE result", "INSERT INTO msg_from_host")
    writes = [kind for s in statements for kind in kinds if s.startswith(kind)]
    assert writes == list(kinds)


def test_failed_message_insert_means_no_ack_and_the_client_resends(project):
    server, database, clock, url = project
    post(server, request_text(0))
    conn = thdb.open_database(thdb.parse_database_url(url))
    conn.connect()
    conn.execute("ALTER TABLE msg_from_host RENAME TO msg_from_host_gone")
    conn.close()
    reply = post(server, request_text(FIRST_HOSTID, trickle=cpu_trickle("x_0", T0, 1.0)))
    assert "<message_ack/>" not in reply
    reply = post(server, request_text(FIRST_HOSTID))  # no messages: nothing to acknowledge
    assert "<message_ack/>" not in reply


def test_a_result_reported_by_another_host_is_not_changed(project):
    server, database, clock, _ = project
    server.add_workunit("wu3")
    post(server, request_text(0))
    post(server, request_text(999, report=reported("wu3_0", 5.0)))
    assert database.rows("SELECT server_state, received_time FROM result") == [(4, 0)]

"""On the real BOINC client: the deployed anonymous-platform bundle runs, and trickles reach the DB.

1. ``vmwrapper deploy --anonymous-platform`` with the standalone executable:
   the bundle dropped into the client's project dir is accepted, the client
   starts the executable from it in a slot, the executable finds ``job.xml``
   and the image through their logical names, and its stderr comes back in
   the report. The image is a few random bytes, so the wrapper refuses it
   (exit 206) before booting anything: booting the appliance is the
   end-to-end test's job.
2. The test project server with a MariaDB project database: a real app's
   CPU-time trickle becomes a ``msg_from_host`` row exactly as BOINC's
   scheduler writes it, the result row follows the task (sent, reported),
   and ``trickle_handler --one_pass`` then grants host, user and team credit.
"""

from __future__ import annotations

import re
import sys

import pytest

from tests.conftest import ROOT
from vmwrapper.deploy.builder import DeployRequest, deploy
from vmwrapper.deploy.spec import AppVersionId
from vmwrapper.testing.chain import (
    claimed_cpu_time,
    cpu_time_trickles,
    credit_of,
    expected_credit,
    install_bundle,
    run_trickle_handler,
    wait_for_report,
)
from vmwrapper.testing.project_db import ProjectDatabase
from vmwrapper.testing.project_server import AUTHENTICATOR, ProjectServer

pytestmark = pytest.mark.boinc_client

APPS = ROOT / "tests" / "integration" / "deploy" / "apps"


@pytest.fixture
def project_server():
    with ProjectServer() as server:
        yield server


def test_client_runs_the_executable_from_the_anonymous_platform_bundle(
        standalone_exe, boinc_client, project_server, tmp_path):
    image = tmp_path / "appliance.qcow2"
    image.write_bytes(b"not a disk image\n" * 64)
    (tmp_path / "project").mkdir()
    result = deploy(DeployRequest(
        # A plan class, as a VirtualBox app version has: the server's <result> names it and
        # the client must pick the bundle's version with it.
        version=AppVersionId.checked("cernvm", "1.02", "x86_64-pc-linux-gnu", "vbox64"),
        job=ROOT / "job.xml", image=image, executable=standalone_exe,
        project_dir=tmp_path / "project", anonymous_platform=tmp_path / "bundle"))
    install_bundle(result.bundle_dir, boinc_client, project_server)
    project_server.add_workunit("deploy1", app_name="cernvm", version_num=102,
                                input_files={"in": b"b\na\nb\n"}, plan_class="vbox64")

    boinc_client.start(attach=(project_server.url, AUTHENTICATOR))
    # after a task error the client defers its RPCs for minutes: wait_for_report asks at once
    reported = wait_for_report(boinc_client, project_server, "deploy1_0", timeout=90)

    log = boinc_client.log_tail(200_000)
    assert re.search(r"Starting task deploy1_0", log), log[-3000:]
    stderr = reported.stderr_out
    assert "vmwrapper 0.1.0: deploy1_0 in " in stderr  # init_data.xml read: not standalone
    # The client ran the bundle's vbox64 version (its files carry the plan class, asserted
    # below), but 7.20.5 leaves <plan_class> out of init_data.xml (seen here).
    assert "app version: cernvm 102 (no plan class)" in stderr
    assert "hypervisor: qemu" in stderr
    # the image was found through its logical name, in the client's project dir
    assert "vm_image_1.02_x86_64-pc-linux-gnu__vbox64.qcow2 is neither a known disk image" in stderr
    assert reported.exit_status == 206


def _app_program(path) -> bytes:
    """The app with a shebang naming this virtualenv's Python."""
    body = path.read_text().split("\n", 1)[1]
    return f"#!{sys.executable}\n{body}".encode()


@pytest.mark.mariadb
def test_trickle_is_stored_like_boincs_scheduler_and_credited(
        boinc_client, project_server, deploy_database):
    database = ProjectDatabase(deploy_database).attach(project_server)
    boinc_client.install_app(project_server.url, "cputrickle",
                             {"cpu_trickle_app.py": _app_program(APPS / "cpu_trickle_app.py")},
                             "cpu_trickle_app.py")
    project_server.add_workunit("dbtest", app_name="cputrickle", input_files={"in": b"x\n"})

    boinc_client.start(attach=(project_server.url, AUTHENTICATOR))
    trickle = project_server.wait_for_trickle(lambda t: t.message.variety == "cpu_time", 90)
    reported = project_server.wait_for_result("dbtest_0", timeout=90)

    hostid = trickle.hostid
    [(create_time, row_host, variety, handled, xml)] = database.rows(
        "SELECT create_time, hostid, variety, handled, xml FROM msg_from_host")
    assert (create_time, row_host, variety, handled) == (int(trickle.received_at), hostid,
                                                         "cpu_time", 0)
    assert xml == trickle.message.xml
    lines = xml.splitlines()
    assert lines[0] == "      <result_name>dbtest_0</result_name>"
    assert re.fullmatch(r"      <time>\d+</time>", lines[1])
    assert re.fullmatch(r"<cpu_time>[0-9.]+</cpu_time>", lines[2])
    claimed = claimed_cpu_time(lines[2])
    assert 0.5 < claimed <= reported.final_cpu_time

    [(p_ncpus, p_fpops, userid)] = database.rows(
        "SELECT p_ncpus, p_fpops, userid FROM host WHERE id = ?", (hostid,))
    assert p_ncpus >= 1 and p_fpops == 1e9  # --skip_cpu_benchmarks: 1 GFLOPS
    [(state, outcome, sent, received, cpu)] = database.rows(
        "SELECT server_state, outcome, sent_time, received_time, cpu_time FROM result"
        " WHERE name = 'dbtest_0' AND hostid = ?", (hostid,))
    assert (state, outcome) == (5, 1)
    assert sent <= create_time <= received
    assert cpu == pytest.approx(reported.final_cpu_time)

    run_trickle_handler(deploy_database, cwd=ROOT)
    assert userid == database.userid
    expected = expected_credit(claimed, p_fpops)
    credit = credit_of(database, hostid)
    assert (credit.host, credit.user, credit.team) == pytest.approx((expected,) * 3)
    assert database.rows("SELECT handled FROM msg_from_host") == [(1,)]


@pytest.fixture(params=[pytest.param("mariadb", marks=pytest.mark.mariadb), "sqlite"])
def project_database_url(request, tmp_path):
    """A fresh project database: MariaDB, or SQLite (the embedded default)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'project.db'}"
    return request.getfixturevalue("deploy_database")


@pytest.mark.qemu
def test_deployed_app_version_runs_the_sample_job_in_the_appliance_and_earns_credit(
        standalone_exe, appliance_image, boinc_client, project_server, project_database_url,
        tmp_path):
    """The whole chain: bundle -> client -> executable -> QEMU guest -> trickle -> DB -> credit.

    The job's broker is the embedded one; the database MariaDB or SQLite.
    """
    deploy_database = project_database_url
    database = ProjectDatabase(deploy_database).attach(project_server)
    (tmp_path / "project").mkdir()
    result = deploy(DeployRequest(
        version=AppVersionId.checked("cernvm", "1.03", "x86_64-pc-linux-gnu"),
        job=ROOT / "job.xml", image=appliance_image, executable=standalone_exe,
        project_dir=tmp_path / "project", anonymous_platform=tmp_path / "bundle"))
    install_bundle(result.bundle_dir, boinc_client, project_server)
    project_server.add_workunit("e2e", app_name="cernvm", version_num=103,
                                input_files={"in": b"b\na\nb\n"})

    boinc_client.start(attach=(project_server.url, AUTHENTICATOR))
    reported = wait_for_report(boinc_client, project_server, "e2e_0", timeout=240)

    assert reported.exit_status == 0, reported.stderr_out
    assert "finishing with status 0 (SUCCESS)" in reported.stderr_out
    assert project_server.uploads["e2e_0_out"] == b"      1 a\n      2 b\n"  # sort | uniq -c
    trickles = cpu_time_trickles(project_server)
    assert trickles, project_server.trickles
    rows = database.rows("SELECT hostid, variety, xml FROM msg_from_host WHERE variety = 'cpu_time'")
    assert [(t.hostid, "cpu_time", t.message.xml) for t in trickles] == rows
    claimed = max(claimed_cpu_time(xml) for _, _, xml in rows)
    assert 0 < claimed <= reported.final_cpu_time + 0.01
    hostid = trickles[0].hostid
    [(state, outcome)] = database.rows(
        "SELECT server_state, outcome FROM result WHERE name = 'e2e_0' AND hostid = ?", (hostid,))
    assert (state, outcome) == (5, 1)

    run_trickle_handler(deploy_database, cwd=ROOT)
    # cumulative CPU-time trickles: the credit is for the largest value, at 1 GFLOPS
    expected = expected_credit(claimed, 1e9)
    credit = credit_of(database, hostid)
    assert database.userid == 7
    assert (credit.host, credit.user, credit.team) == pytest.approx((expected,) * 3)

"""A BOINC task that is a Co-Pilot pilot, end to end on real components.

``copilot serve`` (job manager, HTTP storage) and its embedded broker run on
the host's loopback; a physicist submits jobs with inputs; the session's real
BOINC client runs the wrapper on the QEMU appliance (TCG) with a job.xml whose
one guest task is ``python3 -m vmcontroller.copilot pilot --config copilot.json
--slice S``. The pilot in the guest (Debian's python3 + python3-twisted) reaches
the broker and the storage at 10.0.2.2, runs the jobs, uploads their outputs
with checksums, stops at the end of its slice; the task succeeds with the
pilot's summary as its output, and ``trickle_handler --one_pass`` credits the
VM's CPU-time trickles, which cover the CPU the jobs burnt in the guest.

The Co-Pilot processes are :class:`tests.integration.copilot_server.CopilotServer`'s;
every one is stopped by the fixture.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid

import pytest

from tests.conftest import ROOT
from tests.integration.copilot_server import CopilotServer
from tests.integration.wrapper.conftest import APP_NAME, VMJob
from vmwrapper.testing.chain import (
    claimed_cpu_time,
    cpu_time_trickles,
    run_trickle_handler,
    wait_for_report,
)
from vmwrapper.testing.project_db import ProjectDatabase
from vmwrapper.testing.scheduler_protocol import RESULT_STATE_FILES_UPLOADED

pytestmark = [pytest.mark.boinc_client, pytest.mark.qemu]

#: The pilot's time slice (s), counted from its start in the guest after the boot.
SLICE = 35
#: Guest CPU seconds each job burns, and the jobs submitted.
BURN_SECONDS = 3.0
JOBS = 3

#: A job's program: burns CPU, then writes its output from its input.
BURN = b"""import sys, time
n = int(open(sys.argv[1]).read())
start = time.process_time()
while time.process_time() - start < float(sys.argv[2]):
    pass
used = time.process_time() - start
open("result.txt", "w").write("%d squared is %d; burnt %.2f s CPU\\n" % (n, n * n, used))
"""

JOB_XML = f"""<vm_job>
  <image>vm_image.qcow2</image>
  <hypervisor>qemu</hypervisor>
  <boot_timeout>180</boot_timeout>
  <trickle_period>10</trickle_period>
  <copy_to_guest><logical_name>copilot.json</logical_name><guest_path>copilot.json</guest_path></copy_to_guest>
  <copy_from_guest><guest_path>pilot_summary.txt</guest_path><logical_name>out</logical_name></copy_from_guest>
  <task>
    <application>python3</application>
    <command_line>-m vmcontroller.copilot pilot --config copilot.json --work-dir pilot --slice {SLICE} --cores 1 --memory-mb 256 --request-timeout 5</command_line>
    <stdout_filename>pilot_summary.txt</stdout_filename>
  </task>
</vm_job>
"""


@pytest.fixture
def copilot_server(tmp_path):
    server = CopilotServer(tmp_path, public_host="10.0.2.2")
    yield server
    server.close()


@pytest.fixture
def project_db(tmp_path, wrapper_project):
    """``(database, url)``: the test project's scheduler writes BOINC's tables there (for
    trickle_handler) while the test runs."""
    url = f"sqlite:///{tmp_path}/project.db"
    yield ProjectDatabase(url).attach(wrapper_project), url
    wrapper_project.on_scheduler_request = None


def test_a_pilot_task_runs_copilot_jobs_in_the_vm_and_is_credited_for_their_cpu(
        copilot_server, project_db, wrapper_client, wrapper_project):
    started = time.monotonic()
    jobs = {}
    for n in (3, 5, 7):
        view = copilot_server.client.submit(
            {"argv": ["python3", "burn.py", "n.txt", str(BURN_SECONDS)], "inputs": ["burn.py", "n.txt"],
             "outputs": ["result.txt"], "max_run_time": 10, "retries": 0},
            {"burn.py": BURN, "n.txt": b"%d\n" % n})
        jobs[view["id"]] = n

    name = f"wu_pilot_{uuid.uuid4().hex[:6]}"
    wrapper_project.add_workunit(name, app_name=APP_NAME, output_files=("out",), input_files={
        "job.xml": JOB_XML.encode(), "copilot.json": copilot_server.pilot_settings()})
    task = VMJob(wrapper_project, wrapper_client, name)
    wrapper_client.update_project(wrapper_project.url)
    try:
        result = wait_for_report(wrapper_client, wrapper_project, task.result_name, timeout=140)
    finally:
        state = wrapper_client.task(task.result_name)
        if state is not None and state.state not in ("uploaded", "aborted", "compute error"):
            wrapper_client.task_op(wrapper_project.url, task.result_name, "abort")
    wall = time.monotonic() - started

    # the BOINC task succeeded; its output is the pilot's summary, after the slice ended
    assert (result.exit_status, result.state) == (0, RESULT_STATE_FILES_UPLOADED), result.stderr_out
    summary = wrapper_project.uploads[f"{task.result_name}_out"].decode()
    match = re.fullmatch(r"pilot finished: (\d+) jobs, ([0-9.]+) s CPU\n", summary)
    assert match, summary
    assert int(match.group(1)) == JOBS
    pilot_cpu = float(match.group(2))
    assert JOBS * BURN_SECONDS <= pilot_cpu < JOBS * BURN_SECONDS + 10, summary
    assert "time slice over" in result.stderr_out
    assert "given back" not in result.stderr_out  # every job fitted in the slice

    # every job ran in the guest under the pilot's login; outputs are in storage, sha256 checked
    for job_id, n in jobs.items():
        view = copilot_server.client.job(job_id)
        assert view["state"] == "done", view
        assert view["result"]["agent"] == copilot_server.pilot_id
        assert view["result"]["cpu_time"] >= BURN_SECONDS
        outputs = {info["name"]: info for info in view["outputs"]}
        assert set(outputs) == {"result.txt", "stdout.log", "stderr.log"}
        data = copilot_server.client.output(job_id, "result.txt")
        assert hashlib.sha256(data).hexdigest() == outputs["result.txt"]["sha256"]
        assert data.decode().startswith(f"{n} squared is {n * n}; burnt ")

    # the pilot's login never reached stderr.txt or the client's log
    passcode = copilot_server.vm.passcode
    assert passcode not in result.stderr_out
    assert passcode not in wrapper_client.log_tail(2_000_000)

    # the VM's cumulative CPU-time trickles, credited by trickle_handler, cover the jobs' CPU
    trickles = [claimed_cpu_time(t.message.xml) for t in cpu_time_trickles(wrapper_project)
                if t.message.result_name == task.result_name]
    assert len(trickles) >= 2 and max(trickles) >= pilot_cpu, (trickles, pilot_cpu)
    database, url = project_db
    run_trickle_handler(url, cwd=ROOT)
    [(credited_cpu,)] = database.rows(
        "SELECT s.credited_cpu FROM trickle_result_state s JOIN result r ON r.id = s.resultid"
        " WHERE r.name = ?", (task.result_name,))
    [(ncpus, host_credit)] = database.rows(
        "SELECT h.p_ncpus, h.total_credit FROM host h JOIN result r ON r.hostid = h.id"
        " WHERE r.name = ?", (task.result_name,))
    print(f"pilot CPU {pilot_cpu:.1f} s, trickled {max(trickles):.1f} s, credited "
          f"{credited_cpu:.1f} s ({host_credit:.4f} cobblestones), wall {wall:.0f} s")
    assert host_credit > 0
    assert 0.5 * pilot_cpu <= credited_cpu <= max(trickles) + 0.05
    assert credited_cpu <= wall * ncpus

"""Host tasks (``<where>host</where>``) under the real BOINC client.

The host programs are the shell scripts in ``host_apps/``, sent as work-unit
input files and run by ``/bin/sh``: their logical names on the command line
(``prep.sh``, ``in``, ``out``) are resolved through the client's soft-link
files, as BOINC's wrapper does. A host-only job needs no hypervisor and no
broker; the mixed job hands files host -> guest -> host with one boot of the
cached appliance.
"""

from __future__ import annotations

import pathlib
import re
import time

import pytest

from tests.integration.wrapper.conftest import VMJob
from tests.integration.wrapper.test_wrapper_under_client import wait_reported, wait_until
from vmwrapper.hypervisor import procinfo
from vmwrapper.testing.scheduler_protocol import RESULT_STATE_FILES_UPLOADED

pytestmark = [pytest.mark.boinc_client]

HOST_APPS = pathlib.Path(__file__).parent / "host_apps"


def host_task(script: str, arguments: str = "", extra: str = "") -> str:
    # normal priority (nice 0, as the harness client runs the app): BOINC's default, the
    # lowest, could starve the tasks on a loaded CI machine
    return (f"<task><where>host</where><application>/bin/sh</application>"
            f"<command_line>{script} {arguments}</command_line><priority>3</priority>{extra}"
            "</task>")


@pytest.fixture
def submit_host(submit, wrapper_client):
    """``submit_host(name, job_xml)``: a work unit carrying the host_apps scripts as inputs."""
    wrapper_client.set_leave_apps_in_memory(True)
    scripts = {path.name: path.read_bytes() for path in HOST_APPS.glob("*.sh")}

    def make(name: str, job_xml: str, data: bytes = b"b line\na line\n") -> VMJob:
        return submit(name, job_xml, data, extra_inputs=scripts)

    return make


def alive(pid: int) -> bool:
    """True while *pid* exists and is not a zombie."""
    return procinfo.is_running(pid)


def state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def cpu_trickle_values(server, result_name: str) -> list[float]:
    trickles = sorted((t.message for t in server.trickles
                       if t.message.result_name == result_name), key=lambda m: m.time)
    return [float(re.search(r"<cpu_time>([\d.]+)</cpu_time>", t.body).group(1))
            for t in trickles if t.variety == "cpu_time"]


def test_host_only_job_runs_without_vm_uploads_output_and_trickles_cpu(
        submit_host, wrapper_project):
    job = submit_host("wu_host_only", f"""<job_desc>
  <trickle_period>2</trickle_period>
  {host_task("daemon.sh", extra="<daemon/>")}
  {host_task("prep.sh", "in mid", "<fraction_done_filename>prep_progress</fraction_done_filename>"
             "<weight>2</weight>")}
  {host_task("finish.sh", "mid out", "<stdout_filename>finish.log</stdout_filename>")}
</job_desc>
""")
    result = wait_reported(job, timeout=90)
    stderr = result.stderr_out
    assert (result.exit_status, result.state) == (0, RESULT_STATE_FILES_UPLOADED), stderr
    assert wrapper_project.uploads[f"{job.result_name}_out"] == (
        b"A LINE\nB LINE\nprepared on the host\nfinished on the host\n")
    assert "no VM, no hypervisor, no broker" in stderr
    assert "hypervisor:" not in stderr and "hello" not in stderr
    assert re.search(r"task 2 finished on the host .*CPU (\d+\.\d) s", stderr)

    # the daemon ran beside the tasks and was killed at the end
    daemon_pid = int(re.search(r"\[daemon 1 stdout\] daemon pid (\d+)", stderr).group(1))
    assert re.search(r"daemon 1 ended .*signal 15", stderr), stderr
    assert not alive(daemon_pid)

    # the host tasks' CPU time (about a second in prep.sh) is in the cpu_time trickles
    values = wait_until(lambda: cpu_trickle_values(wrapper_project, job.result_name) or None,
                        30, "the cpu_time trickles")
    assert values == sorted(values)
    assert values[-1] >= 0.5, values


def test_suspend_resume_and_abort_of_a_host_task_leave_no_process(submit_host, wrapper_client,
                                                                   wrapper_project):
    job = submit_host("wu_host_ticker", f"""<job_desc>
  {host_task("daemon.sh", extra="<daemon/>")}
  {host_task("ticker.sh")}
</job_desc>
""")
    job.wait_log(r"task 2 started on the host", timeout=60)
    slot = job.slot_dir()
    pids_file = slot / "ticker.pids"
    wait_until(lambda: pids_file.exists() and len(pids_file.read_text().split()) == 2, 10,
               "the ticker's pids")
    leader, child = (int(p) for p in pids_file.read_text().split())
    daemon = int(re.search(r"daemon pid (\d+)", job.wait_log(r"daemon pid \d+", 10)).group(1))
    wrapper_pid = job.pid()

    wrapper_client.task_op(wrapper_project.url, job.result_name, "suspend")
    wait_until(lambda: state_of(leader) == "T" and state_of(child) == "T"
               and state_of(daemon) == "T", 15, "the host tasks' groups to stop")
    ticks = (slot / "ticks").read_text()
    time.sleep(1.0)
    assert (slot / "ticks").read_text() == ticks, "the host task ticked while suspended"

    wrapper_client.task_op(wrapper_project.url, job.result_name, "resume")
    wait_until(lambda: (slot / "ticks").read_text() != ticks, 15, "the host task to go on")
    assert state_of(child) != "T"

    wrapper_client.task_op(wrapper_project.url, job.result_name, "abort")
    wait_until(lambda: not any(alive(p) for p in (wrapper_pid, leader, child, daemon)), 30,
               "the wrapper and every host process to end after the abort")
    result = wait_reported(job, timeout=60)
    assert result.exit_status != 0


@pytest.mark.qemu
def test_mixed_job_hands_files_host_to_guest_to_host(submit_host, wrapper_project):
    job = submit_host("wu_host_mixed", f"""<vm_job>
  <image>vm_image.qcow2</image>
  <hypervisor>qemu</hypervisor>
  <boot_timeout>180</boot_timeout>
  <trickle_period>0</trickle_period>
  <copy_to_guest><logical_name>mid</logical_name><guest_path>input.txt</guest_path></copy_to_guest>
  <copy_from_guest><guest_path>output.txt</guest_path><logical_name>guest_out</logical_name></copy_from_guest>
  {host_task("prep.sh", "in mid")}
  <task><application>/bin/sh</application>
    <command_line>-c 'sed "s/^/guest: /" input.txt > output.txt'</command_line></task>
  {host_task("finish.sh", "guest_out out")}
</vm_job>
""")
    result = wait_reported(job, timeout=240)
    stderr = result.stderr_out
    assert (result.exit_status, result.state) == (0, RESULT_STATE_FILES_UPLOADED), stderr
    assert wrapper_project.uploads[f"{job.result_name}_out"] == (
        b"guest: A LINE\nguest: B LINE\nguest: prepared on the host\nfinished on the host\n")
    steps = ["task 1 finished on the host", "copied mid into the guest",
             "task 2 finished in the guest", "copied output.txt out of the guest",
             "task 3 started on the host", "task 3 finished on the host"]
    positions = [stderr.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), (positions, stderr)
    assert stderr.count("said hello") == 1


def test_quit_of_a_host_only_job_reruns_only_the_unfinished_task(submit_host, wrapper_client,
                                                                  wrapper_project):
    job = submit_host("wu_host_quit", f"""<job_desc>
  {host_task("prep.sh", "in mid")}
  {host_task("gate.sh", "mid out", "<checkpoint_filename>gate_checkpoint</checkpoint_filename>")}
</job_desc>
""")
    # the client quits only a task that has checkpointed (else it just suspends it)
    text = job.wait_log(r"task 2: /bin/sh checkpointed", timeout=60)
    gate = int(re.search(r"gate pid (\d+)", text).group(1))
    wait_until(lambda: job.client.task(job.result_name).checkpoint_cpu_time > 0, 15,
               "the client to learn of the checkpoint")
    slot, first_wrapper = job.slot_dir(), job.pid()
    try:
        wrapper_client.set_leave_apps_in_memory(False)
        wrapper_client.task_op(wrapper_project.url, job.result_name, "suspend")  # <quit/>
        try:
            wait_until(lambda: not alive(first_wrapper) and not alive(gate), 30,
                       "the wrapper and its host task to end on quit")
        except TimeoutError as error:
            raise AssertionError(f"{error}; stderr.txt:\n{job.stderr()[-3000:]}\n"
                                 f"client log:\n{wrapper_client.log_tail(3000)}") from None
    finally:
        wrapper_client.set_leave_apps_in_memory(True)
    wrapper_client.task_op(wrapper_project.url, job.result_name, "resume")
    job.wait_log(r"continuing with task 2", timeout=60)
    job.wait_log(r"gate pid \d+", timeout=30, count=2)
    (slot / "gate_open").touch()
    result = wait_reported(job, timeout=60)
    assert (result.exit_status, result.state) == (0, RESULT_STATE_FILES_UPLOADED), result.stderr_out
    assert result.stderr_out.count("task 1 started on the host") == 1
    assert result.stderr_out.count("task 2 started on the host") == 2
    assert wrapper_project.uploads[f"{job.result_name}_out"] == (
        b"B LINE\nA LINE\nprepared on the host\n")

"""vmwrapper under the real BOINC client with the real QEMU appliance and embedded broker.

Boots are the expensive part (TCG, several seconds each), so scenarios that
can share a VM do: one job is suspended, resumed, quit (after a checkpoint)
and restarted before it finishes; one is killed with SIGKILL, restarted by
the client, then aborted. The failure cases run side by side.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import time

import pytest

from tests.integration.wrapper.conftest import kill_qemus_under, processes_in
from tests.polling import wait_until as poll_until
from vmwrapper.boinc.exitcodes import ExitStatus
from vmwrapper.hypervisor import procinfo
from vmwrapper.testing.scheduler_protocol import RESULT_STATE_FILES_UPLOADED

pytestmark = [pytest.mark.boinc_client, pytest.mark.qemu]

#: Polls every 0.2 s: many of these predicates ask the client through boinccmd.
wait_until = functools.partial(poll_until, interval=0.2)

#: A guest task that works TICKS seconds, one line per second, with a progress file;
#: its tick counter lives in the guest's memory only.
TICK_TASK = """
  <task>
    <application>/bin/sh</application>
    <command_line>-c 'i=0; while [ $i -lt {ticks} ]; do i=$((i+1)); echo tick $i; awk "BEGIN {{print $i/{ticks}}}" > progress; sleep 1; done; cat input.txt > output.txt; echo ticks=$i >> output.txt'</command_line>
    <fraction_done_filename>progress</fraction_done_filename>
  </task>"""


def job_xml(task: str = TICK_TASK.format(ticks=10), *, image: str = "vm_image.qcow2",
            boot_timeout: float = 180, trickle_period: float = 0,
            checkpoint_interval: float = 600, output: bool = True) -> str:
    copy_out = ("<copy_from_guest><guest_path>output.txt</guest_path>"
                "<logical_name>out</logical_name></copy_from_guest>") if output else ""
    return f"""<vm_job>
  <image>{image}</image>
  <hypervisor>qemu</hypervisor>
  <boot_timeout>{boot_timeout}</boot_timeout>
  <trickle_period>{trickle_period}</trickle_period>
  <minimum_checkpoint_interval>{checkpoint_interval}</minimum_checkpoint_interval>
  <copy_to_guest><logical_name>in</logical_name><guest_path>input.txt</guest_path></copy_to_guest>
  {copy_out}
  {task}
</vm_job>
"""


def ticks_by_process(stderr: str) -> list[tuple[int, list[int]]]:
    """``[(wrapper pid, [tick numbers it logged]), ...]`` in order of first appearance."""
    runs: dict[int, list[int]] = {}
    for pid, tick in re.findall(r"\((\d+)\): \[task 1 stdout\] tick (\d+)", stderr):
        runs.setdefault(int(pid), []).append(int(tick))
    return list(runs.items())


def last_tick(stderr: str) -> int:
    ticks = re.findall(r"\[task 1 stdout\] tick (\d+)", stderr)
    return int(ticks[-1]) if ticks else 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_reported(job, timeout: float):
    """The server's record of *job*'s result; asks for an RPC whenever the client has one
    ready (failed and aborted results otherwise wait for a back-off or a later RPC)."""
    deadline = time.monotonic() + timeout
    asked = 0.0
    while True:
        result = job.server.results.get(job.result_name)
        if result is not None:
            return result
        task = job.client.task(job.result_name)
        if task is not None and task.ready_to_report and time.monotonic() - asked > 5:
            job.client.update_project(job.server.url)
            asked = time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{job.name} not reported within {timeout:g} s; client task: "
                               f"{task.fields if task else None}\nstderr.txt:\n{job.stderr()[-2000:]}")
        time.sleep(0.5)


def test_job_suspends_quits_resumes_and_succeeds(submit, wrapper_client, wrapper_project):
    ticks = 40
    job = submit("wu_main", job_xml(TICK_TASK.format(ticks=ticks), trickle_period=8,
                                    checkpoint_interval=8))
    job.wait_log(r"tick 3\b", timeout=150)
    slot = job.slot_dir()
    first_pid = job.pid()
    [qemu] = job.vm_processes()

    # suspend (the volunteer keeps apps in memory): the VM is paused, no tick, no CPU
    job.client.task_op(wrapper_project.url, job.result_name, "suspend")
    job.wait_log("pausing the VM", timeout=15)
    time.sleep(1.5)
    tick, cpu = last_tick(job.stderr()), cpu_seconds(qemu)
    time.sleep(3)
    assert last_tick(job.stderr()) == tick, "the guest kept working while suspended"
    assert cpu_seconds(qemu) - cpu < 0.5, "the paused VM kept using CPU"
    job.client.task_op(wrapper_project.url, job.result_name, "resume")
    job.wait_log(rf"tick {tick + 2}\b", timeout=30)

    # after a checkpoint, preemption means <quit/>: the VM is saved and the wrapper exits
    job.wait_log("checkpoint saved", timeout=60)
    wrapper_client.set_leave_apps_in_memory(False)
    job.client.task_op(wrapper_project.url, job.result_name, "suspend")
    job.wait_log("save and exit", timeout=30)
    wait_until(lambda: not procinfo.is_running(first_pid), 60, "the wrapper to exit on quit")
    assert processes_in(slot / "vm") == [], "QEMU survived the quit"
    assert (slot / "vmwrapper_state.json").exists()
    quit_tick = last_tick(job.stderr())
    assert 3 < quit_tick < ticks

    # the client restarts it: the VM continues from the checkpoint, not from tick 1
    job.client.task_op(wrapper_project.url, job.result_name, "resume")
    job.wait_log("continued from the checkpoint", timeout=120)
    assert len(job.vm_processes()) == 1
    result = wait_reported(job, timeout=240)
    assert (result.exit_status, result.state) == (0, RESULT_STATE_FILES_UPLOADED), result.stderr_out
    assert wrapper_project.uploads[f"{job.result_name}_out"] == b"hello\nworld\nticks=%d\n" % ticks

    runs = ticks_by_process(result.stderr_out)
    assert len(runs) == 2, runs
    (_, before), (_, after) = runs
    assert before[0] == 1 and after[-1] == ticks
    assert after[0] > 1 and after[0] >= before[-1] - 2, (
        f"work was redone after the restore: {before[-3:]} then {after[:3]}")

    # one scheduler request carries pending trickle files in directory order: sort by their time
    trickles = sorted((t.message for t in wrapper_project.trickles
                       if t.message.result_name == job.result_name), key=lambda m: m.time)
    assert trickles and {t.variety for t in trickles} == {"cpu_time"}
    values = [float(re.search(r"<cpu_time>([\d.]+)</cpu_time>", t.body).group(1))
              for t in trickles]
    assert values == sorted(values) and values[-1] > 1.0
    assert len(values) >= 3  # periodic ones in both runs, and the final one
    assert processes_in(slot / "vm") == []


def test_sigkilled_wrapper_restarts_with_one_vm_then_abort_leaves_nothing(
        submit, wrapper_client, wrapper_project):
    job = submit("wu_kill", job_xml(TICK_TASK.format(ticks=600)))
    job.wait_log(r"tick 2\b", timeout=150)
    slot = job.slot_dir()
    first_pid = job.pid()
    os.kill(first_pid, signal.SIGKILL)
    wait_until(lambda: (job.pid() or first_pid) != first_pid, 90, "the client to restart the app")
    job.wait_log("the guest agent said hello|continued from the checkpoint", timeout=150, count=2)
    assert len(job.vm_processes()) == 1, "exactly one VM after the restart"
    second_pid = job.pid()

    wrapper_client.task_op(wrapper_project.url, job.result_name, "abort")
    wait_until(lambda: not procinfo.is_running(second_pid), 60, "the wrapper to exit on abort")
    assert processes_in(slot) == [] and processes_in(wrapper_client.data_dir) == []
    assert not (slot / "vm").exists() and not (slot / "vm_userdata.iso").exists()
    result = wait_reported(job, timeout=60)
    assert result.exit_status != 0


FAILURES = {
    "wu_badjob": ("<vm_job><memory_size_mb>lots</memory_size_mb><bogus/></vm_job>",
                  ExitStatus.INIT_FAILURE, "bogus"),
    "wu_noimage": (job_xml(image="missing.qcow2"), ExitStatus.INIT_FAILURE, "missing.qcow2"),
    "wu_nohello": (job_xml(boot_timeout=2), ExitStatus.CHILD_FAILED, "did not say hello"),
    "wu_cmdfail": (job_xml("<task><application>/bin/sh</application>"
                           "<command_line>-c 'echo failing; exit 3'</command_line></task>"),
                   ExitStatus.CHILD_FAILED, "exit status 3"),
    "wu_nooutput": (job_xml("<task><application>/bin/true</application></task>"),
                    ExitStatus.SUB_TASK_FAILURE, "did not write its output file output.txt"),
}


def test_failures_end_with_boinc_status_message_and_no_orphan(submit, wrapper_client,
                                                             wrapper_project):
    jobs = {name: submit(name, text, fetch=False) for name, (text, _, _) in FAILURES.items()}
    wrapper_client.update_project(wrapper_project.url)
    try:
        for name, (_, status, words) in FAILURES.items():
            result = wait_reported(jobs[name], timeout=240)
            assert result.exit_status == int(status), f"{name}: {result.stderr_out}"
            assert words in result.stderr_out, f"{name}: {result.stderr_out}"
    finally:
        leftovers = kill_qemus_under(wrapper_client.data_dir)
    assert leftovers == [], "QEMU processes outlived their tasks"
    assert list((wrapper_client.data_dir / "slots").glob("*/vm/*")) == []


def test_client_death_saves_the_vm_and_the_restarted_client_resumes_it(
        wrapper_project, appliance, tmp_path_factory):  # noqa: F811
    from tests.integration.wrapper.conftest import VMJob, install_wrapper
    from vmwrapper.testing.client import BoincClient
    from vmwrapper.testing.project_server import AUTHENTICATOR

    data_dir = tmp_path_factory.mktemp("wrapper-boinc-death")
    clients = [BoincClient(data_dir)]
    try:
        install_wrapper(clients[0], wrapper_project, appliance)
        rpcs = len(wrapper_project.rpcs)
        clients[0].start(attach=(wrapper_project.url, AUTHENTICATOR))
        wrapper_project.wait_for_rpc(rpcs, timeout=60)
        wrapper_project.add_workunit("wu_death", app_name="vmwrapper", output_files=("out",),
                                     input_files={"in": b"alive\n",
                                                  "job.xml": job_xml(TICK_TASK.format(ticks=25)).encode()})
        clients[0].update_project(wrapper_project.url)
        job = VMJob(wrapper_project, clients[0], "wu_death")
        job.wait_log(r"tick 3\b", timeout=150)
        slot, pid = job.slot_dir(), job.pid()

        clients[0].kill_client_only()
        wait_until(lambda: not procinfo.is_running(pid), 60, "the wrapper to notice the client died")
        text = (slot / "stderr.txt").read_text()
        assert "the BOINC client has exited" in text and "checkpoint saved" in text
        assert processes_in(slot / "vm") == [], "QEMU survived the wrapper"

        clients.append(BoincClient(data_dir))
        clients[1].start()
        job.client = clients[1]
        job.wait_log("continued from the checkpoint", timeout=120)
        result = wait_reported(job, timeout=180)
        assert result.exit_status == 0, result.stderr_out
        assert wrapper_project.uploads["wu_death_0_out"] == b"alive\nticks=25\n"
        (_, before), (_, after) = ticks_by_process(result.stderr_out)
        assert after[0] > 1 and after[0] >= before[-1] - 2
    finally:
        for client in clients:
            client.stop()
        kill_qemus_under(data_dir)

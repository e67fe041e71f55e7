"""Control messages from the real client reach the test app: suspend, resume, quit, abort.

The client keeps a task in memory (``<suspend/>``) only before its first
checkpoint or with ``leave_apps_in_memory``; otherwise suspension is
``<quit/>`` and a later restart in the same slot (boinc_protocol.md 4.2).
"""

from __future__ import annotations

import pytest

from vmwrapper.testing.scheduler_protocol import RESULT_STATE_ABORTED

pytestmark = pytest.mark.boinc_client

#: The issue's bound for a control message to reach the app, seconds.
CONTROL_LATENCY = 2.0
#: The client SIGKILLs an app still alive this long after <quit/> or <abort/>.
CLIENT_GRACE = 60.0


def suspend_and_resume(job, timings, label: str, control) -> None:
    """``control(op)`` suspends then resumes the job; both must reach the app in time."""
    sent = control("suspend")
    suspend = job.wait_event("suspend", timeout=15)
    assert timings.add(f"{label}: suspend -> app", suspend["t"] - sent) < CONTROL_LATENCY
    sent = control("resume")
    resume = job.wait_event("resume", timeout=15)
    assert timings.add(f"{label}: resume -> app", resume["t"] - sent) < CONTROL_LATENCY
    assert suspend["pid"] == resume["pid"]  # stayed in memory


def test_task_suspend_before_any_checkpoint_reaches_app(new_job, timings):
    job = new_job("--hold")
    job.dispatch()
    suspend_and_resume(job, timings, "task op, no checkpoint", job.task_op)
    assert "quit" not in [e["event"] for e in job.events()]


def test_run_mode_never_and_always_reach_app(new_job, boinc_client, timings):
    job = new_job("--hold")
    job.dispatch()

    def run_mode(op: str) -> float:
        import time

        boinc_client.set_run_mode("never" if op == "suspend" else "always")
        return time.time()

    try:
        suspend_and_resume(job, timings, "run mode", run_mode)
    finally:
        boinc_client.set_run_mode("always")


def test_suspend_after_checkpoint_with_leave_apps_in_memory_reaches_app(
        new_job, boinc_client, timings):
    boinc_client.set_leave_apps_in_memory(True)
    try:
        job = new_job("--hold --checkpoint")
        assert job.dispatch()["leave_apps_in_memory"] is True
        job.wait_client_saw_checkpoint()
        suspend_and_resume(job, timings, "task op, checkpointed, leave in memory", job.task_op)
        assert "quit" not in [e["event"] for e in job.events()]
    finally:
        boinc_client.set_leave_apps_in_memory(False)


def test_suspend_after_checkpoint_quits_and_resume_restarts(new_job, timings):
    job = new_job("--hold --checkpoint")
    first = job.dispatch()
    assert first["leave_apps_in_memory"] is False
    job.wait_client_saw_checkpoint()
    checkpoint = job.wait_event("checkpoint", timeout=1)

    sent = job.task_op("suspend")
    quit_event = job.wait_event("quit", timeout=15)
    assert timings.add("task op, checkpointed: suspend -> <quit/>", quit_event["t"] - sent) < CONTROL_LATENCY
    gone = job.wait_pid_gone(first["pid"], CLIENT_GRACE)
    timings.add("quit -> app exited", gone - quit_event["t"])
    assert "suspend" not in [e["event"] for e in job.events()]

    starts = len(job.events())
    sent = job.task_op("resume")
    again = job.wait_event("start", timeout=30, after=starts)
    timings.add("resume -> app restarted", again["t"] - sent)
    assert again["pid"] != first["pid"]
    assert again["restarted"] is True
    assert again["work_done"] >= checkpoint["work_done"]


def test_abort_makes_app_exit_and_result_reported_aborted(
        new_job, boinc_client, boinc_project, timings):
    job = new_job("--hold")
    start = job.dispatch()
    sent = job.task_op("abort")
    abort = job.wait_event("abort", timeout=15)
    assert timings.add("task op: abort -> app", abort["t"] - sent) < CONTROL_LATENCY
    gone = job.wait_pid_gone(start["pid"], CLIENT_GRACE)
    timings.add("abort -> app exited", gone - abort["t"])
    # An aborted result waits for the next RPC (report_immediately covers finished ones).
    boinc_client.wait_for_task(job.result_name, lambda t: t.ready_to_report, timeout=15,
                               what="ready to report")
    boinc_client.update_project(boinc_project.url)
    result = boinc_project.wait_for_result(job.result_name, timeout=30)
    assert result.state == RESULT_STATE_ABORTED
    assert result.exit_status != 0

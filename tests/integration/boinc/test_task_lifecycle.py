"""A test app using vmwrapper.boinc, run by the real BOINC client from start to report."""

from __future__ import annotations

import pytest

from vmwrapper.testing.scheduler_protocol import RESULT_STATE_FILES_UPLOADED

pytestmark = pytest.mark.boinc_client


def test_app_reports_progress_checkpoints_and_finishes(new_job, boinc_client, boinc_project):
    job = new_job("--secs 8 --checkpoint")
    start = job.dispatch()
    assert start["result_name"] == job.result_name
    assert start["standalone"] is False
    assert start["checkpoint_period"] == pytest.approx(2.0)
    # The harness asks for <no_priority_change/>: no nice 19 / SCHED_IDLE on a shared machine.
    assert (start["nice"], start["sched_idle"]) == (0, False)

    # Progress as the client sees it, through GUI RPC.
    running = boinc_client.wait_for_task(
        job.result_name, lambda t: 0.05 < t.fraction_done < 1.0, timeout=20,
        what="a fraction done between 0 and 1",
    )
    assert running.active_task_state == "EXECUTING"
    assert running.pid == start["pid"]

    # The checkpoint reached the client: it writes boinc_task_state.xml in the slot.
    job.wait_client_saw_checkpoint()

    result = boinc_project.wait_for_result(job.result_name, timeout=60)
    assert (result.exit_status, result.state) == (0, RESULT_STATE_FILES_UPLOADED)
    assert result.final_elapsed_time >= 8
    assert boinc_project.uploads[f"{job.result_name}_out"] == (
        b"processed:" + f"input of {job.name}\n".encode()
    )
    assert [e["event"] for e in job.events()].count("start") == 1

"""A ``copilot pilot`` process told to stop (SIGTERM, as the wrapper's agent does when a task
ends) gives its running job back: the job is killed and its lease released, so the job is
re-queued at once without spending an attempt (not by lease expiry, not as a failure), and
the pilot exits without a traceback. Real broker, real ``copilot serve``, real pilot
processes, on loopback.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.integration.copilot.conftest import wait_for
from tests.integration.copilot_server import CopilotServer


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def copilot_server(tmp_path):
    server = CopilotServer(tmp_path)
    yield server
    server.close()


def test_a_terminated_pilot_releases_its_running_job_and_the_job_keeps_its_attempt(
        copilot_server, tmp_path):
    """``retries: 0``: the give-back must not spend the only attempt; a second pilot runs it."""
    marker = tmp_path / "first-run"
    job = copilot_server.client.submit({
        "shell": f"echo $$ > pid; if [ ! -e {marker} ]; then touch {marker}; exec sleep 300; fi;"
                 " echo finished > out.txt",
        "outputs": ["out.txt"], "retries": 0}, {})
    pilot = copilot_server.start_pilot("--cores", "1")
    pid_file = wait_for(lambda: next((tmp_path / "pilot").glob("job-*/pid"), None), 60,
                        "the job to start")
    job_pid = int(wait_for(lambda: pid_file.read_text().strip(), 10, "the job's pid"))
    assert copilot_server.client.job(job["id"])["state"] == "running"

    pilot.send_signal(signal.SIGTERM)
    assert pilot.wait(30) == 0
    assert not alive(job_pid), "the job outlived its pilot"
    view = copilot_server.client.job(job["id"])
    log = (tmp_path / "pilot.log").read_text()
    assert view["state"] == "queued", (view, log)
    agent = copilot_server.pilot_id
    assert view["history"][-1]["detail"] == f"released by {agent}: the pilot is shutting down"
    assert "went silent" not in str(view["history"]) and "failed" not in str(view["history"])
    assert view["attempts"] == 0 and view["max_attempts"] == 1
    assert "Traceback" not in log and "Unhandled error" not in log, log
    assert copilot_server.vm.passcode not in log
    assert os.listdir(tmp_path / "pilot") == []  # the job's directory is gone too

    second = copilot_server.start_pilot("--cores", "1", "--exit-when-idle", "1")
    assert second.wait(60) == 0
    view = copilot_server.client.job(job["id"])
    assert view["state"] == "done", (view, (tmp_path / "pilot.log").read_text())
    assert view["attempts"] == 1
    assert [e["detail"] for e in view["history"]][-2:] == [
        f"attempt 1 started on {agent}", "attempt 1 succeeded"]
    assert "Traceback" not in (tmp_path / "pilot.log").read_text()

"""A ``copilot pilot`` process told to stop (SIGTERM, as the wrapper's agent does when a task
ends) gives its running job back: the job is killed and re-queued by the pilot's own report,
not by lease expiry. Real broker, real ``copilot serve``, real pilot process, on loopback.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.copilot_server import CopilotServer


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(0.1)


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


def test_a_terminated_pilot_gives_its_running_job_back_and_it_is_queued_again(
        copilot_server, tmp_path):
    job = copilot_server.client.submit(
        {"shell": "echo $$ > pid; exec sleep 300", "outputs": ["pid"], "retries": 1}, {})
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
    assert "given back by the pilot" in view["history"][-1]["detail"], view["history"]
    assert "went silent" not in str(view["history"])
    assert view["attempts"] == 1 and view["max_attempts"] == 2
    assert copilot_server.vm.passcode not in log
    assert os.listdir(tmp_path / "pilot") == []  # the job's directory is gone too

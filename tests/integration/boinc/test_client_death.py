"""The test app notices when its client is killed (runs its own client: it kills it)."""

from __future__ import annotations

import time

import pytest

from tests.integration.boinc.jobs import Job, install_test_app, keep_artifacts
from vmwrapper.testing.client import BoincClient
from vmwrapper.testing.project_server import AUTHENTICATOR, ProjectServer

pytestmark = pytest.mark.boinc_client

#: How soon the app must notice: the runtime checks the client's PID every 10 s.
DETECTION_BOUND = 15.0


def test_app_detects_killed_client(request, tmp_path, timings):
    server = ProjectServer().start()
    request.addfinalizer(server.stop)
    client = BoincClient(tmp_path / "client")
    request.addfinalizer(lambda: keep_artifacts(request.session, client, tmp_path, "client-death"))
    request.addfinalizer(client.stop)
    install_test_app(client, server)
    job = Job(server, client, "client_death", tmp_path, "--hold")  # queued before attach
    client.start(attach=(server.url, AUTHENTICATOR))
    start = job.wait_event("start", timeout=60)
    timings.add("client start -> app running", start["t"] - client.started_at)

    killed_at = time.time()
    client.kill_client_only()
    died = job.wait_event("client_died", timeout=DETECTION_BOUND + 5)
    assert timings.add("client SIGKILL -> app notices", died["t"] - killed_at) < DETECTION_BOUND
    assert died["pid"] == start["pid"]
    job.wait_pid_gone(start["pid"], timeout=10)
    assert client.app_pids() == []

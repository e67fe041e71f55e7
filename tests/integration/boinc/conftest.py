"""Fixtures for the real-BOINC-client tests: one project server and one client per session.

A client cycle is slow (start to app running ~13 s), so every test here
shares ``boinc_client``: a real ``boinc`` attached to ``boinc_project`` that
has made its first scheduler RPC. Each test adds its own work unit through
``new_job`` and the client fetches it on ``--project URL update``; jobs left
unfinished are aborted after the test. Tests that kill the client build their
own with ``BoincClient`` and stop it in a finalizer.

At session end the measured latencies go to ARTIFACTS/boinc_client_timings.json;
if a test failed the client log and the app event files are copied there too.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import ARTIFACTS
from tests.integration.boinc.jobs import Job, Timings, install_test_app, keep_artifacts
from vmwrapper.testing.client import BOINC, BoincClient
from vmwrapper.testing.project_server import AUTHENTICATOR, ProjectServer

#: Checkpoint period the client gives apps (pref disk_interval), seconds.
CHECKPOINT_PERIOD = 2.0


def _boinc_available() -> str | None:
    try:
        subprocess.run([BOINC, "--version"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the BOINC client {BOINC} cannot run ({exc}); scripts/bootstrap.sh installs boinc-client"
    return None


@pytest.fixture(scope="session")
def timings():
    figures = Timings()
    yield figures
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "boinc_client_timings.json").write_text(json.dumps(figures.figures, indent=2))


@pytest.fixture(scope="session")
def boinc_project():
    with ProjectServer() as server:
        yield server


@pytest.fixture(scope="session")
def events_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("boinc-events")


@pytest.fixture(scope="session")
def boinc_client(request, boinc_project, tmp_path_factory, events_dir):
    """A real client attached to the session's project, after its first RPC."""
    missing = _boinc_available()
    if missing:
        pytest.skip(missing)
    client = BoincClient(tmp_path_factory.mktemp("boinc-shared"), checkpoint_period=CHECKPOINT_PERIOD)
    request.addfinalizer(lambda: keep_artifacts(request.session, client, events_dir, "shared"))
    request.addfinalizer(client.stop)
    install_test_app(client, boinc_project)
    rpcs_before = len(boinc_project.rpcs)
    client.start(attach=(boinc_project.url, AUTHENTICATOR))
    boinc_project.wait_for_rpc(rpcs_before, timeout=60)
    return client


@pytest.fixture
def new_job(request, boinc_project, boinc_client, events_dir):
    """Factory: ``new_job(args)`` adds a work unit of the test app for this test."""
    jobs: list[Job] = []
    stem = re.sub(r"[^A-Za-z0-9]+", "_", request.node.name).strip("_")[:40]

    def make(args: str) -> Job:
        job = Job(boinc_project, boinc_client, f"{stem}_{len(jobs)}", events_dir, args)
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        job.discard()

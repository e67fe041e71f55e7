"""The real thing: vmwrapper as a BOINC app under the real client, booting the QEMU appliance.

Session-wide: the appliance image (the hypervisor suite's cached build, never a
second one), one test project server and one real BOINC client on which the
wrapper is installed as an anonymous-platform app. Each work unit carries its
own ``job.xml`` as an input file (the wrapper resolves the logical name
``job.xml`` in the slot), so one app version serves every scenario.

Every process is ours to kill: the client and everything in its data dir are
SIGKILLed at session end (``BoincClient.stop``), and QEMU processes whose
command line names the data dir are killed too, even when a test fails.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from tests.conftest import ARTIFACTS, ROOT
from tests.integration.hypervisor.harness_qemu import appliance, processes_in  # noqa: F401
from vmwrapper.testing.client import BoincClient
from vmwrapper.testing.project_server import AUTHENTICATOR, ProjectServer

APP_NAME = "vmwrapper"
LAUNCHER = "vmwrapper_app.py"
IMAGE = "vm_image.qcow2"
#: The client's checkpoint period (pref disk_interval) for the wrapper, seconds.
CHECKPOINT_PERIOD = 4.0


def launcher_program() -> bytes:
    """The app's main program: this virtualenv's Python running ``vmwrapper.cli``."""
    return (f"#!{sys.executable}\n# API_VERSION_7.20.0\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
            "from vmwrapper.cli import main\nsys.exit(main())\n").encode()


def kill_qemus_under(directory: pathlib.Path) -> list[int]:
    """SIGKILL every live process whose command line names a file under *directory*."""
    pids = processes_in(directory)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def install_wrapper(client: BoincClient, server: ProjectServer, built) -> None:
    """Install vmwrapper on *client* for *server*'s project; the image links to the appliance."""
    project_dir = client.install_app(server.url, APP_NAME,
                                     {LAUNCHER: launcher_program(), IMAGE: b"placeholder"},
                                     LAUNCHER, avg_ncpus=1.0)
    image = project_dir / IMAGE
    image.unlink()
    image.symlink_to(built.qcow2)


@pytest.fixture(scope="session")
def wrapper_project():
    with ProjectServer() as server:
        yield server


@pytest.fixture(scope="session")
def wrapper_client(request, wrapper_project, appliance, tmp_path_factory):  # noqa: F811
    """A real client with vmwrapper installed (the image is a link to the cached appliance)."""
    data_dir = tmp_path_factory.mktemp("wrapper-boinc")
    client = BoincClient(data_dir, leave_apps_in_memory=True,
                         checkpoint_period=CHECKPOINT_PERIOD)

    def stop() -> None:
        if request.session.testsfailed and client.log_path.exists():
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            client.save_log(ARTIFACTS / "wrapper-client.log")
        client.stop()
        kill_qemus_under(data_dir)

    request.addfinalizer(stop)
    install_wrapper(client, wrapper_project, appliance)
    rpcs = len(wrapper_project.rpcs)
    client.start(attach=(wrapper_project.url, AUTHENTICATOR))
    wrapper_project.wait_for_rpc(rpcs, timeout=60)
    return client


@dataclass
class VMJob:
    """One work unit of the wrapper app: its job.xml, its slot and what it logged."""

    server: ProjectServer
    client: BoincClient
    name: str

    @property
    def result_name(self) -> str:
        return f"{self.name}_0"

    def slot_dir(self) -> pathlib.Path | None:
        task = self.client.task(self.result_name)
        if task is None or "slot" not in task.fields:
            return None
        return self.client.data_dir / "slots" / task.fields["slot"]

    def stderr(self) -> str:
        slot = self.slot_dir()
        try:
            return (slot / "stderr.txt").read_text(errors="replace") if slot else ""
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float, count: int = 1) -> str:
        """Until stderr.txt has *count* lines matching *pattern*; returns the text."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.stderr()
            if len(regex.findall(text)) >= count:
                return text
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {count}x {pattern!r} in stderr.txt within "
                                   f"{timeout:g} s; stderr.txt:\n{text[-3000:]}\n"
                                   f"client log:\n{self.client.log_tail(2000)}")
            time.sleep(0.2)

    def pid(self) -> int | None:
        task = self.client.task(self.result_name)
        return task.pid if task is not None else None

    def vm_processes(self) -> list[int]:
        slot = self.slot_dir()
        return processes_in(slot / "vm") if slot else []


@pytest.fixture
def submit(wrapper_project, wrapper_client):
    """``submit(name, job_xml, input)`` queues a work unit and makes the client fetch it.

    *extra_inputs* are more input files (logical name -> content), e.g. the host
    programs of ``<where>host</where>`` tasks. Tasks still running at teardown
    are aborted so the shared client is free for the next test.
    """
    jobs: list[VMJob] = []

    def make(name: str, job_xml: str, data: bytes = b"hello\nworld\n", fetch: bool = True,
             extra_inputs: Mapping[str, bytes] | None = None) -> VMJob:
        inputs = {"in": data, "job.xml": job_xml.encode(), **(extra_inputs or {})}
        wrapper_project.add_workunit(name, app_name=APP_NAME, output_files=("out",),
                                     input_files=inputs)
        job = VMJob(wrapper_project, wrapper_client, name)
        jobs.append(job)
        if fetch:
            wrapper_client.update_project(wrapper_project.url)
        return job

    yield make
    for job in jobs:
        task = wrapper_client.task(job.result_name)
        if task is not None and task.state not in ("uploaded", "aborted", "compute error"):
            try:
                wrapper_client.task_op(wrapper_project.url, job.result_name, "abort")
            except Exception:  # noqa: BLE001 - cleanup only
                pass

"""Jobs of the test app (apps/vmtest_app.py) on a real client, and their event logs.

A :class:`Job` is one work unit on the test project: the test app appends
JSON lines to an events file outside the slot, and tests block on them with
:meth:`Job.wait_event`. Timings tests report go into a :class:`Timings`;
:func:`keep_artifacts` saves logs and events when a session had failures.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.conftest import ARTIFACTS
from vmwrapper.testing import processes
from vmwrapper.testing.client import BoincClient, BoinccmdError
from vmwrapper.testing.project_server import ProjectServer

APP_NAME = "vmtest"
APP_FILE = "vmtest_app.py"
APP_SOURCE = pathlib.Path(__file__).parent / "apps" / APP_FILE


def app_program() -> bytes:
    """The test app with a shebang naming this virtualenv's Python."""
    source = APP_SOURCE.read_text()
    body = source.split("\n", 1)[1] if source.startswith("#!") else source
    return f"#!{sys.executable}\n{body}".encode()


def install_test_app(client: BoincClient, server: ProjectServer) -> None:
    client.install_app(server.url, APP_NAME, {APP_FILE: app_program()}, APP_FILE)


def keep_artifacts(session, client: BoincClient, events_dir: pathlib.Path | None,
                   label: str) -> None:
    """Copy the client log and app events to ARTIFACTS when the session had failures."""
    if not session.testsfailed:
        return
    target = ARTIFACTS / f"boinc-{label}"
    target.mkdir(parents=True, exist_ok=True)
    if client.log_path.exists():
        client.save_log(target / "client.log")
    if events_dir is not None and events_dir.exists():
        shutil.copytree(events_dir, target / "events", dirs_exist_ok=True)


@dataclass
class Timings:
    """Latencies measured by the real-client tests, written out at session end."""

    figures: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> float:
        self.figures.setdefault(name, []).append(round(seconds, 3))
        return seconds


class Job:
    """One work unit of the test app, from dispatch to its last event."""

    def __init__(self, server: ProjectServer, client: BoincClient, name: str,
                 events_dir: pathlib.Path, args: str) -> None:
        self.server = server
        self.client = client
        self.name = name
        self.events_path = events_dir / f"{name}.jsonl"
        self.workunit = server.add_workunit(
            name,
            app_name=APP_NAME,
            command_line=f"--events {self.events_path} {args}",
            input_files={"in": f"input of {name}\n".encode()},
        )
        self.result_name = self.workunit.result_name

    def events(self) -> list[dict]:
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        # The last line may be half written while we read.
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait_event(self, kind: str, timeout: float, after: int = 0,
                   predicate: Callable[[dict], bool] = lambda e: True) -> dict:
        """The first event ``kind`` among events number ``after`` and later."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events()[after:]:
                if event["event"] == kind and predicate(event):
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: no {kind!r} event within {timeout:g} s; events so far: "
                    f"{[e['event'] for e in self.events()]}\nclient log:\n"
                    f"{self.client.log_tail(1500)}"
                )
            time.sleep(0.05)

    def dispatch(self, timeout: float = 60) -> dict:
        """Make the client fetch this job now; returns the app's first start event."""
        self.client.update_project(self.server.url)
        return self.wait_event("start", timeout)

    def task_op(self, op: str) -> float:
        """Suspend, resume or abort the task; returns the time boinccmd returned."""
        self.client.task_op(self.server.url, self.result_name, op)
        return time.time()

    def slot_dir(self) -> pathlib.Path:
        task = self.client.task(self.result_name)
        if task is None or "slot" not in task.fields:
            raise AssertionError(f"{self.result_name} has no slot: {task}")
        return self.client.data_dir / "slots" / task.fields["slot"]

    def wait_client_saw_checkpoint(self, timeout: float = 10) -> pathlib.Path:
        """Until the client has recorded a checkpoint (it writes boinc_task_state.xml).

        The app's checkpoint reaches the client with its next status message,
        up to ~2 s after the app's ``checkpoint`` event; only then does
        preemption turn into ``<quit/>``.
        """
        self.wait_event("checkpoint", timeout)
        state = self.slot_dir() / "boinc_task_state.xml"
        self.client.wait_until(state.exists, timeout, f"{state} (the client noting the checkpoint)")
        return state

    def wait_pid_gone(self, pid: int, timeout: float) -> float:
        """Time when ``pid`` was seen gone (polled every 50 ms)."""
        left = processes.wait_until_gone([pid], timeout)
        if left:
            raise AssertionError(f"{self.name}: app PID {pid} still runs after {timeout:g} s")
        return time.time()

    def discard(self) -> None:
        """Abort the task if the client still runs it (test cleanup; errors ignored)."""
        try:
            task = self.client.task(self.result_name)
            if task is not None and task.state not in ("uploaded", "aborted", "compute error"):
                self.client.task_op(self.server.url, self.result_name, "abort")
        except (BoinccmdError, OSError, ValueError):
            pass

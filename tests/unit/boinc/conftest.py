"""Fixtures for the BOINC runtime API tests: a slot directory and the client's side.

The slot holds the ``init_data.xml`` captured from the real client (with our own
PID as ``client_pid``, so the client looks alive) and a real 8192-byte
``boinc_mmap_file``; the test plays the client through a second mapping of the
same file. Time is a :class:`twisted.internet.task.Clock`.
"""

from __future__ import annotations

import os
import pathlib
import re

import pytest
from twisted.internet.task import Clock

from vmwrapper.boinc.runtime import BoincRuntime, RuntimeListener
from vmwrapper.boinc.shmem import MMAP_FILE_NAME, SharedMemory

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "boinc"


def captured_init_data(**overrides: object) -> bytes:
    """The captured ``init_data.xml`` with some tags' text replaced."""
    text = (DATA / "init_data.xml").read_text()
    for tag, value in overrides.items():
        text, count = re.subn(rf"<{tag}>[^<]*</{tag}>", f"<{tag}>{value}</{tag}>", text)
        assert count == 1, f"no <{tag}> in the captured init_data.xml"
    return text.encode()


class RecordingListener(RuntimeListener):
    """Records every call as ``(event, args)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[object, ...]]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def suspend(self) -> None:
        self.events.append(("suspend", ()))

    def resume(self) -> None:
        self.events.append(("resume", ()))

    def quit(self) -> None:
        self.events.append(("quit", ()))

    def abort(self) -> None:
        self.events.append(("abort", ()))

    def reread_app_info(self) -> None:
        self.events.append(("reread_app_info", ()))

    def network_available(self) -> None:
        self.events.append(("network_available", ()))

    def network_suspended_changed(self, suspended: bool) -> None:
        self.events.append(("network_suspended_changed", (suspended,)))

    def no_heartbeat(self) -> None:
        self.events.append(("no_heartbeat", ()))

    def client_died(self) -> None:
        self.events.append(("client_died", ()))

    def trickle_down(self, body: str, path: pathlib.Path) -> None:
        self.events.append(("trickle_down", (body, path)))


class CpuTime:
    """A settable CPU-time source for the runtime; raises ``error`` when set."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.error: Exception | None = None

    def __call__(self) -> float:
        if self.error is not None:
            raise self.error
        return self.seconds


@pytest.fixture
def slot(tmp_path: pathlib.Path) -> pathlib.Path:
    """A slot directory as the client prepares it (init data + zeroed mmap file)."""
    (tmp_path / "init_data.xml").write_bytes(captured_init_data(client_pid=os.getpid()))
    SharedMemory.create(tmp_path / MMAP_FILE_NAME).close()
    return tmp_path


@pytest.fixture
def client(slot: pathlib.Path):
    """The client's view of the slot's shared memory."""
    shmem = SharedMemory.open(slot / MMAP_FILE_NAME)
    yield shmem
    shmem.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def listener() -> RecordingListener:
    return RecordingListener()


@pytest.fixture
def cpu() -> CpuTime:
    return CpuTime()


@pytest.fixture
def exits() -> list[int]:
    """Statuses the runtime tried to exit with (the process stays alive)."""
    return []


@pytest.fixture
def make_runtime(slot, clock, listener, cpu, exits):
    """Build a runtime on the slot, with the test's clock, listener, CPU source and exit."""

    def make(slot_dir: pathlib.Path | None = None) -> BoincRuntime:
        return BoincRuntime(
            slot if slot_dir is None else slot_dir,
            clock=clock,
            cpu_time=cpu,
            listener=listener,
            exit=exits.append,
        )

    return make


@pytest.fixture
def runtime(make_runtime):
    """An initialised, started runtime; stopped after the test."""
    rt = make_runtime()
    rt.init()
    rt.start()
    yield rt
    rt.stop()

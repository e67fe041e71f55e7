"""Shared fixtures of the Co-Pilot unit tests: a job manager on a fresh SQLite store, driven
by a ``task.Clock`` (no reactor, no sleeps)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.task import Clock

from vmcontroller.copilot.lease import LeaseTimes
from vmcontroller.copilot.manager import JobManager
from vmcontroller.copilot.storage import JobStorage
from vmcontroller.copilot.store import open_store


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1000)
    return clock


@pytest.fixture
def make_manager(tmp_path, clock) -> Iterator[Callable[..., JobManager]]:
    """``make_manager(**options)``: a started manager (offer 5 s, lease 20 s, grace 5 s);
    stopped and its store closed at teardown."""
    made: list[tuple[JobManager, Any]] = []

    def make(**options: Any) -> JobManager:
        store = open_store(f"sqlite:///{tmp_path}/jobs.db")
        manager = JobManager(store, JobStorage(str(tmp_path / "files")), clock,
                             LeaseTimes(offer_ttl=5, lease_ttl=20, grace=5), **options)
        manager.start()
        made.append((manager, store))
        return manager

    yield make
    for manager, store in made:
        manager.stop()
        store.close()

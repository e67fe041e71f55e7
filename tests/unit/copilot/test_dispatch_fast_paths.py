"""The shortcuts taken for dispatch throughput keep the rules they stand in for."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest
from twisted.logger import LogLevel, globalLogPublisher

from vmcontroller.copilot.spec import Capabilities, JobSpec, JobState
from vmcontroller.copilot.store import open_store

CAPS = Capabilities(cores=4, memory_mb=4096, max_run_time=3600)


@pytest.fixture
def manager(make_manager):
    return make_manager()


def test_the_hand_written_to_dict_has_every_field_of_the_spec():
    spec = JobSpec(argv=("run", "-n"), env={"A": "1"}, inputs=("in.dat",),
                   outputs=("*.root",), cores=2, memory_mb=512, max_run_time=60.0, retries=1)
    data = spec.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(JobSpec)}
    assert data == {**dataclasses.asdict(spec), "argv": ["run", "-n"], "inputs": ["in.dat"],
                    "outputs": ["*.root"]}
    assert JobSpec.from_dict(data) == spec
    data["env"]["B"] = "2"  # a copy: the cached spec is not changed through it
    assert spec.env == {"A": "1"}


def test_done_with_a_copy_gone_stale_before_its_write_still_compares_and_sets(manager):
    """done() reuses the record it read for its first write attempt: a change made
    in between (here a heartbeat, while the outputs are checked) makes that write
    lose its compare-and-set, and the retry works from the stored job."""
    job = manager.submit("alice", JobSpec(argv=("x",), retries=0), {})
    offer = manager.want_job("a1", CAPS)
    running = manager.accept("a1", job.id, offer.lease_id)
    real_staged = manager.storage.staged
    beats = []

    def staged(job_id, lease_id):
        beats.append(manager.heartbeat("a1", job_id, lease_id))
        return real_staged(job_id, lease_id)

    manager.storage.staged = staged
    after = manager.done("a1", job.id, running.lease_id, {"exit_code": 0}, {})

    assert beats and beats[0].version == running.version + 1
    assert after.state is JobState.DONE and after.version == running.version + 2
    assert manager.store.get(job.id) == after
    assert [e.detail for e in manager.store.history(job.id)][-1] == "attempt 1 succeeded"


def test_a_success_is_logged_at_debug_and_a_failure_at_info(manager):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        for exit_code in (0, 3):
            manager.submit("alice", JobSpec(argv=("x",), retries=0), {})
            offer = manager.want_job("a1", CAPS)
            manager.accept("a1", offer.id, offer.lease_id)
            manager.done("a1", offer.id, offer.lease_id, {"exit_code": exit_code}, {})
    finally:
        globalLogPublisher.removeObserver(events)
    levels = {e["state"]: e["log_level"] for e in events if "attempt {n} on" in e.get("log_format", "")}
    assert levels == {JobState.DONE: LogLevel.debug, JobState.FAILED: LogLevel.info}


def test_a_new_sqlite_store_has_small_pages_and_an_existing_one_keeps_its_own(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/new.db")
    pragmas = {name: store.connection.execute(f"PRAGMA {name}").fetchone()[0]
               for name in ("page_size", "journal_mode", "synchronous", "wal_autocheckpoint")}
    store.close()
    # synchronous 1 = NORMAL: with WAL, a commit survives the manager being killed.
    assert pragmas == {"page_size": 1024, "journal_mode": "wal", "synchronous": 1,
                       "wal_autocheckpoint": 4096}

    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("CREATE TABLE t (x)")  # made with the default 4 KiB pages
    old.commit()
    old.close()
    store = open_store(f"sqlite:///{tmp_path}/old.db")
    sizes = [store.connection.execute(f"PRAGMA {name}").fetchone()[0]
             for name in ("page_size", "wal_autocheckpoint")]
    store.close()
    assert sizes == [4096, 1024]  # the WAL between checkpoints stays at 4 MiB

"""A pilot gives a lease back with ``release``: the job is queued again without spending an
attempt; stale releases are refused; cancel and expiry racing a release leave one outcome.

The job manager on a real SQLite store, with time moved by a Clock (as in test_manager).
"""

from __future__ import annotations

import hashlib
import io
import sqlite3

import pytest

from vmcontroller.copilot.lease import LeaseRejected
from vmcontroller.copilot.manager import NotFound
from vmcontroller.copilot.spec import Capabilities, JobSpec, JobState
from vmcontroller.copilot.store import _schema, open_store

CAPS = Capabilities(cores=4, memory_mb=4096, max_run_time=3600)


@pytest.fixture
def manager(make_manager):
    return make_manager(max_releases=2)


def _start(manager, agent: str = "a1"):
    job = manager.want_job(agent, CAPS)
    assert job is not None
    return manager.accept(agent, job.id, job.lease_id)


def _interleave(manager, action) -> None:
    """Run ``action`` once, between the next read of a job and the write based on it."""
    real_get = manager.store.get

    def get(job_id):
        record = real_get(job_id)
        manager.store.get = real_get
        action()
        return record  # stale now: the write based on it must lose its compare-and-set

    manager.store.get = get


def test_releasing_the_current_lease_queues_the_job_without_spending_an_attempt(manager):
    job = manager.submit("alice", JobSpec(argv=("x",), retries=0), {})
    running = _start(manager, "a1")
    assert running.attempts == 1
    data = b"partial"
    manager.upload(running.lease_token, "half.out", io.BytesIO(data),
                   hashlib.sha256(data).hexdigest())

    after = manager.release("a1", job.id, running.lease_id, "its time slice ended")

    assert after.state is JobState.QUEUED and after.attempts == 0 and after.releases == 1
    assert after.lease_id is None and after.lease_token is None
    assert manager.store.get(job.id) == after
    assert manager.store.history(job.id)[-1].detail == "released by a1: its time slice ended"
    assert manager.storage.staged(job.id, running.lease_id) == []  # the attempt's uploads go
    with pytest.raises(LeaseRejected):  # the released lease is dead for transfers too
        manager.leased_job(running.lease_token)
    # another pilot gets it at once (no lease left to expire) and its one attempt is the first
    second = _start(manager, "a2")
    assert second.id == job.id and second.attempts == 1
    done = manager.done("a2", job.id, second.lease_id, {"exit_code": 0}, {})
    assert done.state is JobState.DONE and done.attempts == 1


def test_releasing_an_unaccepted_offer_frees_the_job_at_once_and_is_not_counted(manager):
    job = manager.submit("alice", JobSpec(argv=("x",)), {})
    offered = manager.want_job("a1", CAPS)
    after = manager.release("a1", job.id, offered.lease_id, "offer came too late")
    assert after.state is JobState.QUEUED and after.attempts == 0 and after.releases == 0
    assert manager.store.history(job.id)[-1].detail == "offer released by a1: offer came too late"
    assert manager.want_job("a2", CAPS).id == job.id  # not after offer_ttl: now


def test_a_release_of_a_stale_lease_is_refused_like_a_late_result_and_changes_nothing(
        manager, clock):
    job = manager.submit("alice", JobSpec(argv=("x",), retries=2), {})
    first = _start(manager, "a1")
    clock.advance(21)  # the lease expires: attempt 1 lost, queued again
    second = _start(manager, "a2")
    before = manager.store.get(job.id)
    with pytest.raises(LeaseRejected) as late_result:
        manager.done("a1", job.id, first.lease_id, {"exit_code": 0}, {})
    with pytest.raises(LeaseRejected) as release:
        manager.release("a1", job.id, first.lease_id, "too late")
    assert str(release.value) == str(late_result.value)
    with pytest.raises(LeaseRejected, match="another agent"):
        manager.release("a1", job.id, second.lease_id, "not mine")
    with pytest.raises(LeaseRejected):
        manager.release("a2", job.id, "0" * 24, "unknown lease")
    with pytest.raises(NotFound):
        manager.release("a2", "no-such-job", second.lease_id, "unknown job")
    assert manager.store.get(job.id) == before  # same version: nothing written
    assert manager.store.history(job.id)[-1].detail == "attempt 2 started on a2"


def test_a_release_after_cancel_is_refused_and_the_job_stays_cancelled(manager):
    job = manager.submit("alice", JobSpec(argv=("x",)), {})
    running = _start(manager)
    manager.cancel("alice", job.id)
    with pytest.raises(LeaseRejected, match="already cancelled"):
        manager.release("a1", job.id, running.lease_id, "slice over")
    assert manager.store.get(job.id).state is JobState.CANCELLED


def test_cancel_racing_a_release_wins(manager):
    """The cancel lands between the release's read and its write: the write loses."""
    job = manager.submit("alice", JobSpec(argv=("x",)), {})
    running = _start(manager)
    _interleave(manager, lambda: manager.cancel("alice", job.id))
    with pytest.raises(LeaseRejected, match="already cancelled"):
        manager.release("a1", job.id, running.lease_id, "slice over")
    final = manager.store.get(job.id)
    assert final.state is JobState.CANCELLED and final.releases == 0
    assert [e.detail for e in manager.store.history(job.id)][-1] == "cancelled by alice"


def test_expiry_racing_a_release_leaves_the_expiry(manager, clock):
    job = manager.submit("alice", JobSpec(argv=("x",), retries=0), {})
    running = _start(manager)
    _interleave(manager, lambda: clock.advance(21))  # the sweep expires it meanwhile
    with pytest.raises(LeaseRejected):
        manager.release("a1", job.id, running.lease_id, "slice over")
    final = manager.store.get(job.id)
    assert final.state is JobState.FAILED and final.attempts == 1 and final.releases == 0
    assert "went silent" in manager.store.history(job.id)[-1].detail


def test_a_job_released_more_than_max_releases_times_spends_attempts_again(manager):
    job = manager.submit("alice", JobSpec(argv=("x",), retries=1), {})
    for n in (1, 2):  # max_releases=2: these are free
        after = manager.release("a1", job.id, _start(manager).lease_id, "slice over")
        assert after.state is JobState.QUEUED and after.attempts == 0 and after.releases == n
    third = manager.release("a1", job.id, _start(manager).lease_id, "slice over")
    assert third.state is JobState.QUEUED and third.attempts == 1 and third.releases == 3
    detail = manager.store.history(job.id)[-1].detail
    assert "released 3 times (limit 2)" in detail and "requeued (1/2)" in detail
    fourth = manager.release("a1", job.id, _start(manager).lease_id, "slice over")
    assert fourth.state is JobState.FAILED and fourth.attempts == 2
    assert manager.want_job("a1", CAPS) is None


def test_a_store_made_before_releases_existed_gets_the_column(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    for statement in _schema("INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT"):
        old.execute(statement.replace(","
                                      " releases INTEGER NOT NULL DEFAULT 0", ""))
    assert "releases" not in [row[1] for row in old.execute("PRAGMA table_info(copilot_jobs)")]
    old.execute(
        "INSERT INTO copilot_jobs (id, owner, spec, state, created, attempts, version,"
        " lease_accepted, result, cores, memory_mb, max_run_time)"
        """ VALUES ('j1', 'alice', '{"argv": ["x"]}', 'queued', 1, 0, 0, 0, '{}', 1, 1, 60)""")
    old.commit()
    old.close()
    store = open_store(f"sqlite:///{path}")
    try:
        job = store.get("j1")
        assert job.releases == 0 and job.state is JobState.QUEUED
    finally:
        store.close()
    again = open_store(f"sqlite:///{path}")  # a second open finds the column and adds nothing
    again.close()

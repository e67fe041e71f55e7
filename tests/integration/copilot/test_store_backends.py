"""The durable store on every backend: SQLite, MariaDB and PostgreSQL (real servers).

The same checks run against each; a backend whose server is not on
127.0.0.1 is skipped with a reason.
"""

from __future__ import annotations

import dataclasses

import pytest
from twisted.internet.task import Clock

from tests.integration.copilot.conftest import backend_url
from vmcontroller.copilot import lease
from vmcontroller.copilot.lease import LeaseRejected, LeaseTimes
from vmcontroller.copilot.manager import JobManager
from vmcontroller.copilot.spec import Capabilities, JobSpec, JobState
from vmcontroller.copilot.storage import JobStorage
from vmcontroller.copilot.store import StoreError, open_store

BACKENDS = ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb), "postgresql"]


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path):
    url, drop = backend_url(request.param, tmp_path)
    try:
        open_store(url).close()
    except StoreError as error:
        pytest.skip(f"{request.param} store unavailable: {error}")
    yield url
    drop()


@pytest.fixture
def store(store_url):
    store = open_store(store_url)
    yield store
    store.close()


def test_compare_and_set_lets_only_one_writer_win(store):
    job, event = lease.new_job("j1", "alice", JobSpec(argv=("x",)), 10.0)
    store.insert(job, event)
    offered, event = lease.offer(job, "a1", 11.0, LeaseTimes())
    assert store.save(offered, job.version, event)
    rival, _ = lease.offer(job, "a2", 11.0, LeaseTimes())
    assert not store.save(rival, job.version)  # the stale version loses
    assert store.get("j1").lease_agent == "a1"
    assert store.by_lease_token(offered.lease_token).id == "j1"
    assert [e.detail for e in store.history("j1")] == ["submitted", "offered to a1"]


def test_records_round_trip(store):
    spec = JobSpec(shell="echo 'ü'", env={"A": "1"}, inputs=("in",), outputs=("*.o",),
                   cores=2, memory_mb=300, max_run_time=12.5, retries=3)  # fmt: skip
    job = dataclasses.replace(lease.new_job("j2", "bob", spec, 1.5)[0], result={"k": [1, "ü"]})
    store.insert(job, lease.Event(1.5, "queued", "submitted"))
    assert store.get("j2") == job
    assert store.jobs_of("bob") == [job] and store.jobs_of("alice") == []


def test_candidates_fit_and_come_oldest_first(store):
    for n, cores in enumerate((4, 1, 1)):
        job, event = lease.new_job(f"c{n}", "alice", JobSpec(argv=("x",), cores=cores), float(n))
        store.insert(job, event)
    caps = Capabilities(cores=2, memory_mb=1024, max_run_time=3600)
    assert [job.id for job in store.candidates(caps, 100.0)] == ["c1", "c2"]


def test_users_tokens_are_stored_hashed(store):
    token = store.add_user("carol")
    assert store.user_for_token(token) == "carol"
    rows = store._query("SELECT token_sha256 FROM copilot_users")
    assert token not in str(rows)


def test_manager_lease_cycle_on_this_backend(store, tmp_path):
    clock = Clock()
    clock.advance(100)
    manager = JobManager(store, JobStorage(str(tmp_path / "files")), clock,
                         LeaseTimes(offer_ttl=5, lease_ttl=10, grace=5))  # fmt: skip
    manager.start()
    try:
        caps = Capabilities(cores=1, memory_mb=256, max_run_time=3600)
        job = manager.submit("alice", JobSpec(argv=("x",), retries=1), {})
        first = manager.want_job("a1", caps)
        first = manager.accept("a1", job.id, first.lease_id)
        clock.advance(11)  # a1 went silent
        assert store.get(job.id).state is JobState.QUEUED
        second = manager.want_job("a2", caps)
        second = manager.accept("a2", job.id, second.lease_id)
        with pytest.raises(LeaseRejected):
            manager.done("a1", job.id, first.lease_id, {"exit_code": 0}, {})
        done = manager.done("a2", job.id, second.lease_id, {"exit_code": 0}, {})
        assert (done.state, done.attempts) == (JobState.DONE, 2)
    finally:
        manager.stop()

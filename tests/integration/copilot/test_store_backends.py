"""The durable store on every backend: SQLite, MariaDB and PostgreSQL (real servers).

The same checks run against each; a backend whose server is not on
127.0.0.1 is skipped with a reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.task import Clock

from tests.integration.copilot.conftest import backend_url
from vmcontroller.copilot import lease
from vmcontroller.copilot.executor import executor_for
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


def _row_locker(url: str, job_id: str) -> Any:
    """Another connection holding ``job_id``'s row lock (SELECT ... FOR UPDATE) until rollback."""
    from urllib.parse import urlsplit

    name = urlsplit(url).path.lstrip("/")
    if url.startswith("mysql"):
        import pymysql

        connection = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                                     database=name, autocommit=False)  # fmt: skip
    else:
        import psycopg

        connection = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=name,
                                     autocommit=False)  # fmt: skip
    cursor = connection.cursor()
    cursor.execute("SELECT id FROM copilot_jobs WHERE id = %s FOR UPDATE", (job_id,))
    cursor.fetchall()
    return connection


@pytest.mark.parametrize(
    "backend", [pytest.param("mariadb", marks=pytest.mark.mariadb), "postgresql"]
)
def test_a_database_call_that_waits_leaves_the_reactor_running(backend, tmp_path):
    """With the store's worker thread, a write stuck on a row lock does not stop the
    reactor: its timers run meanwhile, and the write completes once the lock goes."""
    url, drop = backend_url(backend, tmp_path)
    try:
        store = open_store(url)
    except StoreError as error:
        pytest.skip(f"{backend} store unavailable: {error}")
    reactor = EPollReactor()
    executor = executor_for(store.blocking, reactor)
    assert executor.threaded  # auto: network databases get the thread
    manager = JobManager(store, JobStorage(str(tmp_path / "files")), reactor, executor=executor)
    job = manager.submit("alice", JobSpec(argv=("x",)), {})
    locker = _row_locker(url, job.id)
    seen: dict[str, Any] = {}

    def release() -> None:
        seen["pending while the reactor ran"] = not seen["call"].called
        locker.rollback()  # the worker's UPDATE may proceed now

    def start() -> None:
        cancelled = seen["call"] = executor.call(manager.cancel, "alice", job.id)
        cancelled.addBoth(lambda outcome: seen.setdefault("outcome", outcome))
        cancelled.addBoth(lambda _: reactor.stop())
        reactor.callLater(0.5, release)
        reactor.callLater(60, reactor.stop)  # never hang the suite

    try:
        reactor.callWhenRunning(start)
        reactor.run(installSignalHandlers=False)
    finally:
        executor.stop()
        locker.close()
        store.close()
        drop()
    assert seen["pending while the reactor ran"]
    assert seen["outcome"].state is JobState.CANCELLED

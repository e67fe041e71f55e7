"""The job manager on a real SQLite store, with time moved by a Clock."""

from __future__ import annotations

import hashlib
import io

import pytest

from vmcontroller.copilot.lease import LeaseRejected
from vmcontroller.copilot.manager import NotFound
from vmcontroller.copilot.spec import Capabilities, JobSpec, JobState, SpecError

CAPS = Capabilities(cores=4, memory_mb=4096, max_run_time=3600)


@pytest.fixture
def manager(make_manager):
    return make_manager()


def _upload(manager, job, name: str, data: bytes) -> dict:
    manager.upload(job.lease_token, name, io.BytesIO(data), hashlib.sha256(data).hexdigest())
    return {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}


def _start(manager, agent: str = "a1"):
    job = manager.want_job(agent, CAPS)
    assert job is not None
    return manager.accept(agent, job.id, job.lease_id)


def test_submit_offer_accept_upload_done(manager):
    spec = JobSpec(argv=("sim",), inputs=("in.dat",), outputs=("*.out",))
    job = manager.submit("alice", spec, {"in.dat": b"input"})
    assert [i.name for i in manager.storage.inputs(job.id)] == ["in.dat"]
    running = _start(manager)
    assert running.state is JobState.RUNNING
    assert manager.want_job("a2", CAPS) is None  # nothing else to run
    outputs = _upload(manager, running, "r.out", b"result")
    done = manager.done("a1", job.id, running.lease_id, {"exit_code": 0}, outputs)
    assert done.state is JobState.DONE
    assert [i.name for i in manager.storage.outputs(job.id)] == ["r.out"]
    assert [e.state for e in manager.history("alice", job.id)] == [
        "queued", "queued", "running", "done"]


def test_inputs_must_match_the_spec(manager):
    with pytest.raises(SpecError, match="names inputs"):
        manager.submit("alice", JobSpec(argv=("x",), inputs=("a",)), {"b": b""})


def test_a_silent_agent_loses_its_job_to_another_and_its_late_result_is_rejected(manager, clock):
    job = manager.submit("alice", JobSpec(argv=("x",), retries=2), {})
    first = _start(manager, "a1")
    clock.advance(10)
    manager.heartbeat("a1", job.id, first.lease_id)  # lease now runs to +30
    clock.advance(19)
    assert manager.store.get(job.id).state is JobState.RUNNING
    clock.advance(2)  # 21 s after the last heartbeat: the sweep takes the lease back
    assert manager.store.get(job.id).state is JobState.QUEUED
    second = _start(manager, "a2")
    with pytest.raises(LeaseRejected):
        manager.upload(first.lease_token, "late.txt", io.BytesIO(b"x"),
                       hashlib.sha256(b"x").hexdigest())
    with pytest.raises(LeaseRejected):
        manager.done("a1", job.id, first.lease_id, {"exit_code": 0}, {})
    with pytest.raises(LeaseRejected):
        manager.heartbeat("a1", job.id, first.lease_id)
    done = manager.done("a2", job.id, second.lease_id, {"exit_code": 0}, {})
    assert done.state is JobState.DONE and done.attempts == 2


def test_lost_leases_are_reported_to_the_dispatcher(manager, clock):
    lost = []
    manager.on_lease_lost = lambda before, after: lost.append((before.lease_agent, after.state))
    manager.submit("alice", JobSpec(argv=("x",), retries=0), {})
    _start(manager, "a1")
    clock.advance(21)
    assert lost == [("a1", JobState.FAILED)]


def test_an_unaccepted_offer_returns_the_job_without_costing_an_attempt(manager, clock):
    job = manager.submit("alice", JobSpec(argv=("x",), retries=0), {})
    assert manager.want_job("a1", CAPS) is not None
    clock.advance(6)
    again = manager.want_job("a2", CAPS)
    assert again is not None and again.lease_agent == "a2" and again.attempts == 0
    assert again.id == job.id


def test_retries_exhausted_means_failed(manager):
    job = manager.submit("alice", JobSpec(argv=("x",), retries=1), {})
    for expected in (JobState.QUEUED, JobState.FAILED):
        running = _start(manager)
        after = manager.done("a1", job.id, running.lease_id, {"exit_code": 1}, {})
        assert after.state is expected
    assert manager.want_job("a1", CAPS) is None


def test_a_success_whose_outputs_do_not_match_counts_as_a_failed_attempt(manager):
    job = manager.submit("alice", JobSpec(argv=("x",), retries=0), {})
    running = _start(manager)
    _upload(manager, running, "a.txt", b"real")
    claim = {"a.txt": {"size": 4, "sha256": "0" * 64}}
    after = manager.done("a1", job.id, running.lease_id, {"exit_code": 0}, claim)
    assert after.state is JobState.FAILED
    assert "does not match" in after.result["error"]
    assert manager.storage.outputs(job.id) == []


def test_users_see_and_cancel_only_their_own_jobs(manager):
    job = manager.submit("alice", JobSpec(argv=("x",)), {})
    with pytest.raises(NotFound):
        manager.job_for("bob", job.id)
    with pytest.raises(NotFound):
        manager.cancel("bob", job.id)
    assert manager.jobs_of("bob") == []
    assert manager.cancel("alice", job.id).state is JobState.CANCELLED
    with pytest.raises(LeaseRejected, match="already cancelled"):
        manager.cancel("alice", job.id)


def test_cancelling_a_running_job_invalidates_its_lease(manager):
    job = manager.submit("alice", JobSpec(argv=("x",)), {})
    running = _start(manager)
    manager.cancel("alice", job.id)
    with pytest.raises(LeaseRejected):
        manager.heartbeat("a1", job.id, running.lease_id)


def test_another_agent_cannot_use_someone_elses_lease(manager):
    job = manager.submit("alice", JobSpec(argv=("x",)), {})
    offered = manager.want_job("a1", CAPS)
    with pytest.raises(LeaseRejected, match="another agent"):
        manager.accept("a2", job.id, offered.lease_id)


def test_jobs_go_only_to_agents_that_can_run_them(manager):
    manager.submit("alice", JobSpec(argv=("x",), cores=8), {})
    small = manager.submit("alice", JobSpec(argv=("x",), max_run_time=60), {})
    got = manager.want_job("a1", Capabilities(cores=2, memory_mb=4096, max_run_time=100))
    assert got.id == small.id


def test_user_tokens(manager):
    token = manager.store.add_user("carol")
    assert manager.store.user_for_token(token) == "carol"
    assert manager.store.user_for_token(token + "x") is None
    renewed = manager.store.add_user("carol")
    assert manager.store.user_for_token(token) is None
    assert manager.store.user_for_token(renewed) == "carol"

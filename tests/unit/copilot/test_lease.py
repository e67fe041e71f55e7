"""The lease state machine, driven by explicit times (no clock, no I/O)."""

from __future__ import annotations

import pytest

from vmcontroller.copilot import lease
from vmcontroller.copilot.lease import LeaseRejected, LeaseTimes
from vmcontroller.copilot.spec import JobSpec, JobState

TIMES = LeaseTimes(offer_ttl=10, lease_ttl=30, grace=5)


def make(retries: int = 1, max_run_time: float = 100) -> lease.JobRecord:
    spec = JobSpec(argv=("true",), retries=retries, max_run_time=max_run_time)
    return lease.new_job("j1", "alice", spec, now=0)[0]


def running(now: float = 0, **kw) -> lease.JobRecord:
    job, _ = lease.offer(make(**kw), "a1", now, TIMES)
    job, _ = lease.accept(job, job.lease_id, now + 1, TIMES)
    return job


def test_offer_accept_finish_is_done_and_clears_the_lease():
    job, event = lease.offer(make(), "a1", 0, TIMES)
    assert job.state is JobState.QUEUED and job.lease_agent == "a1" and job.lease_expires == 10
    assert event.detail == "offered to a1"
    job, event = lease.accept(job, job.lease_id, 1, TIMES)
    assert job.state is JobState.RUNNING and job.attempts == 1 and job.lease_expires == 31
    lease_id = job.lease_id
    job, event = lease.finish(job, lease_id, 20, {"exit_code": 0})
    assert job.state is JobState.DONE and job.lease_id is None and event.state == "done"


def test_an_offered_job_cannot_be_offered_again_until_the_offer_expires():
    job, _ = lease.offer(make(), "a1", 0, TIMES)
    with pytest.raises(LeaseRejected):
        lease.offer(job, "a2", 5, TIMES)
    expired, event = lease.expire(job, 10)
    assert expired.lease_id is None and expired.attempts == 0
    assert event.detail == "offer not accepted in time"
    again, _ = lease.offer(expired, "a2", 11, TIMES)
    assert again.lease_agent == "a2"


def test_accepting_after_the_offer_expired_is_rejected():
    job, _ = lease.offer(make(), "a1", 0, TIMES)
    with pytest.raises(LeaseRejected, match="expired"):
        lease.accept(job, job.lease_id, 10, TIMES)


def test_heartbeats_extend_the_lease_but_never_past_the_run_time_deadline():
    job = running(max_run_time=40)  # accepted at 1: deadline 1 + 40 + 5 = 46
    job = lease.renew(job, job.lease_id, 20, TIMES)
    assert job.lease_expires == 46  # 20 + 30 = 50 capped at 46
    assert lease.expire(job, 45) is None
    job, event = lease.expire(job, 46)
    assert job.state is JobState.QUEUED and "went silent" in event.detail


def test_silent_agent_loses_the_lease_and_the_job_is_requeued_then_failed():
    job = running(retries=1)
    lease_id = job.lease_id
    job, event = lease.expire(job, 31)
    assert job.state is JobState.QUEUED and "requeued (1/2)" in event.detail
    job, _ = lease.offer(job, "a2", 32, TIMES)
    job, _ = lease.accept(job, job.lease_id, 33, TIMES)
    assert job.attempts == 2
    job, event = lease.expire(job, 63)
    assert job.state is JobState.FAILED and "no retries left" in event.detail
    with pytest.raises(LeaseRejected):
        lease.finish(job, lease_id, 64, {"exit_code": 0})


def test_a_late_result_of_an_expired_lease_is_rejected_even_after_a_new_lease():
    job = running()
    old = job.lease_id
    job, _ = lease.expire(job, 31)
    job, _ = lease.offer(job, "a2", 32, TIMES)
    job, _ = lease.accept(job, job.lease_id, 33, TIMES)
    with pytest.raises(LeaseRejected, match="expired or was never valid"):
        lease.finish(job, old, 34, {"exit_code": 0})
    with pytest.raises(LeaseRejected):
        lease.renew(job, old, 34, TIMES)
    done, _ = lease.finish(job, job.lease_id, 35, {"exit_code": 0})
    assert done.state is JobState.DONE


def test_failed_attempts_use_up_retries():
    job = running(retries=1)
    job, event = lease.finish(job, job.lease_id, 5, {"exit_code": 3})
    assert job.state is JobState.QUEUED and "exit code 3" in event.detail
    job, _ = lease.offer(job, "a1", 6, TIMES)
    job, _ = lease.accept(job, job.lease_id, 7, TIMES)
    job, event = lease.finish(job, job.lease_id, 8, {"exit_code": None, "timed_out": True})
    assert job.state is JobState.FAILED and "max_run_time exceeded" in event.detail


def test_cancel_ends_the_lease_and_is_final():
    job = running()
    lease_id = job.lease_id
    job, event = lease.cancel(job, 5, "alice")
    assert job.state is JobState.CANCELLED and event.detail == "cancelled by alice"
    with pytest.raises(LeaseRejected):
        lease.renew(job, lease_id, 6, TIMES)
    with pytest.raises(LeaseRejected, match="already cancelled"):
        lease.cancel(job, 7, "alice")


def test_every_change_bumps_the_version():
    job = make()
    offered, _ = lease.offer(job, "a1", 0, TIMES)
    accepted, _ = lease.accept(offered, offered.lease_id, 1, TIMES)
    assert (job.version, offered.version, accepted.version) == (0, 1, 2)


def test_finish_before_accept_is_rejected():
    job, _ = lease.offer(make(), "a1", 0, TIMES)
    with pytest.raises(LeaseRejected, match="never accepted"):
        lease.finish(job, job.lease_id, 1, {"exit_code": 0})

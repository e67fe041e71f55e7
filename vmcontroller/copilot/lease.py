"""The job state machine and its leases, as pure functions of a record and a time.

A job is handed to one pilot at a time under a *lease*:

* ``offer``: a queued job gets a lease (id, secret token, agent) that expires
  ``offer_ttl`` seconds later unless accepted.  The job stays QUEUED; an
  unaccepted offer that expires costs nothing.
* ``accept``: the job becomes RUNNING; the lease expires ``lease_ttl``
  seconds after the last heartbeat, and never later than ``max_run_time +
  grace`` after acceptance.
* ``finish``: only the current, unexpired lease may end the attempt.  Exit
  0 makes the job DONE; anything else costs one attempt.
* ``expire``: a lease whose holder went silent.  An accepted one costs one
  attempt.  A lost attempt re-queues the job while attempts remain, else
  the job FAILED.
* ``release``: the lease holder gives back a lease it will not finish (its
  time slice ended, it is shutting down, it no longer wants the offer).
  The job is QUEUED again at once and the attempt is not counted, but
  only ``max_releases`` times per job: past that, a release counts as a
  failed attempt, so a broken pilot cannot bounce a job forever.
* ``cancel``: the owner ends a job that is not final; its lease goes with it.

A result carrying another lease id (an expired one, whose job meanwhile
went to someone else) raises :class:`LeaseRejected`: a job is never
completed by two agents.  Each function returns the new record and the
history event to append; nothing here does I/O or reads a clock.
"""

# -*- test-case-name: tests.unit.copilot.test_lease -*-

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from typing import Any

from vmcontroller.copilot.spec import JobSpec, JobState

__all__ = [
    "Event",
    "JobRecord",
    "LeaseRejected",
    "LeaseTimes",
    "accept",
    "cancel",
    "expire",
    "finish",
    "new_job",
    "offer",
    "release",
    "renew",
]


class LeaseRejected(Exception):
    """A pilot's message names a lease that is not (or no longer) the job's."""


@dataclass(frozen=True)
class LeaseTimes:
    """Lease timings, seconds."""

    offer_ttl: float = 30.0
    lease_ttl: float = 60.0
    grace: float = 60.0


@dataclass(frozen=True)
class Event:
    """One line of a job's history."""

    at: float
    state: str
    detail: str


@dataclass(frozen=True)
class JobRecord:
    """A job as the store keeps it.  ``version`` grows on every change (compare-and-set)."""

    id: str
    owner: str
    spec: JobSpec
    state: JobState
    created: float
    attempts: int = 0
    version: int = 0
    lease_id: str | None = None
    lease_token: str | None = None
    lease_agent: str | None = None
    lease_expires: float | None = None
    lease_deadline: float | None = None
    lease_accepted: bool = False
    result: dict[str, Any] = field(default_factory=dict)
    #: Accepted leases given back with ``release`` (see :func:`release`).
    releases: int = 0

    @property
    def max_attempts(self) -> int:
        return self.spec.retries + 1

    def lease_valid(self, lease_id: str, now: float) -> bool:
        """Is ``lease_id`` this job's current lease, unexpired at ``now``?"""
        return (
            self.lease_id is not None
            and secrets.compare_digest(self.lease_id, lease_id)
            and self.lease_expires is not None
            and now < self.lease_expires
            and not self.state.final
        )


def _change(job: JobRecord, **changes: Any) -> JobRecord:
    return dataclasses.replace(job, version=job.version + 1, **changes)


_NO_LEASE: dict[str, Any] = dict(
    lease_id=None, lease_token=None, lease_agent=None, lease_expires=None,
    lease_deadline=None, lease_accepted=False,
)  # fmt: skip


def new_job(job_id: str, owner: str, spec: JobSpec, now: float) -> tuple[JobRecord, Event]:
    """A freshly submitted job."""
    job = JobRecord(id=job_id, owner=owner, spec=spec, state=JobState.QUEUED, created=now)
    return job, Event(now, JobState.QUEUED, "submitted")


def offer(job: JobRecord, agent: str, now: float, times: LeaseTimes) -> tuple[JobRecord, Event]:
    """Give a queued, unleased job to ``agent`` for ``offer_ttl`` seconds."""
    if job.state is not JobState.QUEUED or (job.lease_id and now < (job.lease_expires or 0)):
        raise LeaseRejected(f"job {job.id} is not available ({job.state}, leased)")
    job = _change(
        job,
        lease_id=secrets.token_hex(12),
        lease_token=secrets.token_urlsafe(24),
        lease_agent=agent,
        lease_expires=now + times.offer_ttl,
        lease_deadline=None,
        lease_accepted=False,
    )
    return job, Event(now, JobState.QUEUED, f"offered to {agent}")


def _check(job: JobRecord, lease_id: str, now: float) -> None:
    if job.state.final:
        raise LeaseRejected(f"job {job.id} is already {job.state}")
    if not job.lease_valid(lease_id, now):
        raise LeaseRejected(f"lease {lease_id} of job {job.id} is expired or was never valid")


def accept(job: JobRecord, lease_id: str, now: float, times: LeaseTimes) -> tuple[JobRecord, Event]:
    """The pilot took the offer: the job runs under the lease."""
    _check(job, lease_id, now)
    if job.lease_accepted:
        return job, Event(now, JobState.RUNNING, "accept repeated")
    deadline = now + job.spec.max_run_time + times.grace
    job = _change(
        job,
        state=JobState.RUNNING,
        attempts=job.attempts + 1,
        lease_accepted=True,
        lease_expires=min(now + times.lease_ttl, deadline),
        lease_deadline=deadline,
    )
    return job, Event(now, JobState.RUNNING, f"attempt {job.attempts} started on {job.lease_agent}")


def renew(job: JobRecord, lease_id: str, now: float, times: LeaseTimes) -> JobRecord:
    """A heartbeat: push the expiry out (never past the run-time deadline)."""
    _check(job, lease_id, now)
    if not job.lease_accepted:
        raise LeaseRejected(f"lease {lease_id} of job {job.id} was never accepted")
    expires = min(now + times.lease_ttl, job.lease_deadline or now + times.lease_ttl)
    return _change(job, lease_expires=expires)


def _attempt_lost(
    job: JobRecord, now: float, why: str, result: dict[str, Any]
) -> tuple[JobRecord, Event]:
    if job.attempts >= job.max_attempts:
        state, detail = JobState.FAILED, f"{why}; no retries left ({job.attempts} attempts)"
    else:
        state, detail = JobState.QUEUED, f"{why}; requeued ({job.attempts}/{job.max_attempts})"
    return _change(job, state=state, result=result, **_NO_LEASE), Event(now, state, detail)


def finish(
    job: JobRecord, lease_id: str, now: float, result: dict[str, Any]
) -> tuple[JobRecord, Event]:
    """The lease holder reports the end of its attempt (``result['exit_code']``)."""
    _check(job, lease_id, now)
    if not job.lease_accepted:
        raise LeaseRejected(f"lease {lease_id} of job {job.id} was never accepted")
    if result.get("exit_code") == 0:
        job = _change(job, state=JobState.DONE, result=result, **_NO_LEASE)
        return job, Event(now, JobState.DONE, f"attempt {job.attempts} succeeded")
    why = f"attempt {job.attempts} failed: {result.get('error') or _describe(result)}"
    return _attempt_lost(job, now, why, result)


def _describe(result: dict[str, Any]) -> str:
    if result.get("timed_out"):
        return "max_run_time exceeded"
    if result.get("signal") is not None:
        return f"killed by signal {result['signal']}"
    return f"exit code {result.get('exit_code')}"


def expire(job: JobRecord, now: float) -> tuple[JobRecord, Event] | None:
    """End a lease whose time is up; None when there is nothing to expire."""
    if job.state.final or job.lease_id is None or now < (job.lease_expires or 0):
        return None
    if not job.lease_accepted:
        job = _change(job, **_NO_LEASE)
        return job, Event(now, JobState.QUEUED, "offer not accepted in time")
    why = f"attempt {job.attempts} lost: agent {job.lease_agent} went silent"
    return _attempt_lost(job, now, why, job.result)


def release(
    job: JobRecord, lease_id: str, now: float, agent: str, reason: str, max_releases: int
) -> tuple[JobRecord, Event]:
    """The lease holder gives its lease back: the job is queued again, no attempt spent.

    An accepted lease is counted in ``releases``; the release that takes
    it past ``max_releases`` is an ordinary lost attempt instead.  An
    offer never accepted just ends (it cost nothing and is not counted).
    """
    _check(job, lease_id, now)
    if not job.lease_accepted:
        job = _change(job, **_NO_LEASE)
        return job, Event(now, JobState.QUEUED, f"offer released by {agent}: {reason}")
    releases = job.releases + 1
    if releases > max_releases:
        why = (f"attempt {job.attempts} released by {agent}: {reason}; released {releases}"
               f" times (limit {max_releases}), counted as a failed attempt")
        return _attempt_lost(dataclasses.replace(job, releases=releases), now, why, job.result)
    job = _change(job, state=JobState.QUEUED, attempts=job.attempts - 1, releases=releases,
                  **_NO_LEASE)
    return job, Event(now, JobState.QUEUED, f"released by {agent}: {reason}")


def cancel(job: JobRecord, now: float, who: str) -> tuple[JobRecord, Event]:
    """The owner cancels a job that is not final yet."""
    if job.state.final:
        raise LeaseRejected(f"job {job.id} is already {job.state}")
    job = _change(job, state=JobState.CANCELLED, **_NO_LEASE)
    return job, Event(now, JobState.CANCELLED, f"cancelled by {who}")

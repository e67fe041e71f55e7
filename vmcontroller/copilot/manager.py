"""The job manager: the store, the lease rules, the storage and a clock, together.

Transports call it: :mod:`.dispatch` for pilots' broker messages,
:mod:`.http_api` for physicists and for pilots' file transfers.  Every
decision is made by :mod:`.lease`; this class loads the record, applies
the rule with the current time, and writes the result back with a
compare-and-set (retrying when another writer won the race).  An expiry
sweep runs every ``sweep_interval`` seconds on the injected clock.

The methods block on the store.  Callers in the reactor run them through
``manager.executor`` (:mod:`.executor`): inline for SQLite, in one worker
thread for MariaDB/PostgreSQL; the hooks below are then called back in the
reactor thread.

A user only ever sees their own jobs: asking for someone else's job gets
the same :class:`NotFound` as asking for one that does not exist.
"""

# -*- test-case-name: tests.unit.copilot.test_manager -*-

from __future__ import annotations

import io
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from vmcontroller.copilot import lease
from vmcontroller.copilot.executor import Executor, InlineExecutor
from vmcontroller.copilot.lease import Event, JobRecord, LeaseRejected, LeaseTimes
from vmcontroller.copilot.spec import Capabilities, JobSpec, JobState, SpecError
from vmcontroller.copilot.storage import JobStorage, StorageError
from vmcontroller.copilot.store import Store

__all__ = ["JobManager", "NotFound"]

log = Logger()

_CAS_TRIES = 10
#: Characters of a pilot's release reason kept in the history.
_REASON_CHARS = 200


class NotFound(LookupError):
    """No such job (or not the caller's)."""


class JobManager:
    """Accepts jobs, hands them to pilots under leases, collects their results.

    Hooks for the dispatcher: ``on_lease_lost(job_before, job_after)`` when
    the sweep takes a lease away (to tell the pilot), ``on_work_available()``
    when a job can be offered (to serve waiting pilots at once); both run in
    the reactor thread.
    """

    def __init__(
        self,
        store: Store,
        storage: JobStorage,
        clock: IReactorTime,
        times: LeaseTimes | None = None,
        sweep_interval: float = 1.0,
        executor: Executor | None = None,
        max_releases: int = 20,
    ) -> None:
        self.store = store
        #: Releases of one job spared an attempt (see :func:`.lease.release`).
        self.max_releases = max_releases
        self.executor: Executor = executor or InlineExecutor()
        self.storage = storage
        self.clock = clock
        self.times = times or LeaseTimes()
        self.sweep_interval = sweep_interval
        self.on_lease_lost: Callable[[JobRecord, JobRecord], None] | None = None
        #: Called when a job became dispatchable (submitted, or queued again).
        self.on_work_available: Callable[[], None] | None = None
        self._sweeper = LoopingCall(self._sweep_tick)
        self._sweeper.clock = clock

    # --- life --------------------------------------------------------------------

    def start(self) -> None:
        """Start the expiry sweep (the first one runs at once: leases that ran
        out while the manager was down are reclaimed)."""
        self._sweeper.start(self.sweep_interval, now=True)

    def stop(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()

    def _sweep_tick(self) -> Deferred:
        """One sweep through the executor; a failure is logged, never ends the sweeps."""
        done = self.executor.call(self.sweep)
        done.addErrback(lambda failure: log.failure("expiry sweep failed", failure))
        return done

    def now(self) -> float:
        return self.clock.seconds()

    # --- compare-and-set helper ------------------------------------------------------

    def _update(
        self,
        job_id: str,
        rule: Callable[[JobRecord], tuple[JobRecord, Event | None] | None],
        first: JobRecord | None = None,
    ) -> tuple[JobRecord, JobRecord] | None:
        """Apply ``rule`` to the stored job until the write wins; (before, after) or None.

        ``first``: the job as the caller just read it, tried before reading
        again (a stale copy only costs a lost compare-and-set and a re-read).
        """
        for _ in range(_CAS_TRIES):
            before, first = first or self.store.get(job_id), None
            if before is None:
                raise NotFound(f"no job {job_id}")
            outcome = rule(before)
            if outcome is None:
                return None
            after, event = outcome
            if after is before or self.store.save(after, before.version, event):
                return before, after
        raise RuntimeError(f"job {job_id}: too many concurrent updates")

    # --- physicists ----------------------------------------------------------------

    def submit(self, owner: str, spec: JobSpec, inputs: Mapping[str, bytes]) -> JobRecord:
        """Store the inputs, then the job (it is dispatchable only once both exist)."""
        if set(inputs) != set(spec.inputs):
            raise SpecError(
                f"the job names inputs {sorted(spec.inputs)} but {sorted(inputs)} were sent"
            )
        job_id = secrets.token_hex(8)
        for name, data in inputs.items():
            self.storage.save_input(job_id, name, io.BytesIO(data))
        job, event = lease.new_job(job_id, owner, spec, self.now())
        self.store.insert(job, event)
        log.info("job {job} submitted by {owner}", job=job_id, owner=owner)
        self._work_available()
        return job

    def _work_available(self) -> None:
        if self.on_work_available is not None:
            self.executor.to_reactor(self.on_work_available)

    def job_for(self, owner: str, job_id: str) -> JobRecord:
        job = self.store.get(job_id)
        if job is None or job.owner != owner:
            raise NotFound(f"no job {job_id} of user {owner}")
        return job

    def jobs_of(self, owner: str) -> list[JobRecord]:
        return self.store.jobs_of(owner)

    def history(self, owner: str, job_id: str) -> list[Event]:
        self.job_for(owner, job_id)
        return self.store.history(job_id)

    def cancel(self, owner: str, job_id: str) -> JobRecord:
        """Cancel the caller's job; raises LeaseRejected if it is already final."""
        self.job_for(owner, job_id)
        _, after = self._update(job_id, lambda job: lease.cancel(job, self.now(), owner))
        self.storage.discard_all_staging(job_id)
        return after

    # --- pilots ----------------------------------------------------------------------

    def want_job(self, agent: str, caps: Capabilities) -> JobRecord | None:
        """Offer the oldest fitting queued job to ``agent``; None if there is none."""
        now = self.now()
        for candidate in self.store.candidates(caps, now, limit=2):
            try:
                job, event = lease.offer(candidate, agent, now, self.times)
            except LeaseRejected:
                continue
            if self.store.save(job, candidate.version, event):
                return job
        return None

    def _owned(self, job: JobRecord, agent: str, lease_id: str) -> None:
        if job.lease_agent is not None and job.lease_agent != agent and job.lease_id == lease_id:
            raise LeaseRejected(f"lease {lease_id} belongs to another agent")

    def accept(self, agent: str, job_id: str, lease_id: str) -> JobRecord:
        def rule(job: JobRecord) -> tuple[JobRecord, Event]:
            self._owned(job, agent, lease_id)
            return lease.accept(job, lease_id, self.now(), self.times)

        return self._update(job_id, rule)[1]

    def heartbeat(self, agent: str, job_id: str, lease_id: str) -> JobRecord:
        def rule(job: JobRecord) -> tuple[JobRecord, None]:
            self._owned(job, agent, lease_id)
            return lease.renew(job, lease_id, self.now(), self.times), None

        return self._update(job_id, rule)[1]

    def done(
        self,
        agent: str,
        job_id: str,
        lease_id: str,
        result: dict[str, Any],
        outputs: Mapping[str, Mapping[str, Any]],
    ) -> JobRecord:
        """End an attempt.  A success needs every claimed output uploaded with its sha256."""
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        self._owned(job, agent, lease_id)
        if not job.lease_valid(lease_id, self.now()):
            raise LeaseRejected(f"lease {lease_id} of job {job_id} is expired or was never valid")
        result = dict(result)
        if result.get("exit_code") == 0:
            problem = self._check_outputs(job_id, lease_id, outputs)
            if problem:
                result.update(exit_code=None, error=problem)
        result["outputs"] = {k: dict(v) for k, v in outputs.items()}

        def rule(current: JobRecord) -> tuple[JobRecord, Event]:
            self._owned(current, agent, lease_id)
            return lease.finish(current, lease_id, self.now(), result)

        after = self._update(job_id, rule, first=job)[1]
        # A success is in the job's history already; a line per job in the log
        # would cost more than the rest of the attempt's bookkeeping at full rate.
        (log.debug if after.state is JobState.DONE else log.info)(
            "job {job} attempt {n} on {agent}: {state}", job=job_id, n=after.attempts,
            agent=agent, state=after.state)
        if after.state is JobState.DONE:
            self.storage.commit(job_id, lease_id)
        else:
            self.storage.discard(job_id, lease_id)
            if after.state is JobState.QUEUED:
                self._work_available()
        return after

    def release(self, agent: str, job_id: str, lease_id: str, reason: str) -> JobRecord:
        """The pilot gives back a lease it will not finish: the job is queued again at once.

        Refused (:class:`LeaseRejected`) like a late result when the lease
        is not the job's current one; a cancel that came first wins.
        """
        reason = reason[:_REASON_CHARS]

        def rule(job: JobRecord) -> tuple[JobRecord, Event]:
            self._owned(job, agent, lease_id)
            return lease.release(job, lease_id, self.now(), agent, reason, self.max_releases)

        after = self._update(job_id, rule)[1]
        log.info("job {job}: lease released by {agent} ({reason}); {state}", job=job_id,
                 agent=agent, reason=reason, state=after.state)
        self.storage.discard(job_id, lease_id)
        if after.state is JobState.QUEUED:
            self._work_available()
        return after

    def _check_outputs(
        self, job_id: str, lease_id: str, claimed: Mapping[str, Mapping[str, Any]]
    ) -> str | None:
        staged = {info.name: info for info in self.storage.staged(job_id, lease_id)}
        for name, claim in claimed.items():
            info = staged.get(name)
            if info is None:
                return f"output {name!r} was never uploaded"
            if claim.get("sha256") != info.sha256 or claim.get("size") != info.size:
                return f"output {name!r} on the server does not match the pilot's checksum"
        extra = sorted(set(staged) - set(claimed))
        if extra:
            return f"uploaded files not listed in the result: {extra}"
        return None

    def leased_job(self, token: str) -> JobRecord:
        """The job whose current, live lease has secret ``token`` (for HTTP transfers)."""
        job = self.store.by_lease_token(token) if token else None
        if job is None or not job.lease_valid(job.lease_id or "", self.now()):
            raise LeaseRejected("no live lease has this token (expired, finished or wrong)")
        return job

    def upload(self, token: str, name: str, source: Any, sha256: str) -> Any:
        job = self.leased_job(token)
        if not job.lease_accepted:
            raise LeaseRejected("accept the offer before uploading")
        return self.storage.save_upload(job.id, job.lease_id or "", name, source, sha256)

    # --- expiry ----------------------------------------------------------------------

    def sweep(self) -> int:
        """Expire every lease that ran out; returns how many."""
        count = 0
        try:
            expired = self.store.expired(self.now())
        except Exception:
            log.failure("expiry sweep could not read the store")
            return 0
        for job in expired:
            try:
                changed = self._update(job.id, lambda current: lease.expire(current, self.now()))
            except (NotFound, StorageError):
                continue
            if changed is None:
                continue
            before, after = changed
            count += 1
            if before.lease_id:
                self.storage.discard(job.id, before.lease_id)
            log.info("job {job}: {state} after lease expiry", job=job.id, state=after.state)
            if self.on_lease_lost is not None and before.lease_accepted:
                self.executor.to_reactor(self.on_lease_lost, before, after)
        if count:
            self._work_available()
        return count

"""The job manager's broker side: request -> offer -> accept -> heartbeats -> done (or release).

Pilots write to the presence topic and read their VM's ``to_guest`` queue
(see :mod:`.messages` for why).  A pilot is known by the broker-checked
``user-id`` of its frames: a VM login is ``vm-<vm_id>`` (as
:func:`vmcontroller.broker.credentials.generate_credentials` names them and
as the RabbitMQ users are made), and its replies go to that VM's queue.
A body in the body claiming another identity is simply not looked at.

Other traffic on the topic (vmcontroller hellos and heartbeats) is ignored.

Every manager call goes through ``manager.executor`` (the store may block:
see :mod:`.executor`); replies are sent from its callbacks, in the reactor.
"""

# -*- test-case-name: tests.integration.copilot.test_copilot -*-

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from vmcontroller.copilot import messages
from vmcontroller.copilot.lease import JobRecord, LeaseRejected
from vmcontroller.copilot.manager import JobManager, NotFound
from vmcontroller.copilot.spec import Capabilities, SpecError
from vmcontroller.copilot.storage import FileInfo
from vmcontroller.destinations import PRESENCE, to_guest, validate_vm_id
from vmcontroller.stomp.client import NotConnectedError, StompSession
from vmcontroller.stomp.codec import Frame

__all__ = ["Dispatcher", "agent_for_login"]

log = Logger()

#: Prefix of a VM's broker login (``vm-<vm_id>``).
VM_LOGIN_PREFIX = "vm-"


def agent_for_login(login: str) -> str:
    """The VM id a pilot's broker login stands for; ValueError if it is not a VM login."""
    if not login.startswith(VM_LOGIN_PREFIX):
        raise ValueError(f"login {login!r} is not a VM login (vm-<id>)")
    return validate_vm_id(login[len(VM_LOGIN_PREFIX):])


def _within(caps: Capabilities, bigger: Capabilities) -> bool:
    """Does every job that fits ``caps`` fit ``bigger`` too?"""
    return (
        caps.cores <= bigger.cores
        and caps.memory_mb <= bigger.memory_mb
        and caps.max_run_time <= bigger.max_run_time
    )


class Dispatcher:
    """Routes pilots' messages to the :class:`JobManager` and answers them.

    :param http_url: where pilots fetch inputs and upload outputs.
    :param retry_after: how long a ``want_job`` that found nothing is held
        (*parked*) before it is answered ``no_job``; a job submitted or
        re-queued meanwhile is offered to the longest-waiting parked pilot at
        once, so submit-to-start latency does not depend on polling.  Pilots
        ask again as soon as ``no_job`` arrives; their request timeout must
        be longer than this.
    """

    def __init__(
        self,
        manager: JobManager,
        session: StompSession,
        http_url: str,
        heartbeat_interval: float = 10.0,
        retry_after: float = 2.0,
    ) -> None:
        self.manager = manager
        self.session = session
        self.http_url = http_url
        self.heartbeat_interval = heartbeat_interval
        self.retry_after = retry_after
        self._parked: dict[str, tuple[int, Capabilities, Any]] = {}
        #: Parked agents whose offer is being looked up, and those of them whose
        #: park ran out meanwhile (their ``no_job`` waits for the lookup).
        self._looking: set[str] = set()
        self._overdue: set[str] = set()
        self._again = False
        manager.on_lease_lost = self._lease_lost
        manager.on_work_available = self.offer_parked
        session.subscribe(PRESENCE, self.on_frame)

    def _send(self, agent: str, kind: str, **fields: Any) -> None:
        try:
            self.session.send(to_guest(agent), messages.encode(kind, **fields))
        except NotConnectedError:
            log.warn("broker down: {kind} to {agent} not sent", kind=kind, agent=agent)

    def on_frame(self, frame: Frame) -> None:
        body = frame.body
        if b'"copilot"' not in body[:200]:
            return  # vmcontroller presence traffic
        try:
            message = messages.decode(body)
            agent = agent_for_login(frame.headers.get("user-id", ""))
        except (messages.MessageError, ValueError) as error:
            log.warn("bad pilot message from {who}: {error}",
                     who=frame.headers.get("user-id"), error=error)
            return
        handler = getattr(self, f"_on_{message['type']}", None)
        if handler is None:
            log.warn("{kind} is not a pilot -> manager message", kind=message["type"])
            return
        handler(agent, message)

    def _call(self, function: Any, *args: Any) -> Deferred:
        """Run manager work through its executor (see the module doc)."""
        return self.manager.executor.call(function, *args)

    def _find_job(self, agent: str, caps: Capabilities) -> tuple[JobRecord, list[FileInfo]] | None:
        """(In the executor.)  An offer for ``agent`` with its inputs, or None."""
        job = self.manager.want_job(agent, caps)
        if job is None:
            return None
        # No input files unless the spec names some (submit insists): no listing.
        return job, self.manager.storage.inputs(job.id) if job.spec.inputs else []

    def _on_want_job(self, agent: str, message: dict[str, Any]) -> None:
        try:
            caps = Capabilities.from_dict(message["capabilities"])
        except SpecError as error:
            log.warn("pilot {agent} sent bad capabilities: {error}", agent=agent, error=error)
            return
        self._unpark(agent)
        seq = message["seq"]

        def found(offer: tuple[JobRecord, list[FileInfo]] | None) -> None:
            if offer is None:
                timer = self.manager.clock.callLater(self.retry_after, self._park_over, agent)
                self._parked[agent] = (seq, caps, timer)
            else:
                self._offer(agent, seq, *offer)

        done = self._call(self._find_job, agent, caps)
        done.addCallbacks(found, self._failed, errbackArgs=("want_job", agent))

    def _failed(self, failure: Any, kind: str, agent: str) -> None:
        log.failure("{kind} from {agent} failed", failure, kind=kind, agent=agent)

    def _unpark(self, agent: str) -> None:
        parked = self._parked.pop(agent, None)
        self._overdue.discard(agent)
        if parked is not None and parked[2].active():
            parked[2].cancel()

    def _park_over(self, agent: str) -> None:
        if agent in self._looking:
            self._overdue.add(agent)  # answered when its lookup is back
            return
        seq, _, _ = self._parked.pop(agent)
        self._send(agent, "no_job", seq=seq, retry_after=0)

    def offer_parked(self) -> None:
        """Offer queued jobs to parked pilots, longest waiting first.

        One lookup at a time: work that becomes available meanwhile starts
        another when this one is back.
        """
        if self._looking:
            self._again = True
            return
        waiting = [(agent, seq, caps) for agent, (seq, caps, _) in self._parked.items()]
        if not waiting:
            return
        self._looking = {agent for agent, _, _ in waiting}
        done = self._call(self._find_jobs, waiting)
        done.addCallbacks(self._offers_found, self._failed, errbackArgs=("offer_parked", "-"))
        done.addBoth(self._lookup_over)

    def _find_jobs(
        self, waiting: list[tuple[str, int, Capabilities]]
    ) -> list[tuple[str, int, tuple[JobRecord, list[FileInfo]]]]:
        """(In the executor.)  Offers for as many waiting pilots as there are fitting jobs.

        A pilot no bigger than one that found nothing is not looked up: nothing
        would fit it either (with 200 idle pilots, that is one store query
        after the jobs run out instead of 200, and the offers go out sooner).
        """
        offers = []
        found_nothing: list[Capabilities] = []
        for agent, seq, caps in waiting:
            if any(_within(caps, bigger) for bigger in found_nothing):
                continue
            offer = self._find_job(agent, caps)
            if offer is None:  # a smaller pilot may still fit something
                found_nothing.append(caps)
            else:
                offers.append((agent, seq, offer))
        return offers

    def _offers_found(self, offers: list[tuple[str, int, tuple[JobRecord, list[FileInfo]]]]) -> None:
        for agent, seq, offer in offers:
            parked = self._parked.get(agent)
            if parked is None or parked[0] != seq:
                # The pilot asked again meanwhile: it ignores this seq, the offer expires unused.
                log.info("offer of {job} to {agent} overtaken", job=offer[0].id, agent=agent)
            else:
                self._unpark(agent)
            self._offer(agent, seq, *offer)

    def _lookup_over(self, _: Any) -> None:
        self._looking = set()
        for agent in list(self._overdue):
            if agent in self._parked:
                self._park_over(agent)
        self._overdue.clear()
        if self._again:
            self._again = False
            self.offer_parked()

    def _offer(self, agent: str, seq: int, job: JobRecord, inputs: list[FileInfo]) -> None:
        self._send(
            agent, "offer", seq=seq, job_id=job.id, lease_id=job.lease_id,
            lease_token=job.lease_token, job=job.spec.to_dict(),
            inputs=[info.__dict__ for info in inputs], http_url=self.http_url,
            heartbeat_interval=self.heartbeat_interval,
        )  # fmt: skip

    def _on_accept(self, agent: str, message: dict[str, Any]) -> None:
        job_id, lease_id = message["job_id"], message["lease_id"]
        done = self._call(self.manager.accept, agent, job_id, lease_id)
        done.addCallback(lambda _: self._send(agent, "accepted", job_id=job_id, lease_id=lease_id))
        done.addErrback(self._refused, agent, "rejected", job_id, lease_id)

    def _refused(self, failure: Any, agent: str, answer: str, job_id: str, lease_id: str) -> None:
        """A lease refusal becomes ``answer`` to the pilot; anything else is logged."""
        if not failure.check(LeaseRejected, NotFound):
            self._failed(failure, answer, agent)
            return
        if answer == "rejected":
            log.info("{agent}'s message on {job} refused: {error}", agent=agent, job=job_id,
                     error=failure.value)
        self._send(agent, answer, job_id=job_id, lease_id=lease_id, reason=str(failure.value))

    def _on_heartbeat(self, agent: str, message: dict[str, Any]) -> None:
        job_id, lease_id = message["job_id"], message["lease_id"]
        done = self._call(self.manager.heartbeat, agent, job_id, lease_id)
        done.addErrback(self._refused, agent, "abort", job_id, lease_id)

    def _on_done(self, agent: str, message: dict[str, Any]) -> None:
        job_id, lease_id = message["job_id"], message["lease_id"]
        done = self._call(
            self.manager.done, agent, job_id, lease_id, message["result"], message["outputs"]
        )
        done.addCallback(lambda _: self._send(agent, "done_ack", job_id=job_id, lease_id=lease_id))
        done.addErrback(self._refused, agent, "rejected", job_id, lease_id)

    def _on_release(self, agent: str, message: dict[str, Any]) -> None:
        job_id, lease_id = message["job_id"], message["lease_id"]
        done = self._call(self.manager.release, agent, job_id, lease_id, message["reason"])
        done.addCallback(lambda _: self._send(agent, "released", job_id=job_id, lease_id=lease_id))
        done.addErrback(self._refused, agent, "rejected", job_id, lease_id)

    def _lease_lost(self, before: JobRecord, after: JobRecord) -> None:
        """Tell a pilot whose lease expired to stop (it may only be slow, not dead)."""
        if before.lease_agent and before.lease_id:
            self._send(
                before.lease_agent, "abort", job_id=before.id, lease_id=before.lease_id,
                reason=f"lease expired; job is now {after.state}",
            )  # fmt: skip

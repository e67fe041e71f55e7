"""The job manager's broker side: request -> offer -> accept -> heartbeats -> done.

Pilots write to the presence topic and read their VM's ``to_guest`` queue
(see :mod:`.messages` for why).  A pilot is known by the broker-checked
``user-id`` of its frames: a VM login is ``vm-<vm_id>`` (as
:func:`vmcontroller.broker.credentials.generate_credentials` names them and
as the RabbitMQ users are made), and its replies go to that VM's queue.
A body in the body claiming another identity is simply not looked at.

Other traffic on the topic (vmcontroller hellos and heartbeats) is ignored.
"""

# -*- test-case-name: tests.integration.copilot.test_copilot -*-

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from vmcontroller.copilot import messages
from vmcontroller.copilot.lease import JobRecord, LeaseRejected
from vmcontroller.copilot.manager import JobManager, NotFound
from vmcontroller.copilot.spec import Capabilities, SpecError
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

    def _on_want_job(self, agent: str, message: dict[str, Any]) -> None:
        try:
            caps = Capabilities.from_dict(message["capabilities"])
        except SpecError as error:
            log.warn("pilot {agent} sent bad capabilities: {error}", agent=agent, error=error)
            return
        self._unpark(agent)
        job = self.manager.want_job(agent, caps)
        if job is None:
            timer = self.manager.clock.callLater(self.retry_after, self._park_over, agent)
            self._parked[agent] = (message["seq"], caps, timer)
            return
        self._offer(agent, message["seq"], job)

    def _unpark(self, agent: str) -> None:
        parked = self._parked.pop(agent, None)
        if parked is not None and parked[2].active():
            parked[2].cancel()

    def _park_over(self, agent: str) -> None:
        seq, _, _ = self._parked.pop(agent)
        self._send(agent, "no_job", seq=seq, retry_after=0)

    def offer_parked(self) -> None:
        """Offer queued jobs to parked pilots, longest waiting first."""
        for agent, (seq, caps, _) in list(self._parked.items()):
            job = self.manager.want_job(agent, caps)
            if job is None:
                continue  # nothing fits this one; a smaller pilot may still get something
            self._unpark(agent)
            self._offer(agent, seq, job)

    def _offer(self, agent: str, seq: int, job: JobRecord) -> None:
        inputs = [info.__dict__ for info in self.manager.storage.inputs(job.id)]
        self._send(
            agent, "offer", seq=seq, job_id=job.id, lease_id=job.lease_id,
            lease_token=job.lease_token, job=job.spec.to_dict(), inputs=inputs,
            http_url=self.http_url, heartbeat_interval=self.heartbeat_interval,
        )  # fmt: skip

    def _on_accept(self, agent: str, message: dict[str, Any]) -> None:
        job_id, lease_id = message["job_id"], message["lease_id"]
        try:
            self.manager.accept(agent, job_id, lease_id)
        except (LeaseRejected, NotFound) as error:
            self._send(agent, "rejected", job_id=job_id, lease_id=lease_id, reason=str(error))
            return
        self._send(agent, "accepted", job_id=job_id, lease_id=lease_id)

    def _on_heartbeat(self, agent: str, message: dict[str, Any]) -> None:
        job_id, lease_id = message["job_id"], message["lease_id"]
        try:
            self.manager.heartbeat(agent, job_id, lease_id)
        except (LeaseRejected, NotFound) as error:
            self._send(agent, "abort", job_id=job_id, lease_id=lease_id, reason=str(error))

    def _on_done(self, agent: str, message: dict[str, Any]) -> None:
        job_id, lease_id = message["job_id"], message["lease_id"]
        try:
            self.manager.done(agent, job_id, lease_id, message["result"], message["outputs"])
        except (LeaseRejected, NotFound) as error:
            log.info("late or foreign result for {job} rejected: {error}", job=job_id, error=error)
            self._send(agent, "rejected", job_id=job_id, lease_id=lease_id, reason=str(error))
            return
        self._send(agent, "done_ack", job_id=job_id, lease_id=lease_id)

    def _lease_lost(self, before: JobRecord, after: JobRecord) -> None:
        """Tell a pilot whose lease expired to stop (it may only be slow, not dead)."""
        if before.lease_agent and before.lease_id:
            self._send(
                before.lease_agent, "abort", job_id=before.id, lease_id=before.lease_id,
                reason=f"lease expired; job is now {after.state}",
            )  # fmt: skip

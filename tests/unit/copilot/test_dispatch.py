"""The manager's broker side on a Clock: parking, offers, rejections, identities.

A recording session stands in for the broker connection; the dispatcher,
the manager and its SQLite store are real.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from vmcontroller.copilot import messages
from vmcontroller.copilot.dispatch import Dispatcher, agent_for_login
from vmcontroller.copilot.lease import LeaseTimes
from vmcontroller.copilot.manager import JobManager
from vmcontroller.copilot.spec import JobSpec
from vmcontroller.copilot.storage import JobStorage
from vmcontroller.copilot.store import open_store
from vmcontroller.destinations import PRESENCE, to_guest
from vmcontroller.stomp.codec import Frame

CAPS = {"cores": 1, "memory_mb": 256, "max_run_time": 3600}


class RecordingSession:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.handler = None

    def subscribe(self, destination, handler, ack="auto", headers=None) -> None:
        assert destination == PRESENCE
        self.handler = handler

    def send(self, destination, body, headers=None) -> None:
        self.sent.append((destination, messages.decode(body)))

    def pilot_says(self, login: str, kind: str, **fields) -> None:
        self.handler(Frame("MESSAGE", {"user-id": login}, messages.encode(kind, **fields)))


@pytest.fixture
def setup(tmp_path):
    clock = Clock()
    store = open_store(f"sqlite:///{tmp_path}/jobs.db")
    manager = JobManager(store, JobStorage(str(tmp_path / "f")), clock, LeaseTimes(5, 20, 5))
    session = RecordingSession()
    Dispatcher(manager, session, "http://127.0.0.1:1", heartbeat_interval=3, retry_after=2)
    manager.start()
    yield clock, manager, session
    manager.stop()
    store.close()


def test_a_waiting_pilot_gets_a_new_job_at_once(setup):
    clock, manager, session = setup
    session.pilot_says("vm-p1", "want_job", seq=7, capabilities=CAPS)
    assert session.sent == []  # parked, not refused
    job = manager.submit("alice", JobSpec(argv=("x",)), {})
    destination, offer = session.sent[-1]
    assert destination == to_guest("p1")
    assert (offer["type"], offer["seq"], offer["job_id"]) == ("offer", 7, job.id)
    clock.advance(2)  # the park timer was cancelled: no stray no_job
    assert len(session.sent) == 1


def test_a_parked_request_is_answered_no_job_after_retry_after(setup):
    clock, _, session = setup
    session.pilot_says("vm-p1", "want_job", seq=1, capabilities=CAPS)
    clock.advance(1.9)
    assert session.sent == []
    clock.advance(0.1)
    assert session.sent == [(to_guest("p1"), {"copilot": 1, "type": "no_job", "seq": 1,
                                              "retry_after": 0})]  # fmt: skip


def test_accept_heartbeat_done_and_a_foreign_or_late_lease(setup):
    clock, manager, session = setup
    job = manager.submit("alice", JobSpec(argv=("x",), retries=0), {})
    session.pilot_says("vm-p1", "want_job", seq=1, capabilities=CAPS)
    lease_id = session.sent[-1][1]["lease_id"]
    session.pilot_says("vm-p2", "accept", job_id=job.id, lease_id=lease_id)  # not p2's lease
    assert session.sent[-1] == (to_guest("p2"), {
        "copilot": 1, "type": "rejected", "job_id": job.id, "lease_id": lease_id,
        "reason": f"lease {lease_id} belongs to another agent"})  # fmt: skip
    session.pilot_says("vm-p1", "accept", job_id=job.id, lease_id=lease_id)
    assert session.sent[-1][1]["type"] == "accepted"
    clock.advance(21)  # silent: lease lost, the pilot is told to stop
    assert session.sent[-1][1]["type"] == "abort"
    session.pilot_says("vm-p1", "done", job_id=job.id, lease_id=lease_id,
                       result={"exit_code": 0}, outputs={})  # fmt: skip
    assert session.sent[-1][1]["type"] == "rejected"
    assert manager.store.get(job.id).state == "failed"


def test_frames_without_a_vm_login_or_with_bad_bodies_are_ignored(setup):
    _, _, session = setup
    session.pilot_says("host-x", "want_job", seq=1, capabilities=CAPS)
    session.handler(Frame("MESSAGE", {"user-id": "vm-p1"}, b'{"copilot":1,"type":"nope"}'))
    session.handler(Frame("MESSAGE", {"user-id": "vm-p1"}, b'{"type":"hello","v":1}'))
    assert session.sent == []
    with pytest.raises(ValueError, match="not a VM login"):
        agent_for_login("host-x")


def test_parked_pilots_no_bigger_than_one_that_found_nothing_are_not_looked_up(setup):
    """One job for 50 idle pilots: two lookups, not 50; a bigger pilot is still served."""
    clock, manager, session = setup
    for n in range(50):
        session.pilot_says(f"vm-p{n}", "want_job", seq=n, capabilities=CAPS)
    big = dict(CAPS, cores=8)
    session.pilot_says("vm-big", "want_job", seq=99, capabilities=big)
    lookups = []
    want_job = manager.want_job
    manager.want_job = lambda agent, caps: lookups.append(agent) or want_job(agent, caps)
    manager.submit("alice", JobSpec(argv=("x",)), {})
    assert lookups == ["p0", "p1", "big"]  # p1 found nothing: p2..p49 are skipped
    manager.submit("alice", JobSpec(argv=("x",), cores=8), {})
    assert lookups[3:] == ["p1", "big"]
    offers = [(dest, m["seq"]) for dest, m in session.sent if m["type"] == "offer"]
    assert offers == [(to_guest("p0"), 0), (to_guest("big"), 99)]

"""The pilot's request loop on a Clock: slice end, timeouts, no_job back-off.

The broker session is replaced by a recorder at the transport boundary; the
pilot's own logic (what it asks, when, and when it stops) is real.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from vmcontroller.copilot import messages
from vmcontroller.copilot.pilot import Pilot
from vmcontroller.copilot.spec import Capabilities
from vmcontroller.destinations import PRESENCE, to_guest
from vmcontroller.stomp.codec import Frame


class RecordingSession:
    """What the pilot needs of a StompSession: subscribe, send, when_connected."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.handlers: dict[str, object] = {}

    def subscribe(self, destination, handler, ack="auto", headers=None) -> None:
        self.handlers[destination] = handler

    def send(self, destination, body, headers=None) -> None:
        assert destination == PRESENCE
        self.sent.append(messages.decode(body))

    def when_connected(self):
        return defer.succeed(None)

    def reply(self, agent: str, kind: str, **fields) -> None:
        self.handlers[to_guest(agent)](Frame("MESSAGE", {}, messages.encode(kind, **fields)))


def make_pilot(tmp_path, clock, **kw) -> tuple[Pilot, RecordingSession]:
    session = RecordingSession()
    caps = Capabilities(cores=2, memory_mb=512, max_run_time=3600)
    pilot = Pilot(None, session, "vm1", str(tmp_path), caps, request_timeout=5, clock=clock, **kw)
    return pilot, session


def test_the_pilot_asks_only_for_jobs_that_fit_its_time_slice(tmp_path):
    clock = Clock()
    pilot, session = make_pilot(tmp_path, clock, until=100.0)
    done = pilot.run()
    first = session.sent[-1]
    assert first["type"] == "want_job" and first["capabilities"]["max_run_time"] == 100
    session.reply("vm1", "no_job", seq=first["seq"], retry_after=10)
    clock.advance(10)
    second = session.sent[-1]
    assert second["capabilities"]["max_run_time"] == 90 and second["seq"] == first["seq"] + 1
    clock.advance(5)  # no answer: the request times out and is asked again at once
    assert session.sent[-1]["capabilities"]["max_run_time"] == 85
    for _ in range(20):
        if done.called:
            break
        clock.advance(5)
    assert done.called
    assert session.sent[-1]["capabilities"]["max_run_time"] >= 1  # never asked with < 1 s left
    assert pilot.jobs_run == 0 and pilot.cpu_time == 0


def test_an_idle_pilot_leaves_after_exit_when_idle(tmp_path):
    clock = Clock()
    pilot, session = make_pilot(tmp_path, clock, exit_when_idle=12)
    done = pilot.run()
    while not done.called:
        session.reply("vm1", "no_job", seq=session.sent[-1]["seq"], retry_after=4)
        clock.advance(4)
    assert len(session.sent) == 4  # at 0, 4, 8 and 12 s; then it gives up
    assert done.result == {"jobs_run": 0, "cpu_time": 0.0}


def test_an_offer_that_is_not_confirmed_is_dropped(tmp_path):
    clock = Clock()
    pilot, session = make_pilot(tmp_path, clock, exit_when_idle=100)
    pilot.run()
    ask = session.sent[-1]
    session.reply("vm1", "offer", seq=ask["seq"], job_id="j1", lease_id="L1", lease_token="t",
                  job={"argv": ["true"], "outputs": [], "max_run_time": 10}, inputs=[],
                  http_url="http://127.0.0.1:9", heartbeat_interval=1)  # fmt: skip
    assert session.sent[-1] == {"copilot": 1, "type": "accept", "job_id": "j1", "lease_id": "L1"}
    session.reply("vm1", "rejected", job_id="j1", lease_id="L1", reason="offer expired")
    assert session.sent[-1]["type"] == "want_job"  # straight back to asking
    assert pilot.jobs_run == 0


def test_an_unanswered_accept_is_sent_again_then_the_lease_released(tmp_path):
    """The manager may have taken the accept and died before answering (a restart):
    the lease is released so that, if it did, the job is not left to cost an attempt."""
    clock = Clock()
    pilot, session = make_pilot(tmp_path, clock, exit_when_idle=100)
    pilot.run()
    ask = session.sent[-1]
    session.reply("vm1", "offer", seq=ask["seq"], job_id="j1", lease_id="L1", lease_token="t",
                  job={"argv": ["true"], "outputs": [], "max_run_time": 10}, inputs=[],
                  http_url="http://127.0.0.1:9", heartbeat_interval=1)  # fmt: skip
    accept = {"copilot": 1, "type": "accept", "job_id": "j1", "lease_id": "L1"}
    clock.advance(5)  # no answer within the request timeout
    assert session.sent[-2:] == [accept, accept]
    clock.advance(5)
    assert session.sent[-1] == accept  # a third time
    clock.advance(5)  # still nothing: the lease is given back
    release = dict(accept, type="release", reason="no answer to accept")
    assert session.sent[-1] == release and session.sent.count(accept) == 3
    session.reply("vm1", "released", job_id="j1", lease_id="L1")
    assert session.sent[-1]["type"] == "want_job"
    assert pilot.jobs_run == 0


def test_an_offer_answering_a_request_no_longer_waited_for_is_released(tmp_path):
    clock = Clock()
    pilot, session = make_pilot(tmp_path, clock, exit_when_idle=100)
    pilot.run()
    first = session.sent[-1]
    clock.advance(5)  # no answer in time: asked again with a new seq
    second = session.sent[-1]
    assert second["type"] == "want_job" and second["seq"] == first["seq"] + 1
    session.reply("vm1", "offer", seq=first["seq"], job_id="j1", lease_id="L1", lease_token="t",
                  job={"argv": ["true"], "outputs": [], "max_run_time": 10}, inputs=[],
                  http_url="http://127.0.0.1:9", heartbeat_interval=1)  # fmt: skip
    assert session.sent[-1] == {"copilot": 1, "type": "release", "job_id": "j1",
                                "lease_id": "L1",
                                "reason": "offer came after the pilot stopped waiting"}
    assert "accept" not in [m["type"] for m in session.sent]


def test_an_offer_arriving_after_stop_is_released_and_the_loop_ends(tmp_path):
    clock = Clock()
    pilot, session = make_pilot(tmp_path, clock)
    done = pilot.run()
    ask = session.sent[-1]
    pilot.stop()
    session.reply("vm1", "offer", seq=ask["seq"], job_id="j1", lease_id="L1", lease_token="t",
                  job={"argv": ["true"], "outputs": [], "max_run_time": 10}, inputs=[],
                  http_url="http://127.0.0.1:9", heartbeat_interval=1)  # fmt: skip
    assert session.sent[-1] == {"copilot": 1, "type": "release", "job_id": "j1",
                                "lease_id": "L1", "reason": "the pilot is stopping"}
    assert not done.called
    session.reply("vm1", "released", job_id="j1", lease_id="L1")
    assert done.called and done.result == {"jobs_run": 0, "cpu_time": 0.0}
    assert "accept" not in [m["type"] for m in session.sent]

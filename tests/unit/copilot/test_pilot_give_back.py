"""A job still running when the pilot's slice ends is killed and its lease released
(no attempt spent), not left to expire nor reported as a failure.

A real command on a private reactor; the slice's end is a ``task.Clock`` advance
and the broker session the recorder of ``test_pilot_loop``.
"""

from __future__ import annotations

import os
import time

from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import Clock

from tests.unit.copilot.test_pilot_loop import RecordingSession
from vmcontroller.copilot.pilot import Pilot
from vmcontroller.copilot.spec import Capabilities


def spin(reactor: SelectReactor, until, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "condition not reached"
        reactor.iterate(0.01)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_job_running_at_the_end_of_the_slice_is_killed_and_its_lease_released(tmp_path):
    reactor, clock, session = SelectReactor(), Clock(), RecordingSession()
    caps = Capabilities(cores=1, memory_mb=512, max_run_time=3600)
    pilot = Pilot(reactor, session, "vm1", str(tmp_path), caps, until=60.0,
                  request_timeout=5, clock=clock)
    try:
        done = pilot.run()
        want = session.sent[-1]
        assert want["type"] == "want_job" and want["capabilities"]["max_run_time"] == 60
        # a max_run_time past the slice stands for a job whose input fetch took long
        job = {"argv": ["sleep", "300"], "outputs": ["*.txt"], "max_run_time": 100, "env": {}}
        session.reply("vm1", "offer", seq=want["seq"], job_id="j1", lease_id="l1",
                      lease_token="t", job=job, inputs=[], http_url="http://127.0.0.1:9/",
                      heartbeat_interval=5)
        assert session.sent[-1] == {"copilot": 1, "type": "accept", "job_id": "j1",
                                    "lease_id": "l1"}
        session.reply("vm1", "accepted", job_id="j1", lease_id="l1")
        spin(reactor, lambda: pilot._command is not None)
        pid = pilot._command.pid
        (tmp_path / "x.txt").write_text("never uploaded")

        clock.advance(60)  # the slice ends: the job is killed at once, not after max_run_time
        spin(reactor, lambda: session.sent[-1]["type"] == "release")
        assert session.sent[-1] == {"copilot": 1, "type": "release", "job_id": "j1",
                                    "lease_id": "l1", "reason": "its time slice ended"}
        assert not alive(pid)
        assert "done" not in [s["type"] for s in session.sent]

        clock.advance(5)  # no answer (a manager restart): the release is sent again
        assert [s["type"] for s in session.sent].count("release") == 2
        session.reply("vm1", "released", job_id="j1", lease_id="l1")
        spin(reactor, lambda: done.called)
        assert done.result == {"jobs_run": 1, "cpu_time": pilot.cpu_time}
        assert not [s for s in session.sent if s["type"] == "want_job" and s is not want]
        assert not [n for n in os.listdir(tmp_path) if n.startswith("job-")]  # its dir is gone
        assert not clock.getDelayedCalls(), "timers left behind"
    finally:
        for reader in list(reactor.getReaders()):
            reactor.removeReader(reader)


def test_giving_back_with_no_job_running_just_ends_the_loop(tmp_path):
    clock, session = Clock(), RecordingSession()
    caps = Capabilities(cores=1, memory_mb=512, max_run_time=3600)
    pilot = Pilot(None, session, "vm1", str(tmp_path), caps, request_timeout=5, clock=clock)
    done = pilot.run()
    want = session.sent[-1]
    waiting = pilot.give_back()
    assert not waiting.called  # the loop is still waiting for the answer to want_job
    session.reply("vm1", "no_job", seq=want["seq"], retry_after=1)
    clock.advance(1)
    assert done.called and waiting.called
    assert [m["type"] for m in session.sent] == ["want_job"]
    assert pilot.give_back().called

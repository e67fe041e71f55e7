#!/usr/bin/env python3
"""A BOINC test application built on ``vmwrapper.boinc``, started by the real client.

The test fixture copies this file into the client's project dir with a
shebang naming the virtualenv's Python. Behaviour comes from the command line
(the work unit's ``<command_line>``):

  --events PATH       append one JSON line per event (outside the slot, for tests)
  --secs N            seconds of "work" before finishing (progress = work / N)
  --checkpoint        checkpoint whenever the runtime says it is time
  --trickle VARIETY   send one trickle-up of that variety once running
  --hold              never finish; wait for the test to quit/abort the task

Events: start, checkpoint, trickle_up_sent, suspend, resume, quit, abort,
client_died, no_heartbeat, reread_app_info, network_available,
network_suspended_changed, trickle_down, finish. Every line has ``event``,
``t`` (Unix time) and ``pid``. On quit the app exits 0 at once (the client
restarts it; progress resumes from the last checkpoint) with ``quit_exit()``;
on abort it calls ``abort_exit()``; when the client dies it exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

from twisted.internet import reactor, task

from vmwrapper.boinc.filenames import resolve_filename
from vmwrapper.boinc.runtime import BoincRuntime, RuntimeListener

#: Slot file holding the work done at the last checkpoint (kept across restarts).
STATE_FILE = "vmtest_state.json"
#: Seconds between two work steps.
STEP = 0.1


class EventLog:
    """Appends events as JSON lines; each write is complete before the next event."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def record(self, event: str, **details: object) -> None:
        line = json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **details})
        with self.path.open("a") as events:
            events.write(line + "\n")


class TestApp(RuntimeListener):
    """Does fake work under the runtime and records what the client tells it."""

    def __init__(self, options: argparse.Namespace, events: EventLog) -> None:
        self.options = options
        self.events = events
        self.runtime = BoincRuntime(listener=self)
        self.work_done = 0.0
        self.suspended = False
        self.trickle_sent = False

    # -- the job ------------------------------------------------------------
    def start(self) -> None:
        init = self.runtime.init()
        state = pathlib.Path(STATE_FILE)
        if state.exists():
            self.work_done = json.loads(state.read_text())["work_done"]
        self.events.record(
            "start", result_name=init.result_name, restarted=state.exists(),
            work_done=self.work_done, wu_cpu_time=init.wu_cpu_time,
            checkpoint_period=init.checkpoint_period, standalone=self.runtime.standalone,
            leave_apps_in_memory=init.global_prefs.leave_apps_in_memory,
            nice=os.nice(0), sched_idle=os.sched_getscheduler(0) == os.SCHED_IDLE,
        )
        self.runtime.start()
        task.LoopingCall(self.step).start(STEP, now=False)

    def step(self) -> None:
        if self.suspended:
            return
        if self.options.trickle and not self.trickle_sent:
            self.trickle_sent = True
            body = f"<vm_state>running</vm_state>\n<pid>{os.getpid()}</pid>\n"
            self.runtime.send_trickle_up(self.options.trickle, body).addCallback(
                lambda _: self.events.record("trickle_up_sent", variety=self.options.trickle)
            )
        self.work_done += STEP
        if not self.options.hold:
            self.runtime.fraction_done = min(1.0, self.work_done / self.options.secs)
        else:
            self.runtime.fraction_done = 0.5
        if self.options.checkpoint and self.runtime.time_to_checkpoint():
            pathlib.Path(STATE_FILE).write_text(json.dumps({"work_done": self.work_done}))
            self.runtime.checkpoint_completed()
            self.events.record("checkpoint", work_done=self.work_done)
        if not self.options.hold and self.work_done >= self.options.secs:
            self.finish()

    def finish(self) -> None:
        inputs = resolve_filename(".", "in")
        data = inputs.read_bytes() if inputs.exists() else b""
        output = resolve_filename(".", "out")
        output.write_bytes(b"processed:" + data)
        self.events.record("finish", output=str(output))
        self.suspended = True  # no more steps
        self.runtime.finish(0)

    # -- RuntimeListener ----------------------------------------------------
    def suspend(self) -> None:
        self.suspended = True
        self.events.record("suspend")

    def resume(self) -> None:
        self.suspended = False
        self.events.record("resume")

    def quit(self) -> None:
        self.events.record("quit")
        self.runtime.quit_exit()

    def abort(self) -> None:
        self.events.record("abort")
        self.runtime.abort_exit()

    def client_died(self) -> None:
        self.events.record("client_died")
        os._exit(0)

    def no_heartbeat(self) -> None:
        self.events.record("no_heartbeat")

    def reread_app_info(self) -> None:
        self.events.record("reread_app_info",
                           leave_apps_in_memory=self.runtime.init_data.global_prefs.leave_apps_in_memory)

    def network_available(self) -> None:
        self.events.record("network_available")

    def network_suspended_changed(self, suspended: bool) -> None:
        self.events.record("network_suspended_changed", suspended=suspended)

    def trickle_down(self, body: str, path: pathlib.Path) -> None:
        self.events.record("trickle_down", body=body, path=str(path), file_exists=path.exists())


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vmtest_app")
    parser.add_argument("--events", type=pathlib.Path, required=True)
    parser.add_argument("--secs", type=float, default=10.0)
    parser.add_argument("--checkpoint", action="store_true")
    parser.add_argument("--trickle", default="")
    parser.add_argument("--hold", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    options = parse_args(argv)
    app = TestApp(options, EventLog(options.events))
    reactor.callWhenRunning(app.start)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

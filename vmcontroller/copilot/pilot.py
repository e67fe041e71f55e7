"""Pilot mode: a guest asks the job manager for work, runs it, returns the outputs.

One loop, until the volunteer's time slice ends (``until``) or :meth:`Pilot.stop`:

1. ``want_job`` with the capabilities (``max_run_time`` shrinks to what is
   left of the slice, so a job is never started that cannot finish);
   ``no_job`` means wait ``retry_after``; silence means ask again later.
2. ``offer`` -> ``accept`` -> ``accepted``: the lease is ours.
3. Fetch the inputs over HTTP (sha256 checked), run the command in its own
   process group (killed after ``max_run_time``) with ``stdout.log`` and
   ``stderr.log`` in the job's directory, and send a heartbeat every
   ``heartbeat_interval``.  An ``abort`` (lease gone, job cancelled) kills
   the command and drops the attempt.
4. Upload the files matching the output patterns plus both logs, each with
   its sha256; then ``done`` until ``done_ack`` or ``rejected``.

When the slice ends (or the reactor shuts down, e.g. on the SIGTERM the
wrapper's agent sends when the BOINC task ends) while a job's inputs are
fetched or it runs, the job is *given back*: killed (or never started),
nothing uploaded, and its lease ended with ``release``, so the manager
re-queues the job at once without spending an attempt instead of waiting
for the lease to expire.  Offers the pilot no longer wants are released
too: one answering a request it stopped waiting for, one arriving after
:meth:`Pilot.stop`, and an accepted one whose ``accepted`` never came (the
manager may have taken the accept and lost the answer).

For the wrapper: :attr:`Pilot.cpu_time` sums the user+system CPU seconds of
every job run, for trickle credit; :meth:`Pilot.run` fires with a summary
when the loop ends.  Only the standard library, Twisted and vmcontroller's
guest modules: this runs inside the appliance.
"""

# -*- test-case-name: tests.integration.copilot.test_copilot -*-

from __future__ import annotations

import fnmatch
import os
import random
import shutil
import signal
from dataclasses import replace
from typing import Any

from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from vmcontroller.copilot import messages
from vmcontroller.copilot.spec import Capabilities, check_file_name
from vmcontroller.copilot.storage import sha256_file
from vmcontroller.copilot.transfer_http import TransferRefused, download, upload
from vmcontroller.destinations import PRESENCE, to_guest, validate_vm_id
from vmcontroller.guest.paths import PathRefused, confine
from vmcontroller.guest.process import RunningCommand
from vmcontroller.stomp.client import NotConnectedError, StompSession
from vmcontroller.stomp.codec import Frame

__all__ = ["Pilot"]

log = Logger()

#: The logs every attempt returns, whatever its output patterns.
LOG_FILES = ("stdout.log", "stderr.log")
#: Bytes of each log's end sent with ``done`` (``copilot logs`` shows them).
TAIL_BYTES = 16 * 1024
#: Times ``done`` or a give-back ``release`` is sent before the lease is left to expire.
REPORT_TRIES = 12


class _LeaseLost(Exception):
    """The manager took the lease back (abort or rejection)."""


class Pilot:
    """The agent side of Co-Pilot for one VM.

    :param until: clock time at which the time slice ends (None: no end).
    :param request_timeout: seconds to wait for an answer before asking again.
    :param exit_when_idle: end the loop after this many seconds without a job.
    """

    def __init__(
        self,
        reactor: Any,
        session: StompSession,
        agent_id: str,
        work_dir: str,
        capabilities: Capabilities,
        until: float | None = None,
        request_timeout: float = 10.0,
        exit_when_idle: float | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = clock or reactor
        self.session = session
        self.agent_id = validate_vm_id(agent_id)
        self.work_dir = os.path.abspath(work_dir)
        self.capabilities = capabilities
        self.until = until
        self.request_timeout = request_timeout
        self.exit_when_idle = exit_when_idle
        self.cpu_time = 0.0
        self.jobs_run = 0
        # Random start: a stale answer left in our queue by an earlier run never matches.
        self._seq = random.randrange(1 << 30)
        self._stopping = False
        self._waiters: dict[tuple[str, Any], defer.Deferred[dict[str, Any]]] = {}
        self._aborted: set[str] = set()
        self._command: RunningCommand | None = None
        self._command_lease: str | None = None
        #: Leases given back (-> why) and the one whose job may still be given back.
        self._given_back: dict[str, str] = {}
        self._releasable: str | None = None
        self._give_back_reason: str | None = None
        self._loop: defer.Deferred[dict[str, Any]] | None = None
        os.makedirs(self.work_dir, exist_ok=True)
        session.subscribe(to_guest(self.agent_id), self._on_frame)

    # --- messages --------------------------------------------------------------------

    def _send(self, kind: str, **fields: Any) -> None:
        self.session.send(PRESENCE, messages.encode(kind, **fields))

    def _on_frame(self, frame: Frame) -> None:
        try:
            message = messages.decode(frame.body)
        except messages.MessageError as error:
            log.warn("bad message from the manager: {error}", error=error)
            return
        kind = message["type"]
        if kind == "abort":
            self._abort(message["lease_id"], message["reason"])
            return
        key = ("seq", message["seq"]) if "seq" in message else ("lease", message["lease_id"])
        waiter = self._waiters.pop(key, None)
        if waiter is not None:
            waiter.callback(message)
        elif kind == "offer":  # we stopped waiting for it: let the job go to someone else now
            try:
                self._send("release", job_id=message["job_id"], lease_id=message["lease_id"],
                           reason="offer came after the pilot stopped waiting")
            except NotConnectedError:
                pass  # the offer expires unused

    def _ask(self, key: tuple[str, Any], kind: str, **fields: Any) -> defer.Deferred[dict[str, Any]]:
        """Send a message and wait up to ``request_timeout`` for the answer keyed ``key``."""
        waiter: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._waiters[key] = waiter
        try:
            self._send(kind, **fields)
        except NotConnectedError:
            pass  # the timeout below retries
        timer = self.clock.callLater(self.request_timeout, self._expire_waiter, key, waiter)
        waiter.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return waiter

    def _expire_waiter(self, key: tuple[str, Any], waiter: defer.Deferred[Any]) -> None:
        if self._waiters.get(key) is waiter:
            del self._waiters[key]
            waiter.callback(None)

    def _abort(self, lease_id: str, reason: str) -> None:
        log.warn("lease {lease} taken back: {reason}", lease=lease_id, reason=reason)
        self._aborted.add(lease_id)
        if self._command is not None and self._command_lease == lease_id:
            self._command.kill(signal.SIGKILL)

    # --- the loop --------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the current job, then leave the loop."""
        self._stopping = True

    def give_back(self, reason: str = "the pilot is shutting down") -> defer.Deferred[Any]:
        """Leave the loop now: the job being fetched or run (if any) is handed back.

        A running command is killed.  Fires when the loop has ended, i.e.
        after the manager answered the ``release`` that gives the job back
        (or that answer timed out), so a shutdown trigger returning this
        keeps the broker connection up until then.
        """
        self._stopping = True
        self._give_back_reason = reason
        lease_id = self._releasable
        if lease_id is not None and lease_id not in self._given_back:
            log.info("giving lease {lease} back: {reason}", lease=lease_id, reason=reason)
            self._given_back[lease_id] = reason
            if self._command is not None and self._command_lease == lease_id:
                self._command.kill(signal.SIGKILL)
        if self._loop is None or self._loop.called:
            return defer.succeed(None)
        finished: defer.Deferred[Any] = defer.Deferred()
        self._loop.addBoth(lambda result: (finished.callback(None), result)[1])
        return finished

    def _slice_over(self) -> None:
        if self._releasable is not None:
            log.info("time slice over while a job runs")
            self.give_back("its time slice ended")

    def _remaining(self) -> float | None:
        return None if self.until is None else self.until - self.clock.seconds()

    def run(self) -> defer.Deferred[dict[str, Any]]:
        """The pilot loop; fires with ``{"jobs_run", "cpu_time"}`` when it ends.

        With a real reactor, its shutdown gives the running job back first.
        """
        timers = []
        if self.until is not None:
            delay = max(0.0, self.until - self.clock.seconds())
            timers.append(self.clock.callLater(delay, self._slice_over))
        trigger = None
        if hasattr(self.reactor, "addSystemEventTrigger"):
            trigger = self.reactor.addSystemEventTrigger("before", "shutdown", self.give_back)
        self._loop = self._run()

        def over(result: Any) -> Any:
            for timer in timers:
                if timer.active():
                    timer.cancel()
            if trigger is not None:
                try:
                    self.reactor.removeSystemEventTrigger(trigger)
                except (ValueError, KeyError):
                    pass  # the shutdown that fired it is under way
            return result

        return self._loop.addBoth(over)

    @defer.inlineCallbacks
    def _run(self) -> Any:
        yield self.session.when_connected()
        idle_since = self.clock.seconds()
        while not self._stopping:
            remaining = self._remaining()
            if remaining is not None and remaining < 1.0:
                log.info("time slice over")
                break
            caps = self.capabilities
            if remaining is not None:
                caps = replace(caps, max_run_time=min(caps.max_run_time, remaining))
            self._seq += 1
            answer = yield self._ask(
                ("seq", self._seq), "want_job", seq=self._seq, capabilities=caps.to_dict()
            )
            if answer is not None and answer["type"] == "offer":
                if self._stopping:  # stop() or give_back() came while we asked
                    yield self._ask_until_answered(
                        1, "release", job_id=answer["job_id"],
                        lease_id=answer["lease_id"], reason="the pilot is stopping",
                    )  # fmt: skip
                    break
                yield self._take(answer)
                idle_since = self.clock.seconds()
                continue
            idle = self.clock.seconds() - idle_since
            if self.exit_when_idle is not None and idle >= self.exit_when_idle:
                log.info("no job for {idle:.0f} s: leaving", idle=idle)
                break
            if answer is not None:
                yield task.deferLater(self.clock, min(float(answer["retry_after"]), 30.0))
        return {"jobs_run": self.jobs_run, "cpu_time": self.cpu_time}

    @defer.inlineCallbacks
    def _take(self, offer: dict[str, Any]) -> Any:
        job_id, lease_id = offer["job_id"], offer["lease_id"]
        reply = None
        for _ in range(3):  # accept is idempotent: a reply lost in a manager restart is asked again
            reply = yield self._ask(("lease", lease_id), "accept", job_id=job_id, lease_id=lease_id)
            if reply is not None:
                break
        if reply is None:  # the manager may hold our accept: give the lease back, spare the attempt
            log.info("offer of {job}: no answer to accept; releasing it", job=job_id)
            yield self._ask_until_answered(
                3, "release", job_id=job_id, lease_id=lease_id,
                reason="no answer to accept",
            )  # fmt: skip
            return
        if reply["type"] != "accepted":
            log.info("offer of {job} lost: {reply}", job=job_id, reply=reply.get("reason"))
            return
        job_dir = os.path.join(self.work_dir, f"job-{job_id}-{lease_id[:8]}")
        os.makedirs(job_dir, exist_ok=True)
        beat = task.LoopingCall(self._heartbeat, job_id, lease_id)
        beat.clock = self.clock
        beat.start(float(offer["heartbeat_interval"]), now=False)
        self._releasable = lease_id
        if self._give_back_reason is not None:  # give_back() came while we waited for "accepted"
            self._given_back[lease_id] = self._give_back_reason
        given_back = None
        try:
            if lease_id not in self._given_back:
                yield self._fetch_inputs(offer, job_dir)
            if lease_id not in self._given_back:
                result = yield self._execute(offer, job_dir)
            self._releasable = None  # from here on the result is worth reporting
            if lease_id in self._aborted:
                raise _LeaseLost("aborted while running")
            given_back = self._given_back.get(lease_id)
            if given_back is None:
                outputs = yield self._upload_outputs(offer, job_dir)
        except _LeaseLost as error:
            log.warn("attempt at {job} dropped: {error}", job=job_id, error=error)
            return
        except TransferRefused as error:
            if error.status == 409:  # the lease is gone: nobody wants this attempt any more
                log.warn("attempt at {job} dropped: {error}", job=job_id, error=error)
                return
            log.warn("attempt at {job} failed: {error}", job=job_id, error=error)
            result, outputs = {"exit_code": None, "error": f"file transfer refused: {error}"}, {}
        except Exception as error:  # a pilot-side failure: report it, the job may rerun elsewhere
            log.failure("attempt at {job} failed in the pilot", job=job_id)
            result, outputs = {"exit_code": None, "error": f"pilot error: {error}"}, {}
        finally:
            if beat.running:
                beat.stop()
            self._releasable = None
            self._aborted.discard(lease_id)
            # a transfer or pilot failure of a job given back still gives it back
            given_back = self._given_back.pop(lease_id, None)
        if given_back is not None:
            yield self._ask_until_answered(
                REPORT_TRIES, "release", job_id=job_id, lease_id=lease_id,
                reason=given_back,
            )  # fmt: skip
        else:
            yield self._ask_until_answered(
                REPORT_TRIES, "done", job_id=job_id, lease_id=lease_id,
                result=result, outputs=outputs,
            )  # fmt: skip
        shutil.rmtree(job_dir, ignore_errors=True)

    def _heartbeat(self, job_id: str, lease_id: str) -> None:
        try:
            self._send("heartbeat", job_id=job_id, lease_id=lease_id)
        except NotConnectedError:
            log.warn("broker down: heartbeat for {job} not sent", job=job_id)

    @defer.inlineCallbacks
    def _fetch_inputs(self, offer: dict[str, Any], job_dir: str) -> Any:
        for item in offer["inputs"]:
            name = check_file_name(item.get("name"), "input name")
            target = confine(job_dir, name)
            yield threads.deferToThread(
                download, offer["http_url"], offer["lease_token"], name, target, item["sha256"]
            )

    @defer.inlineCallbacks
    def _execute(self, offer: dict[str, Any], job_dir: str) -> Any:
        job = offer["job"]
        argv = list(job["argv"]) if job.get("argv") else ["/bin/sh", "-c", job["shell"]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("COPILOT_")}
        env.update(job.get("env") or {})
        env.update(COPILOT_JOB_ID=offer["job_id"], COPILOT_AGENT_ID=self.agent_id, HOME=job_dir)
        logs = {name: open(os.path.join(job_dir, f"{name}.log"), "wb") for name in ("stdout", "stderr")}
        try:
            command = RunningCommand(
                self.reactor, argv, lambda stream, data: logs[stream].write(data),
                cwd=job_dir, env=env, timeout=float(job["max_run_time"]), clock=self.clock,
            )  # fmt: skip
        except OSError as error:
            for handle in logs.values():
                handle.close()
            return {"exit_code": None, "error": f"cannot start {argv[0]}: {error}"}
        self._command, self._command_lease = command, offer["lease_id"]
        try:
            outcome = yield command.finished
        finally:
            self._command = self._command_lease = None
            for handle in logs.values():
                handle.close()
        cpu = outcome.rusage.get("ru_utime", 0.0) + outcome.rusage.get("ru_stime", 0.0)
        self.cpu_time += cpu
        self.jobs_run += 1
        return {
            "exit_code": outcome.code,
            "signal": outcome.signal,
            "timed_out": outcome.timed_out,
            "wall_time": outcome.wall_time,
            "cpu_time": cpu,
            "agent": self.agent_id,
            "stdout_tail": _tail(os.path.join(job_dir, "stdout.log")),
            "stderr_tail": _tail(os.path.join(job_dir, "stderr.log")),
        }

    @defer.inlineCallbacks
    def _upload_outputs(self, offer: dict[str, Any], job_dir: str) -> Any:
        names = set(LOG_FILES)
        for entry in os.listdir(job_dir):
            if any(fnmatch.fnmatchcase(entry, p) for p in offer["job"]["outputs"]):
                names.add(entry)
        outputs = {}
        for name in sorted(names):
            try:
                check_file_name(name, "output name")
                path = confine(job_dir, name)
            except (ValueError, PathRefused) as error:
                log.warn("output {name} skipped: {error}", name=name, error=error)
                continue
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            digest = yield threads.deferToThread(sha256_file, path)
            info = yield threads.deferToThread(
                upload, offer["http_url"], offer["lease_token"], name, path, digest
            )
            outputs[name] = {"size": info["size"], "sha256": info["sha256"]}
        return outputs

    @defer.inlineCallbacks
    def _ask_until_answered(self, tries: int, kind: str, **fields: Any) -> Any:
        """Send ``kind`` about a lease until the manager answers (a restart may eat some)."""
        job_id = fields["job_id"]
        for _ in range(tries):
            reply = yield self._ask(("lease", fields["lease_id"]), kind, **fields)
            if reply is not None:
                log.info("job {job}: {kind} -> {answer} {reason}", job=job_id, kind=kind,
                         answer=reply["type"], reason=reply.get("reason", ""))
                return reply["type"]
        log.warn("job {job}: no answer to {kind}; the lease will expire", job=job_id, kind=kind)
        return None


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - TAIL_BYTES))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""

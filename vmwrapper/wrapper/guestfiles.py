"""vboxwrapper's guest-written control files, read through the guest agent.

vboxwrapper reads these files from a shared folder every 10 s
(``vboxwrapper.md`` 1.7-1.9). We have a guest agent instead, so the names are
relative to the agent's work directory (the guest's "shared" directory) and
are fetched with ``get_file`` (contents) or a tiny ``stat`` command (mtime),
at the same cadence:

* ``completion_trigger_file``: line 1 exit status, line 2 ``is_notice`` 0/1,
  the rest a message: the job ends with that status;
* ``temporary_exit_trigger_file``: line 1 delay in seconds, line 2
  ``is_notice``, the rest a message: the file is deleted, the VM checkpointed,
  and the wrapper exits temporarily for that delay;
* ``heartbeat_filename``: its mtime must change at least every
  ``minimum_heartbeat_interval`` s; it is checked every third of that, the first
  check always passes, and only three unchanged checks in a row end the job
  (BOINC/boinc#5864: one late check after a clock jump is no failure);
* ``trickle_trigger_file`` (any number): sent as a trickle-up whose variety is
  the file name and body the file's contents, then deleted in the guest.

The watcher only decides; the machine acts through the two callbacks it gives
(``end`` with an :class:`~vmwrapper.wrapper.outcome.Outcome`, ``checkpoint``).
"""

from __future__ import annotations

import pathlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from vmwrapper.wrapper.outcome import Ending, Outcome

#: Seconds of running time between two scans (vboxwrapper's every-10th-tick cadence).
SCAN_PERIOD = 10.0
#: Largest trigger or trickle file read from the guest.
MAX_TRIGGER_BYTES = 64 * 1024
#: Unchanged heartbeat checks in a row that end the job.
HEARTBEAT_STRIKES = 3
#: Seconds a small guest command (stat, rm) may take.
SMALL_RUN_TIMEOUT = 30.0
#: BOINC's error codes for a failed heartbeat file (``lib/error_numbers.h``), as the
#: client sees them in the exit status (low 8 bits, like ``ExitStatus.ERR_EXEC``).
ERR_FILE_MISSING = -163 & 0xFF
ERR_STAT = -240 & 0xFF
ERR_TIMEOUT = -182 & 0xFF


@dataclass(frozen=True)
class TriggerRequest:
    """What a trigger file says: a status (completion) or a delay (temporary exit)."""

    value: float
    notice: bool
    message: str


def parse_trigger(text: str, what: str) -> TriggerRequest:
    """Parse ``value\\nis_notice\\nmessage...`` (vboxwrapper's trigger file format).

    An empty or unparsable first line is not an error (the guest may be writing
    it, or wrote a bare file): the value is 0 and the message says so.
    """
    lines = text.splitlines()
    first = lines[0].strip() if lines else ""
    try:
        value = float(first) if first else 0.0
    except ValueError:
        value, lines = 0.0, ["", "0", f"{what} has no number on its first line: {first!r}"]
    notice = len(lines) > 1 and lines[1].strip() == "1"
    message = "\n".join(lines[2:]).strip()
    return TriggerRequest(value, notice, message)


class HeartbeatCheck:
    """The heartbeat file's verdicts over time; pure logic, no I/O.

    :param interval: ``minimum_heartbeat_interval``; a check is due every third of it.
    """

    def __init__(self, interval: float) -> None:
        self.period = interval / 3.0
        self.next_due = 0.0
        self.checks = 0
        self.last_mtime: str | None = None
        self.strikes = 0

    def due(self, running_seconds: float) -> bool:
        return running_seconds >= self.next_due

    def observe(self, running_seconds: float, mtime: str | None, error: str = "") -> Outcome | None:
        """Record one check (*mtime* None: the file is missing; *error*: stat failed);
        returns the ending when the heartbeat has failed, else None."""
        self.next_due = running_seconds + self.period
        self.checks += 1
        if self.checks == 1:  # the guest may not have started its heartbeat yet
            self.last_mtime = mtime
            return None
        if error:
            return Outcome(Ending.FINISH, ERR_STAT,
                           f"cannot stat the heartbeat file (ERR_STAT): {error}")
        if mtime is None:
            return Outcome(Ending.FINISH, ERR_FILE_MISSING,
                           "the guest's heartbeat file is missing (ERR_FILE_MISSING)")
        if mtime != self.last_mtime:
            self.last_mtime, self.strikes = mtime, 0
            return None
        self.strikes += 1
        if self.strikes >= HEARTBEAT_STRIKES:
            return Outcome(Ending.FINISH, ERR_TIMEOUT,
                           f"the guest's heartbeat file did not change in "
                           f"{HEARTBEAT_STRIKES} checks {self.period:g} s apart (ERR_TIMEOUT)")
        return None


class GuestFileWatcher:
    """Scans the guest's control files every :data:`SCAN_PERIOD` s of running time.

    :param job: the job description (file names, heartbeat interval).
    :param channel: the guest channel.
    :param vm_id: the VM's id on the channel.
    :param scratch: ``name -> path`` of a host scratch file.
    :param send_trickle: ``(variety, body) -> Deferred`` (the runtime's).
    :param end: ends the run with an outcome (the machine's completion or interrupt).
    :param checkpoint: saves the VM; fires with True on success.
    :param log: one line to stderr.txt.
    """

    def __init__(self, *, job: Any, channel: Any, vm_id: str,
                 scratch: Callable[[str], pathlib.Path],
                 send_trickle: Callable[[str, str], defer.Deferred[Any]],
                 end: Callable[[Outcome], None], checkpoint: Callable[[], defer.Deferred[Any]],
                 log: Callable[[str], None]) -> None:
        self.job = job
        self.channel = channel
        self.vm_id = vm_id
        self._scratch = scratch
        self._send_trickle = send_trickle
        self._end = end
        self._checkpoint = checkpoint
        self._log = log
        self.heartbeat = (HeartbeatCheck(job.minimum_heartbeat_interval)
                          if job.heartbeat_filename else None)
        self._busy = False
        self._next_scan = 0.0
        self._ended = False

    @property
    def active(self) -> bool:
        """True when the job names any file this watcher reads."""
        job = self.job
        return bool(job.completion_trigger_file or job.temporary_exit_trigger_file
                    or job.heartbeat_filename or job.trickle_trigger_file)

    def maybe_scan(self, running_seconds: float) -> defer.Deferred[Any] | None:
        """Scan if a scan is due and none is running; returns the scan's Deferred."""
        if not self.active or self._busy or self._ended or running_seconds < self._next_scan:
            return None
        self._next_scan = running_seconds + SCAN_PERIOD
        self._busy = True
        d = defer.ensureDeferred(self._scan(running_seconds))

        def over(result: Any) -> None:
            self._busy = False
            if isinstance(result, Failure):
                self._log(f"reading the guest's control files: {result.getErrorMessage()}")

        return d.addBoth(over)

    async def _scan(self, running_seconds: float) -> None:
        job = self.job
        if job.completion_trigger_file:
            text = await self._read(job.completion_trigger_file)
            if text is not None:
                request = parse_trigger(text, job.completion_trigger_file)
                status = int(request.value)
                self._finish(Outcome(Ending.FINISH, status & 0xFF,
                                     request.message or f"the guest wrote "
                                     f"{job.completion_trigger_file} (status {status})",
                                     notice=request.notice))
                return
        if job.temporary_exit_trigger_file:
            text = await self._read(job.temporary_exit_trigger_file)
            if text is not None:
                await self._temporary_exit(parse_trigger(text, job.temporary_exit_trigger_file))
                return
        for name in job.trickle_trigger_file:
            text = await self._read(name)
            if text is not None:
                await self._send_trickle(name, text)
                await self._remove(name)
                self._log(f"sent the guest's {name} as a trickle-up ({len(text)} bytes)")
        if self.heartbeat is not None and self.heartbeat.due(running_seconds):
            mtime, error = await self._mtime(job.heartbeat_filename)
            verdict = self.heartbeat.observe(running_seconds, mtime, error)
            if verdict is not None:
                self._finish(verdict)

    async def _temporary_exit(self, request: TriggerRequest) -> None:
        name = self.job.temporary_exit_trigger_file
        await self._remove(name)  # before the checkpoint, or the restore would see it again
        saved = await self._checkpoint()
        delay = max(request.value, 1.0)
        message = request.message or f"the guest wrote {name}"
        if not saved:
            message += " (no new checkpoint: the next start continues from the previous one)"
        self._finish(Outcome(Ending.TEMPORARY, 0, message, delay, notice=request.notice))

    def _finish(self, outcome: Outcome) -> None:
        self._ended = True
        self._end(outcome)

    async def _read(self, name: str) -> str | None:
        """The guest file's text, or None when it does not exist."""
        target = self._scratch("guestfile")
        try:
            await self.channel.get_file(self.vm_id, name, str(target), MAX_TRIGGER_BYTES)
        except Exception as error:  # noqa: BLE001 - classified here
            if getattr(error, "code", "") == "not_found":
                return None
            raise
        return target.read_text(encoding="utf-8", errors="replace")

    async def _small_run(self, shell: str) -> tuple[int | None, str]:
        out: list[bytes] = []

        def collect(stream: str, data: bytes) -> None:
            if stream == "stdout":
                out.append(data)

        _, running = self.channel.run(self.vm_id, shell, None, None, SMALL_RUN_TIMEOUT, collect)
        result = await running
        return result.code, b"".join(out).decode("utf-8", errors="replace").strip()

    async def _remove(self, name: str) -> None:
        await self._small_run(f"rm -f -- {shlex.quote(name)}")

    async def _mtime(self, name: str) -> tuple[str | None, str]:
        """(mtime, "") / (None, "") when missing / (None, error) when stat failed."""
        quoted = shlex.quote(name)
        code, out = await self._small_run(
            f"if [ -e {quoted} ]; then stat -c %Y -- {quoted}; else exit 3; fi")
        if code == 3:
            return None, ""
        if code != 0 or not out:
            return None, f"stat {name} exited with {code}: {out or 'no output'}"
        return out.splitlines()[-1], ""


def unsupported_warnings(job: Any) -> list[str]:
    """Lines for stderr.txt about vboxwrapper file options this wrapper handles otherwise.

    * shared folders: the guest agent moves files instead, and the guest's work
      directory stands in for vboxwrapper's ``shared`` directory (a 9p share
      would also forbid QEMU checkpoints);
    * ``intermediate_upload_file``: our BOINC API has no ``boinc_upload_file``.
    """
    lines = []
    shared = [name for name in ("enable_shared_directory", "share_slot_dir",
                                "enable_scratch_directory", "share_project_dir")
              if getattr(job, name)]
    if shared:
        lines.append(f"warning: <{'>, <'.join(shared)}> ignored: no folder is shared with the "
                     "guest (the guest agent copies files; trigger, heartbeat and progress "
                     "files are read from the agent's work directory, and <copy_to_shared> "
                     "files are copied there)")
    if job.intermediate_upload_file:
        lines.append(f"warning: <intermediate_upload_file> ignored "
                     f"({', '.join(job.intermediate_upload_file)}): this BOINC API has no "
                     "boinc_upload_file; list the files in <copy_from_guest> to upload them "
                     "with the result")
    return lines

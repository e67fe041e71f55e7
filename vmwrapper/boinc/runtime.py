"""The BOINC runtime API: what a BOINC application does to live under the client.

:class:`BoincRuntime` reads ``init_data.xml``, maps the shared memory and runs a
once-a-second loop on an injected clock that

1. reads the control channel (``<suspend/>``, ``<resume/>``, ``<quit/>``,
   ``<abort/>``, ``<reread_app_info/>``, ``<network_available/>``),
2. reads the heartbeat (and ``<network_suspended/>`` in it),
3. takes trickle-down files when the client says there are some,
4. moves queued trickle-ups on, one at a time,
5. sends the app status (CPU time, checkpoint CPU time, fraction done) unless
   suspended,
6. notices a missing heartbeat (30 s) and a dead client (``kill(pid, 0)``
   every 10 s).

It tells the application through a :class:`RuntimeListener` and never exits on
its own: a VM wrapper must save or stop its VM before exiting, and only the
application knows how. Exits happen only through :meth:`BoincRuntime.finish`,
:meth:`BoincRuntime.temporary_exit` and :meth:`BoincRuntime.abort_exit`.

Typical use::

    runtime = BoincRuntime(listener=MyListener())
    try:
        init = runtime.init()
    except BoincApiError as error:   # damaged slot: may be fine next time
        log(str(error))
        runtime.temporary_exit(RESTART_DELAY, str(error))
    runtime.start()

Facts in ``boinc_protocol.md``; the loop's cost is measured by
``bench/bench_boinc_status_loop.py`` (it runs for days: keep it cheap).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from vmwrapper.boinc.errors import BoincApiError, SharedMemoryError, SlotError
from vmwrapper.boinc.exitcodes import MAX_TEMPORARY_EXIT_DELAY, ExitStatus
from vmwrapper.boinc.initdata import (
    INIT_DATA_FILE,
    InitData,
    read_init_data,
    standalone_init_data,
)
from vmwrapper.boinc.log import log
from vmwrapper.boinc.shmem import MMAP_FILE_NAME, Channel, SharedMemory
from vmwrapper.boinc.trickle import HAVE_TRICKLE_DOWN, TrickleUpQueue, take_trickle_down_files

#: Seconds between two passes of the status loop (the client polls every second too).
LOOP_PERIOD = 1.0
#: Seconds without a heartbeat after which the client is presumed gone.
HEARTBEAT_TIMEOUT = 30.0
#: Seconds between two checks that the client process still exists.
CLIENT_CHECK_PERIOD = 10.0
#: Seconds :meth:`BoincRuntime.finish` waits so the last status reaches the client.
FINISH_DELAY = 2.0

FINISH_FILE = "boinc_finish_called"
TEMPORARY_EXIT_FILE = "boinc_temporary_exit"


class RuntimeListener:
    """What the runtime tells the application; every method is a no-op here.

    Subclass it and override what you need. Methods are called from the status
    loop, in the reactor thread; an exception in one is logged and the loop goes
    on. The runtime keeps running after any of them: the application decides
    whether and how to exit.
    """

    def suspend(self) -> None:
        """The client asks to suspend (``<suspend/>``): pause the work, stay in memory.

        The client never stops an API app itself; a VM must be paused now.
        """

    def resume(self) -> None:
        """The client asks to resume after :meth:`suspend` (``<resume/>``)."""

    def quit(self) -> None:
        """The client asks the app to exit now and be restarted later (``<quit/>``).

        Save state (checkpoint the VM) and call
        :meth:`BoincRuntime.temporary_exit` or exit 0 within 60 s, or be killed.
        """

    def abort(self) -> None:
        """The task is aborted (``<abort/>``): clean up, then :meth:`BoincRuntime.abort_exit`."""

    def reread_app_info(self) -> None:
        """Preferences changed; :attr:`BoincRuntime.init_data` has been re-read already."""

    def network_available(self) -> None:
        """The volunteer allowed network access again (``<network_available/>``)."""

    def network_suspended_changed(self, suspended: bool) -> None:
        """The heartbeat started or stopped carrying ``<network_suspended/>``."""

    def no_heartbeat(self) -> None:
        """No heartbeat for 30 s: the client is probably gone. Called once per loss."""

    def client_died(self) -> None:
        """The client process no longer exists. Called once."""

    def trickle_down(self, body: str, path: pathlib.Path) -> None:
        """A trickle-down message arrived; *path* (already deleted) was its file."""


def process_cpu_time() -> float:
    """CPU seconds of this process and its waited-for children, user + system."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def pid_exists(pid: int) -> bool:
    """True if a process with *pid* exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BoincRuntime:
    """The app's side of the BOINC client protocol; see the module docstring.

    :param slot_dir: the slot directory (the client starts the app in it).
    :param clock: the reactor's time interface; default the global reactor.
    :param cpu_time: CPU seconds used during this episode (since the app
        started); default :func:`process_cpu_time`. A VM wrapper adds the VM's.
    :param listener: receives control events; default a no-op listener.
    :param exit: ends the process with a status; ``os._exit`` by default
        (no ``atexit`` handlers or reactor shutdown that could hang).
    """

    def __init__(
        self,
        slot_dir: str | pathlib.Path = ".",
        clock: IReactorTime | None = None,
        cpu_time: Callable[[], float] | None = None,
        listener: RuntimeListener | None = None,
        exit: Callable[[int], Any] = os._exit,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # noqa: PLC0415 - only when not injected
        self.slot_dir = pathlib.Path(slot_dir)
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        self._cpu_time = cpu_time if cpu_time is not None else process_cpu_time
        self.listener = listener if listener is not None else RuntimeListener()
        self._exit = exit

        self.init_data = InitData()
        self.standalone = True
        self.suspended = False
        self.network_suspended = False
        #: progress of this job, 0..1 (mapped into the client's fraction range)
        self.fraction_done = 0.0
        self.want_network = False
        #: extra processes the client should count (and kill at the end): the VM's
        self.other_pids: list[int] = []
        #: cumulative CPU seconds at the last checkpoint (sent in every status)
        self.checkpoint_cpu_time = 0.0

        #: wu_cpu_time as of this episode's start; later rewrites of init_data.xml
        #: (older clients put the latest checkpoint's CPU time there) must not count twice
        self._episode_start_cpu_time = 0.0
        self._shmem: SharedMemory | None = None
        self._trickles: TrickleUpQueue | None = None
        self._loop: task.LoopingCall | None = None
        self._last_checkpoint = 0.0
        self._last_heartbeat = 0.0
        self._heartbeat_lost = False
        self._last_client_check = 0.0
        self._client_dead = False
        self._graphics_reply: str | None = None
        self._last_loop_error: str | None = None
        self._finishing = False

    # -- start-up ---------------------------------------------------------

    def init(self) -> InitData:
        """Read ``init_data.xml`` and map the shared memory.

        Without ``init_data.xml`` the app runs standalone (from a shell):
        :func:`~.initdata.standalone_init_data`, no shared memory; status and
        trickle calls do nothing, finish and temporary exit still write their files.

        :raises BoincApiError: ``init_data.xml`` is malformed, names SysV shared
            memory, or ``boinc_mmap_file`` is missing or unusable. The slot may
            be fine at the next start: answer with a temporary exit.
        """
        init_path = self.slot_dir / INIT_DATA_FILE
        now = self.clock.seconds()
        self._last_checkpoint = self._last_heartbeat = self._last_client_check = now
        if not init_path.exists():
            self.standalone = True
            self.init_data = standalone_init_data(self.slot_dir)
            return self.init_data
        init_data = read_init_data(init_path)
        if init_data.shm_key != -1:
            raise SharedMemoryError(
                f"{INIT_DATA_FILE}: <shm_key> is {init_data.shm_key}, expected -1: the client "
                "offers SysV shared memory, which means the app version declares no "
                "<api_version> (it must say 7.20.0 or later)"
            )
        self._shmem = SharedMemory.open(self.slot_dir / MMAP_FILE_NAME)
        self._trickles = TrickleUpQueue(self.slot_dir, self._shmem)
        self.init_data = init_data
        self.standalone = False
        self.checkpoint_cpu_time = self._episode_start_cpu_time = init_data.wu_cpu_time
        return init_data

    def start(self) -> None:
        """Run the status loop every second on the clock (first pass now).

        Standalone there is nothing to talk to, and no loop is started.
        """
        if self.standalone or (self._loop is not None and self._loop.running):
            return
        self._take_trickle_downs()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(LOOP_PERIOD, now=True)

    def stop(self) -> None:
        """Stop the status loop (no more statuses; the client sees stale progress)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    # -- what the app reports ---------------------------------------------

    def current_cpu_time(self) -> float:
        """Cumulative CPU seconds of the task: earlier episodes + this one."""
        return self._episode_start_cpu_time + self._cpu_time()

    def reported_fraction_done(self) -> float:
        """:attr:`fraction_done` mapped into ``[fraction_done_start, fraction_done_end]``."""
        start = self.init_data.fraction_done_start
        end = self.init_data.fraction_done_end
        done = min(max(self.fraction_done, 0.0), 1.0)
        return start + done * (end - start)

    def status_message(self) -> str:
        """The app_status message the loop sends now."""
        parts = [
            f"<current_cpu_time>{self.current_cpu_time():e}</current_cpu_time>\n"
            f"<checkpoint_cpu_time>{self.checkpoint_cpu_time:e}</checkpoint_cpu_time>\n"
            f"<fraction_done>{self.reported_fraction_done():e}</fraction_done>\n"
        ]
        if self.want_network:
            parts.append("<want_network>1</want_network>\n")
        for pid in self.other_pids:
            parts.append(f"<other_pid>{int(pid)}</other_pid>\n")
        return "".join(parts)

    def set_web_graphics_url(self, url: str) -> None:
        """Tell the client (once) the URL of the job's web page (shown in the Manager)."""
        self._graphics_reply = f"<web_graphics_url>{_xml_text(url)}</web_graphics_url>\n"
        self._send_graphics_reply()

    def set_remote_desktop_addr(self, address: str) -> None:
        """Tell the client (once) the ``host:port`` of the VM's remote desktop."""
        self._graphics_reply = f"<remote_desktop_addr>{_xml_text(address)}</remote_desktop_addr>\n"
        self._send_graphics_reply()

    # -- checkpoints ------------------------------------------------------

    def time_to_checkpoint(self) -> bool:
        """True once the volunteer's checkpoint period has passed since the last one."""
        period = self.init_data.effective_checkpoint_period
        return self.clock.seconds() - self._last_checkpoint >= period

    def checkpoint_completed(self) -> None:
        """Record a checkpoint: its CPU time goes out with the next status.

        A change of checkpoint CPU time is how the client learns of a
        checkpoint (from then on, preemption sends ``<quit/>``).
        """
        self.checkpoint_cpu_time = self.current_cpu_time()
        self._last_checkpoint = self.clock.seconds()

    # -- trickles ---------------------------------------------------------

    def send_trickle_up(self, variety: str, body: str) -> defer.Deferred[None]:
        """Send a trickle-up message; fires when the client has taken it.

        Trickles go out one at a time (see :mod:`.trickle`); standalone, this
        fires at once and sends nothing.

        :raises ValueError: *variety* is not a plain name.
        """
        if self._trickles is None:
            from vmwrapper.boinc.trickle import format_trickle_up  # noqa: PLC0415

            format_trickle_up(variety, body)  # same validation as with a client
            return defer.succeed(None)
        return self._trickles.submit(variety, body)

    # -- the end ----------------------------------------------------------

    def finish(
        self, status: int = 0, message: str | None = None, notice: bool = False
    ) -> defer.Deferred[int]:
        """End the task: last status, ``boinc_finish_called``, a 2-s pause, exit.

        :param status: the exit status (0 = success; see :mod:`.exitcodes`).
        :param message: shown to the volunteer (one line).
        :param notice: show *message* as a notice rather than in the task list.
        :returns: a Deferred firing with *status* after ``exit`` was called
            (tests inject an ``exit`` that returns).

        Trickles still queued are lost: wait for the Deferreds of
        :meth:`send_trickle_up` before finishing.
        :raises SlotError: the finish file cannot be written.
        """
        self._finishing = True
        self.stop()
        if self._shmem is not None:
            self._shmem.force_send(Channel.APP_STATUS, self.status_message())
        content = f"{int(status)}\n"
        if message is not None:
            content += f"{_one_line(message)}\n{'notice' if notice else ''}\n"
        self._write_slot_file(FINISH_FILE, content)
        delay = 0.0 if self.standalone else FINISH_DELAY
        return task.deferLater(self.clock, delay, self._exit_with, int(status))

    def temporary_exit(self, delay: float, reason: str, notice: bool = False) -> None:
        """Exit and have the client restart the task after *delay* seconds.

        :param reason: required (the client treats a file without it as a
            premature exit); shown to the volunteer.
        :raises ValueError: no reason, or a delay outside 0..86400 s.
        """
        seconds = int(round(delay))
        if not 0 <= seconds <= MAX_TEMPORARY_EXIT_DELAY:
            raise ValueError(
                f"temporary exit delay {delay} s is outside 0..{MAX_TEMPORARY_EXIT_DELAY}"
            )
        reason = _one_line(reason or "")
        if not reason:
            raise ValueError("a temporary exit needs a reason (the client requires one)")
        self._finishing = True
        self.stop()
        content = f"{seconds}\n{reason}\n" + ("notice\n" if notice else "")
        self._write_slot_file(TEMPORARY_EXIT_FILE, content)
        self._exit(0)

    def quit_exit(self) -> None:
        """Exit 0 without a file, the answer to ``<quit/>`` once the work is saved.

        The client expects this exit and restarts the task when it schedules
        it again; it is not counted as a premature exit.
        """
        self._finishing = True
        self.stop()
        self._exit(0)

    def abort_exit(self) -> None:
        """Exit with 194 (EXIT_ABORTED_BY_CLIENT), the answer to ``<abort/>``."""
        self._finishing = True
        self.stop()
        self._exit(int(ExitStatus.ABORTED_BY_CLIENT))

    # -- internals --------------------------------------------------------

    def _exit_with(self, status: int) -> int:
        self._exit(status)
        return status

    def _write_slot_file(self, name: str, content: str) -> None:
        path = self.slot_dir / name
        try:
            path.write_text(content, encoding="utf-8")
        except OSError as exc:
            raise SlotError(f"cannot write {path}: {exc.strerror or exc}") from None

    def _tick(self) -> None:
        """One pass of the status loop; errors are logged, never stop the loop."""
        try:
            self._poll()
            self._last_loop_error = None
        except Exception as exc:  # noqa: BLE001 - the loop must survive anything
            text = f"BOINC status loop: {type(exc).__name__}: {exc}"
            if text != self._last_loop_error:  # no flood of identical lines
                log(text)
            self._last_loop_error = text

    def _poll(self) -> None:
        shmem = self._shmem
        if shmem is None or self._finishing:
            return
        now = self.clock.seconds()
        control = shmem.receive(Channel.PROCESS_CONTROL_REQUEST)
        if control is not None:
            self._handle_control(control)
        heartbeat = shmem.receive(Channel.HEARTBEAT)
        if heartbeat is not None:
            self._handle_heartbeat(heartbeat, now)
        trickle_down = shmem.receive(Channel.TRICKLE_DOWN)
        if trickle_down is not None and HAVE_TRICKLE_DOWN in trickle_down:
            self._take_trickle_downs()
        if self._trickles is not None and self._trickles.pending:
            self._trickles.pump()
        if self._graphics_reply is not None:
            self._send_graphics_reply()
        if not self.suspended:
            shmem.send(Channel.APP_STATUS, self.status_message())
        self._check_client(now)

    def _handle_control(self, message: str) -> None:
        if "<suspend/>" in message and not self.suspended:
            self.suspended = True
            self._notify("suspend")
        if "<resume/>" in message and self.suspended:
            self.suspended = False
            self._notify("resume")
        if "<reread_app_info/>" in message:
            self._reread_init_data()
        if "<network_available/>" in message:
            self._notify("network_available")
        if "<quit/>" in message:
            self._notify("quit")
        if "<abort/>" in message:
            self._notify("abort")

    def _handle_heartbeat(self, message: str, now: float) -> None:
        self._last_heartbeat = now
        self._heartbeat_lost = False
        network_suspended = "<network_suspended/>" in message
        if network_suspended != self.network_suspended:
            self.network_suspended = network_suspended
            self._notify("network_suspended_changed", network_suspended)

    def _check_client(self, now: float) -> None:
        if not self._heartbeat_lost and now - self._last_heartbeat >= HEARTBEAT_TIMEOUT:
            self._heartbeat_lost = True
            log(f"no heartbeat from the BOINC client for {now - self._last_heartbeat:.0f} s")
            self._notify("no_heartbeat")
        if self._client_dead or now - self._last_client_check < CLIENT_CHECK_PERIOD:
            return
        self._last_client_check = now
        pid = self.init_data.client_pid
        if pid > 0 and not pid_exists(pid):
            self._client_dead = True
            log(f"the BOINC client (PID {pid}) has exited")
            self._notify("client_died")

    def _reread_init_data(self) -> None:
        try:
            self.init_data = read_init_data(self.slot_dir / INIT_DATA_FILE)
        except BoincApiError as exc:
            log(f"keeping the previous settings: {exc}")
        self._notify("reread_app_info")

    def _take_trickle_downs(self) -> None:
        if self.standalone:
            return
        taken, problems = take_trickle_down_files(self.slot_dir)
        for problem in problems:
            log(problem)
        for path, body in taken:
            self._notify("trickle_down", body, path)

    def _send_graphics_reply(self) -> None:
        if self._shmem is None:
            self._graphics_reply = None
        elif self._shmem.send(Channel.GRAPHICS_REPLY, self._graphics_reply or ""):
            self._graphics_reply = None

    def _notify(self, event: str, *args: object) -> None:
        try:
            getattr(self.listener, event)(*args)
        except Exception as exc:  # noqa: BLE001 - a listener bug must not stop the loop
            log(f"BOINC runtime listener {event}() failed: {type(exc).__name__}: {exc}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

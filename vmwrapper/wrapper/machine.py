"""The wrapper's main loop: one VM job from start-up to exit, as a state machine.

Phases, in order (``phase`` names them for logs and tests)::

    starting -> booting -> copying in -> running tasks -> copying out -> finishing
                (or restoring a checkpoint, straight into the running task)

Everything asynchronous comes in through injected objects, so unit tests
drive the whole machine with a ``task.Clock``: the hypervisor ``driver``
(``vmwrapper.hypervisor.base``), the guest ``channel`` (:mod:`.channel`) and
the BOINC ``runtime`` (:class:`vmwrapper.boinc.runtime.BoincRuntime`, whose
listener this class is).

Events from outside (``<quit/>``, ``<abort/>``, lost heartbeat, dead client,
the VM stopping, the guest going silent) *interrupt* whatever the main flow
waits for; the flow then ends through :meth:`Wrapper._wrap_up`, the single
exit path, which saves or destroys the VM and exits as the ending requires
(:mod:`.outcome`). Suspend and resume do not interrupt: they pause and continue
the VM, and stop the running-time count (trickles, time-based progress,
checkpoints, the boot deadline).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.python.failure import Failure

from vmcontroller.host.controller import VMLostError
from vmcontroller.protocol import ConnectionLostError
from vmwrapper.boinc.exitcodes import RESTART_DELAY, ExitStatus
from vmwrapper.boinc.filenames import resolve_filename
from vmwrapper.boinc.log import log as default_log
from vmwrapper.boinc.runtime import RuntimeListener
from vmwrapper.hypervisor.base import PortForward, VMSpec, VMState
from vmwrapper.hypervisor.errors import HypervisorError
from vmwrapper.job.model import JobDescription
from vmwrapper.job.progress import read_fraction_done
from vmwrapper.wrapper.channel import BrokerSettings, GuestChannel
from vmwrapper.wrapper.cpu import POLL_PERIOD, VMCpuMeter
from vmwrapper.wrapper.guestfiles import GuestFileWatcher, unsupported_warnings
from vmwrapper.wrapper.hosttask import HostRun, HostTaskError, HostTasks
from vmwrapper.wrapper.outcome import Ending, Outcome, WrapperError, outcome_for_error
from vmwrapper.wrapper.output import CappedOutput
from vmwrapper.wrapper.slot import SlotLayout
from vmwrapper.wrapper.state import StateFile, StateFileError, WrapperState
from vmwrapper.wrapper.tasks import daemon_tasks, guest_command, job_fraction_done, work_tasks
from vmwrapper.wrapper.trickles import CpuTrickles

#: Seconds between two passes of the wrapper's housekeeping tick.
TICK = 1.0
#: Seconds of running time between two reads of the guest's progress file.
PROGRESS_PERIOD = 10.0
#: Largest progress file fetched from the guest (only its last 32 bytes matter).
PROGRESS_MAX_BYTES = 64 * 1024
#: The client kills the app 60 s after <quit/>/<abort/>; these bounds keep the exit within
#: about 50 s: checkpoint, then power-off (or destroy), then closing the broker link.
QUIT_CHECKPOINT_BUDGET = 30.0
POWER_OFF_BUDGET = 10.0
DESTROY_BUDGET = 20.0
CLOSE_BUDGET = 5.0
#: Seconds the last trickle may take to be taken by the client.
FINAL_TRICKLE_TIMEOUT = 20.0
#: Seconds to let the guest power off after the ACPI button before pulling the plug.
POWER_OFF_GRACE = 0.0
#: Seconds an adopted command may be missing from the agent's heartbeats before the
#: wrapper concludes it had ended before the checkpoint (its exit report is gone).
ADOPT_GRACE = 30.0
#: A crashed or hung VM with a checkpoint: temporary exit for this long, then restore.
CRASH_RESTART_DELAY = RESTART_DELAY
#: Restarts from one checkpoint after a crash before the task ends with an error.
MAX_CRASH_RESTARTS = 1
#: File the guest's jobs can test for: present while the volunteer suspends the network.
NETWORK_SUSPENDED_FLAG = ".boinc_network_suspended"


class Interrupted(Exception):
    """The main flow was interrupted by an event from outside; ``outcome`` ends the run."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


@dataclass(frozen=True)
class VMSettings:
    """The parts of the VM that do not come from the job file."""

    image: pathlib.Path
    memory_mb: int
    cpus: int


class Wrapper(RuntimeListener):
    """Runs one VM job; see the module docstring.

    :param clock: ``IReactorTime`` (the reactor, or a ``task.Clock`` in tests).
    :param runtime: the BOINC runtime (this object must be its listener).
    :param driver: a ``HypervisorDriver``.
    :param channel: the guest channel (:class:`~vmwrapper.wrapper.channel.GuestChannel`).
    :param job: the checked job description.
    :param layout: the wrapper's files in the slot.
    :param vm_name: the VM's name (also the guest agent's id on the broker).
    :param vm: image, memory and CPUs for the VM.
    :param write_config_disk: ``(path, agent_settings)``: writes the user-data disk.
    :param exit: ends the process with a status (the runtime's ``exit`` too).
    :param log: one line to stderr.txt.
    """

    def __init__(self, *, clock: Any, runtime: Any, driver: Any, channel: GuestChannel,
                 job: JobDescription, layout: SlotLayout, vm_name: str, vm: VMSettings,
                 write_config_disk: Callable[[pathlib.Path, dict[str, Any]], Any],
                 exit: Callable[[int], Any], log: Callable[[str], None] = default_log,
                 host_tasks: HostTasks | None = None) -> None:
        self.clock = clock
        self.runtime = runtime
        self.driver = driver
        self.channel = channel
        self.job = job
        self.layout = layout
        self.vm_name = vm_name
        self.vm = vm
        self._write_config_disk = write_config_disk
        self._exit = exit
        self._log = log

        self.phase = "starting"
        self.state = WrapperState()
        self._state_file = StateFile(layout.state_file)
        self._cpu_base = 0.0
        self.meter = VMCpuMeter(driver, vm_name)
        self.trickles = CpuTrickles(runtime.send_trickle_up, self.cumulative_cpu,
                                    job.trickle_period)
        self.output = CappedOutput(log)
        self.outcome: Outcome | None = None
        self.done: defer.Deferred[Outcome] = defer.Deferred()

        self.suspended = False
        self.running_seconds = 0.0
        self._last_tick: float | None = None
        self._ticker: task.LoopingCall | None = None
        self._ticks = 0
        self._interrupt: Outcome | None = None
        self._abort_requested = False
        self._waiters: set[defer.Deferred[Any]] = set()
        self._vm_generation = 0
        self._vm_alive = False
        self._task_running: int | None = None  # index in job.task
        self._run_seq: int | None = None
        self._completed_work = 0
        self._task_fraction: float | None = None
        self._fetching_progress = False
        self._checkpointing: defer.Deferred[Any] | None = None
        self._last_checkpoint_at = 0.0
        self._boot_deadline: tuple[float, defer.Deferred[Any]] | None = None
        self._network_suspended = False
        self._started_at = 0.0
        self._vm_created = False
        self._duration_reached: defer.Deferred[Any] | None = None
        #: checkpoints written in this run (the status page shows it)
        self.checkpoints = 0
        self._adopting: tuple[defer.Deferred[Any], float] | None = None
        self._adopt_missing_since: float | None = None
        #: the outcome of a completion trigger file or of job_duration (outputs copied first)
        self._completion: Outcome | None = None
        self.guest_files = GuestFileWatcher(
            job=job, channel=channel, vm_id=vm_name, scratch=layout.scratch_file,
            send_trickle=runtime.send_trickle_up, end=self._complete,
            checkpoint=self._checkpoint_if_possible, log=log)
        #: called with the outcome just before the process exits (final summary lines)
        self.on_exit: list[Callable[[Outcome], None]] = []
        #: the job's tasks with <where>host</where> (see :mod:`.hosttask`)
        self.host = host_tasks or HostTasks(
            spawn=getattr(clock, "spawnProcess", None), clock=clock, job=job,
            slot_dir=layout.slot_dir, project_dir=runtime.init_data.project_dir, log=log)
        self._host_run: HostRun | None = None
        self._vm_pids: list[int] = []
        self._host_checkpoint_mtime: float | None = None

    @property
    def current_task(self) -> str:
        """The running task, as ``task N: application`` (empty between tasks)."""
        index = self._task_running
        if index is None:
            return ""
        return f"task {index + 1}: {self.job.task[index].application}"

    @property
    def task_fraction(self) -> float | None:
        """The running task's own progress from its progress file, when it has one."""
        return self._task_fraction

    # -- the whole run ----------------------------------------------------------------------

    def run(self) -> defer.Deferred[Outcome]:
        """Run the job to its end; ``done`` fires with the outcome after the exit call."""
        self._started_at = self.clock.seconds()
        self._last_checkpoint_at = self.running_seconds
        self._ticker = task.LoopingCall(self._tick)
        self._ticker.clock = self.clock
        self._ticker.start(TICK, now=False)
        self.channel.on_lost(self._guest_silent)
        for line in unsupported_warnings(self.job):
            self._log(line)
        flow = defer.ensureDeferred(self._main())
        flow.addErrback(self._unexpected)
        return self.done

    async def _main(self) -> None:
        try:
            outcome = await self._run_job()
        except Interrupted as interrupted:
            outcome = interrupted.outcome
            if outcome is self._completion:
                outcome = await self._after_completion(outcome)
        except Exception as error:  # noqa: BLE001 - every failure gets an ending
            outcome = await self._outcome_for(error)
        if self._abort_requested:
            outcome = Outcome.abort()
        await self._wrap_up(outcome)

    def _unexpected(self, failure: Failure) -> None:
        self._log(f"wrapper bug while ending the run: {failure.getTraceback()}")
        if not self.done.called:
            self._exit(int(ExitStatus.CHILD_FAILED))
            self.done.callback(Outcome.failure(ExitStatus.CHILD_FAILED, "wrapper bug"))

    # -- interrupts -------------------------------------------------------------------------

    def _wait(self, deferred: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """*deferred*, unless an interrupt comes first (then :class:`Interrupted`)."""
        if self._interrupt is not None:
            deferred.addErrback(lambda _: None)
            return defer.fail(Interrupted(self._interrupt))
        waiter: defer.Deferred[Any] = defer.Deferred()
        self._waiters.add(waiter)

        def settle(result: Any) -> None:
            self._waiters.discard(waiter)
            if waiter.called:
                return None
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
            return None

        deferred.addBoth(settle)
        return waiter

    def interrupt(self, outcome: Outcome) -> None:
        """End the run with *outcome* as soon as the flow can (first interrupt wins;
        an abort always wins)."""
        if outcome.ending is Ending.ABORT:
            self._abort_requested = True
        if self._interrupt is not None:
            return
        self._interrupt = outcome
        for waiter in list(self._waiters):
            self._waiters.discard(waiter)
            if not waiter.called:
                waiter.errback(Interrupted(outcome))

    # -- runtime listener ---------------------------------------------------------------------

    def suspend(self) -> None:
        self.suspended = True
        self._log("suspended by the BOINC client: pausing the VM")
        self.host.suspend()
        if self._vm_alive:
            self._pause()

    def resume(self) -> None:
        self.suspended = False
        self._log("resumed by the BOINC client: continuing the VM")
        self.host.resume()
        self._last_tick = self.clock.seconds()
        if self._vm_alive:
            d = self.driver.resume(self.vm_name)
            d.addCallbacks(self._resumed,
                           lambda f: self._log(f"cannot resume the VM: {f.getErrorMessage()}"))

    def _resumed(self, _: Any) -> None:
        self.channel.release_liveness(self.vm_name)
        self._log("VM running again")

    def quit(self) -> None:
        self.interrupt(Outcome.save("the BOINC client asked the task to quit"))

    def abort(self) -> None:
        self.interrupt(Outcome.abort())

    def no_heartbeat(self) -> None:
        self.interrupt(Outcome.save("no heartbeat from the BOINC client"))

    def client_died(self) -> None:
        self.interrupt(Outcome.save("the BOINC client has exited"))

    def network_suspended_changed(self, suspended: bool) -> None:
        self._network_suspended = suspended
        self._log(f"the volunteer {'suspended' if suspended else 'resumed'} network use")
        self._tell_guest_network()

    def _pause(self) -> None:
        asked = self.clock.seconds()
        self.channel.hold_liveness(self.vm_name)
        d = self.driver.pause(self.vm_name)
        d.addCallbacks(
            lambda _: self._log(f"VM paused {1000 * (self.clock.seconds() - asked):.1f} ms "
                                "after the request"),
            lambda f: self._log(f"cannot pause the VM: {f.getErrorMessage()}"))

    def _tell_guest_network(self) -> None:
        if self.phase not in ("running tasks", "copying in", "copying out"):
            return
        flag = NETWORK_SUSPENDED_FLAG
        shell = f"touch {flag}" if self._network_suspended else f"rm -f {flag}"
        _, d = self.channel.run(self.vm_name, shell, None, None, 30.0, lambda *_: None)
        d.addErrback(lambda f: self._log(f"cannot tell the guest about the network: "
                                         f"{f.getErrorMessage()}"))

    # -- the job --------------------------------------------------------------------------------

    async def _run_job(self) -> Outcome:
        if not self.job.needs_vm:
            return await self._run_host_only()
        self.state = self._load_state()
        self._cpu_base = self.state.cpu_time
        self.state.episodes += 1
        resumable = self.state.resumable
        saved = (BrokerSettings(self.state.broker_port, self.state.logins)
                 if self.state.logins else None)
        settings = await self._wait(self.channel.open(self.vm_name, saved))
        if resumable and saved is not None and settings != saved:
            resumable = False
        self.state.broker_port, self.state.logins = settings.port, dict(settings.logins)
        removed = await self._wait(self.driver.cleanup_stale(self.layout.vm_dir,
                                                             keep_checkpoint=resumable))
        if removed:
            self._log(f"cleaned up what an earlier run left: {', '.join(removed)}")
        if not resumable:
            self._forget_checkpoint()
        self._save_state()
        self._write_config_disk(self.layout.config_disk, self.channel.agent_settings(self.vm_name))
        await self._wait(self.driver.create(self._spec()))
        self._vm_created = True
        resumed = False
        if resumable and await self._wait(self.driver.has_checkpoint(self.vm_name)):
            resumed = await self._restore()
        if not resumed:
            if resumable:
                await self._recreate_vm()
            self._forget_checkpoint()
            await self._boot()
        return await self._work(resumed)

    async def _work(self, resumed: bool) -> Outcome:
        if not resumed:
            await self._copy_to_shared()
        if not self.job.task:
            return await self._run_taskless()
        works = work_tasks(self.job)
        # files go into the guest just before its first task and out just after its last,
        # so host tasks before may make the inputs and host tasks after may use the outputs
        if not resumed and works and works[0][1].where == "guest":
            await self._copy_in()
        self.phase = "running tasks"
        if self._network_suspended:
            self._tell_guest_network()
        if not resumed:
            self._start_daemons()
        else:
            self._start_daemons(only_host=True)  # guest daemons live on in the restored VM
        last_guest = max((i for i, t in works if t.where == "guest"), default=-1)
        copied_out = False
        self._completed_work = sum(1 for i, _ in works if i < self.state.task_index)
        for index, job_task in works:
            if index < self.state.task_index:
                continue
            if job_task.where == "host":
                if index > last_guest and not copied_out:
                    await self._copy_out()
                    copied_out = True
                    self.phase = "running tasks"
                await self._run_host_task(index)
                self._completed_work += 1
                continue
            if not self.state.inputs_copied:
                await self._copy_in()
                self.phase = "running tasks"
            adopt = self.state.run_seq if resumed and index == self.state.task_index else None
            await self._run_task(index, job_task.application, adopt)
            self._completed_work += 1
            self._task_fraction = None
        self._task_running = None
        await self._stop_daemons()
        if not copied_out:
            await self._copy_out()
        return Outcome.success()

    async def _run_host_only(self) -> Outcome:
        """A job whose tasks all run on the host: no hypervisor, no broker, no VM.

        As BOINC's wrapper: the count of finished tasks is saved after each one, so a
        restart after ``<quit/>`` reruns the first unfinished task.
        """
        self.state = self._load_state()
        self._cpu_base = self.state.cpu_time
        self.state.episodes += 1
        self._save_state()
        self.phase = "running tasks"
        self._start_daemons()
        works = work_tasks(self.job)
        self._completed_work = sum(1 for i, _ in works if i < self.state.task_index)
        if self.state.task_index:
            self._log(f"continuing with task {self.state.task_index + 1} "
                      f"({self._completed_work} done before the restart)")
        for index, _ in works:
            if index < self.state.task_index:
                continue
            await self._run_host_task(index)
            self._completed_work += 1
            self.state.task_index = index + 1
            self._save_state()
        self._task_running = None
        await self._stop_daemons()
        return Outcome.success()

    async def _run_host_task(self, index: int) -> None:
        """Run host task *index* to its end; a non-zero exit fails the job (195)."""
        label = f"task {index + 1}"
        application = self.job.task[index].application
        self._task_running = index
        self._task_fraction = None
        self._host_checkpoint_mtime = self.host.checkpoint_mtime(self.job.task[index])
        try:
            run = self.host.start(index, self.output.stream(label))
        except HostTaskError as error:
            raise WrapperError(Outcome.failure(ExitStatus.INIT_FAILURE, str(error))) from None
        self._host_run = run
        self._report_other_pids()
        run.ended.addBoth(lambda result: (self._report_other_pids(), result)[1])
        self._log(f"{label} started on the host: {' '.join(run.command.argv)}")
        try:
            result = await self._wait(run.ended)
        finally:
            self.output.flush()
            self._host_run = None
        if result.timed_out:
            self._log(f"{label} reached its time limit of {run.task.time_limit:g} s: done")
            return
        if not result.succeeded:
            how = (f"exit status {result.code}" if result.code is not None
                   else f"signal {result.signal}")
            raise WrapperError(Outcome.failure(
                ExitStatus.CHILD_FAILED, f"{label} ({application}) failed on the host with {how}"))
        self._log(f"{label} finished on the host ({result.wall_time:.1f} s, "
                  f"CPU {run.cpu:.1f} s)")

    def _watch_host_task(self) -> None:
        """The running host task's progress file and checkpoint file (mtime change)."""
        run = self._host_run
        if run is None:
            return
        value = self.host.fraction_done(run.task)
        if value is not None:
            self._task_fraction = value
        mtime = self.host.checkpoint_mtime(run.task)
        if mtime is not None and mtime != self._host_checkpoint_mtime:
            self._host_checkpoint_mtime = mtime
            if not self.job.needs_vm:  # in a VM job the VM's checkpoints are the ones that count
                self._save_state()
                self.runtime.checkpoint_completed()
                self.checkpoints += 1
                self._log(f"{self.current_task} checkpointed (its checkpoint file changed)")

    async def _run_taskless(self) -> Outcome:
        """A vbox_job-style job: the appliance works on its own until job_duration or power-off."""
        self.phase = "running tasks"
        if self.job.job_duration > 0:
            waiting: defer.Deferred[Any] = defer.Deferred()
            self._duration_reached = waiting
            await self._wait(waiting)
            return Outcome.success(f"job_duration of {self.job.job_duration:g} s reached")
        stopped = self.driver.when_stopped(self.vm_name)
        self._vm_generation += 1  # a power-off is the end here, not a failure
        await self._wait(stopped)
        self._vm_alive = False
        return Outcome.success("the VM powered itself off")

    # -- the VM ---------------------------------------------------------------------------------

    def _spec(self) -> VMSpec:
        forwards: tuple[PortForward, ...] = ()
        if self.job.enable_network:
            forwards = tuple(PortForward(host, guest) for pf in self.job.port_forward
                             for host, guest in pf.ports())
        return VMSpec(name=self.vm_name, base_image=self.vm.image, vm_dir=self.layout.vm_dir,
                      memory_mb=self.vm.memory_mb, cpus=self.vm.cpus,
                      config_disk=self.layout.config_disk, network=True,
                      port_forwards=forwards)

    def _watch_vm(self) -> None:
        """Interrupt the flow if the VM's process ends without being asked to."""
        self._vm_generation += 1
        self._vm_alive = True
        generation = self._vm_generation
        self._report_pid()
        stopped = self.driver.when_stopped(self.vm_name)
        stopped.addCallback(self._vm_stopped, generation)
        stopped.addErrback(lambda f: self._log(f"watching the VM failed: {f.getErrorMessage()}"))

    def _report_pid(self) -> None:
        """Tell the client the VM's process id (``<other_pid>``) when the driver knows it,
        so the client counts its memory and kills it if the wrapper dies."""
        pid_of = getattr(self.driver, "pid", None)
        pid = None
        if pid_of is not None:
            try:
                pid = pid_of(self.vm_name)
            except Exception:  # noqa: BLE001 - optional information
                pid = None
        self._vm_pids = [pid] if pid else []
        self._report_other_pids()

    def _report_other_pids(self) -> None:
        """The VM's and the running host tasks' pids, for the client to count and kill."""
        self.runtime.other_pids = self._vm_pids + [run.pid for run in self.host.runs]

    def _vm_stopped(self, state: VMState, generation: int) -> None:
        if generation != self._vm_generation:
            return
        self._vm_alive = False
        what = "crashed" if state is VMState.CRASHED else "powered off"
        self._log(f"the VM {what} unexpectedly (phase: {self.phase})")
        self.interrupt(self._crash_outcome(f"the VM {what} unexpectedly while {self.phase}"))

    def _crash_outcome(self, message: str) -> Outcome:
        """A crashed or hung VM: restart from the last checkpoint after a temporary exit
        (as vboxwrapper since BOINC PR #3181), unless there is none or the VM already
        crashed once since that checkpoint; then the task ends with an error."""
        restartable = (self.state.resumable and self.driver.capabilities.checkpoint_survives_crash)
        if restartable and self.state.crash_restarts < MAX_CRASH_RESTARTS:
            self.state.crash_restarts += 1
            return Outcome.temporary(f"{message}; restarting from the last checkpoint",
                                     CRASH_RESTART_DELAY)
        if restartable:
            message += (f" (again: {self.state.crash_restarts} restart(s) from the same "
                        "checkpoint already crashed)")
        return Outcome.failure(ExitStatus.CHILD_FAILED, message)

    def _expect_stop(self) -> None:
        self._vm_generation += 1
        self._vm_alive = False

    async def _boot(self) -> None:
        self.phase = "booting"
        for attempt in (1, 2):
            self.meter.new_process()
            await self._wait(self.driver.start(self.vm_name))
            self._watch_vm()
            if self.suspended:
                self._pause()
            try:
                await self._wait(self._hello(self.job.boot_timeout))
                self._log(f"the guest agent said hello (boot attempt {attempt})")
                return
            except defer.TimeoutError:
                console = await self._console_tail()
                self._log(f"no hello from the guest agent within {self.job.boot_timeout:g} s "
                          f"(attempt {attempt}); guest console ends with:\n{console}")
                self._expect_stop()
                await self._wait(self.driver.power_off(self.vm_name))
        self.state.boot_failures += 1
        self._save_state()
        raise WrapperError(Outcome.failure(
            ExitStatus.CHILD_FAILED,
            f"the guest agent did not say hello within {self.job.boot_timeout:g} s of boot, "
            "twice: the VM image or its network does not work on this host "
            "(the guest console is in stderr.txt)"))

    def _hello(self, timeout: float) -> defer.Deferred[Any]:
        """The guest's hello, with a deadline counted in running (not suspended) time."""
        expired: defer.Deferred[Any] = defer.Deferred()
        self._boot_deadline = (self.running_seconds + timeout, expired)
        hello = self.channel.wait_for_hello(self.vm_name, 10 * 365 * 86400.0)
        hello.addBoth(self._hello_settled, expired)
        first = defer.DeferredList([hello, expired], fireOnOneCallback=True,
                                   fireOnOneErrback=True, consumeErrors=True)

        def unwrap(result: Any) -> Any:
            return result[0]

        def unwrap_failure(failure: Failure) -> Failure:
            return failure.value.subFailure

        return first.addCallbacks(unwrap, unwrap_failure)

    def _hello_settled(self, result: Any, expired: defer.Deferred[Any]) -> Any:
        if self._boot_deadline is not None and self._boot_deadline[1] is expired:
            self._boot_deadline = None
        return result

    async def _restore(self) -> bool:
        self.phase = "restoring"
        self.meter.new_process()
        try:
            await self._wait(self.driver.restore_checkpoint(self.vm_name))
            self._watch_vm()
            if self.suspended:
                self._pause()
            await self._wait(self._hello(self.job.boot_timeout))
        except Interrupted:
            raise
        except Exception as error:  # noqa: BLE001 - any failure: boot afresh instead
            self._log(f"cannot continue from the checkpoint ({_describe(error)}); "
                      "booting the VM afresh")
            self._expect_stop()
            return False
        self._log(f"continued from the checkpoint (task {self.state.task_index + 1})")
        return True

    async def _recreate_vm(self) -> None:
        self._expect_stop()
        await self._wait(self.driver.destroy(self.vm_name))
        await self._wait(self.driver.create(self._spec()))

    async def _console_tail(self) -> str:
        try:
            text = await self.driver.console_log(self.vm_name, 2000)
        except Exception as error:  # noqa: BLE001 - only for a message
            return f"(console log unavailable: {error})"
        return text.strip() or "(empty)"

    # -- files and tasks ------------------------------------------------------------------------------

    async def _copy_in(self) -> None:
        self.phase = "copying in"
        for item in self.job.copy_to_guest:
            source = resolve_filename(self.layout.slot_dir, item.logical_name)
            if not source.is_file():
                if item.optional:
                    self._log(f"optional input {item.logical_name} is missing; skipped")
                    continue
                raise WrapperError(Outcome.failure(
                    ExitStatus.INIT_FAILURE,
                    f"input file {item.logical_name} ({source}) is missing from the slot"))
            destination = item.guest_path or item.logical_name
            await self._wait(self.channel.put_file(self.vm_name, str(source), destination))
            self._log(f"copied {item.logical_name} into the guest as {destination}")
        self.state.inputs_copied = True

    async def _copy_to_shared(self) -> None:
        """vboxwrapper's ``<copy_to_shared>``: slot files into the guest's work directory
        (which stands in for the shared directory, see :mod:`.guestfiles`)."""
        for name in self.job.copy_to_shared:
            source = resolve_filename(self.layout.slot_dir, name)
            if not source.is_file():
                raise WrapperError(Outcome.failure(
                    ExitStatus.INIT_FAILURE,
                    f"<copy_to_shared> file {name} ({source}) is missing from the slot"))
            await self._wait(self.channel.put_file(self.vm_name, str(source), name))
            self._log(f"copied {name} into the guest's work directory (<copy_to_shared>)")

    async def _copy_out(self) -> None:
        self.phase = "copying out"
        for item in self.job.copy_from_guest:
            source = item.guest_path or item.logical_name
            target = resolve_filename(self.layout.slot_dir, item.logical_name)
            try:
                await self._wait(self.channel.get_file(self.vm_name, source, str(target)))
            except Interrupted:
                raise
            except Exception as error:  # noqa: BLE001 - classified below
                if getattr(error, "code", "") == "not_found" and item.optional:
                    self._log(f"optional output {source} was not written; skipped")
                    continue
                if getattr(error, "code", "") == "not_found":
                    raise WrapperError(Outcome.failure(
                        ExitStatus.SUB_TASK_FAILURE,
                        f"the job did not write its output file {source} in the guest")) from None
                raise
            self._log(f"copied {source} out of the guest as {item.logical_name}")

    def _start_daemons(self, only_host: bool = False) -> None:
        seqs = []
        for index, daemon in daemon_tasks(self.job):
            if daemon.where == "host":
                self._start_host_daemon(index)
                continue
            if only_host:
                continue
            command = self._command_for(daemon)
            seq, d = self.channel.run(self.vm_name, command.shell, command.env, command.cwd,
                                      None, self.output.stream(f"daemon {index + 1}"))
            d.addErrback(lambda f, i=index: self._log(
                f"daemon {i + 1} ended: {f.getErrorMessage()}"))
            seqs.append(seq)
            self._log(f"started daemon task {index + 1}: {daemon.application}")
        if not only_host:
            self.state.daemon_seqs = seqs

    def _start_host_daemon(self, index: int) -> None:
        label = f"daemon {index + 1}"
        try:
            run = self.host.start(index, self.output.stream(label))
        except HostTaskError as error:
            raise WrapperError(Outcome.failure(ExitStatus.INIT_FAILURE, str(error))) from None
        self._report_other_pids()
        run.ended.addCallback(lambda result: self._log(
            f"{label} ended (exit status {result.code}, signal {result.signal})"))
        run.ended.addBoth(lambda result: (self._report_other_pids(), result)[1])
        self._log(f"started daemon task {index + 1} on the host: {' '.join(run.command.argv)}")

    async def _stop_daemons(self) -> None:
        await self._wait(self.host.stop_all())
        for seq in self.state.daemon_seqs:
            try:
                await self._wait(self.channel.kill(self.vm_name, seq))
            except Interrupted:
                raise
            except Exception as error:  # noqa: BLE001 - it may have ended already
                self._log(f"stopping a daemon task: {_describe(error)}")

    def _command_for(self, job_task: Any) -> Any:
        try:
            return guest_command(job_task, self.job)
        except ValueError as error:
            raise WrapperError(Outcome.failure(ExitStatus.INIT_FAILURE, str(error))) from None

    async def _run_task(self, index: int, application: str, adopt: int | None) -> None:
        job_task = self.job.task[index]
        label = f"task {index + 1}"
        self._task_running = index
        on_output = self.output.stream(label)
        if adopt is not None:
            self._run_seq = adopt
            running = _first_result(self.channel.adopt(self.vm_name, adopt, on_output))
            self._adopting = (running, self.running_seconds)
            self._adopt_missing_since = None
            self._log(f"{label} ({application}) continues after the restore")
        else:
            command = self._command_for(job_task)
            self._run_seq, running = self.channel.run(self.vm_name, command.shell, command.env,
                                                      command.cwd, command.timeout, on_output)
            self._log(f"{label} started in the guest: {command.shell}")
        try:
            result = await self._wait(running)
        finally:
            self.output.flush()
            self._adopting = None
        self._run_seq = None
        if result.timed_out:
            self._log(f"{label} reached its time limit of {job_task.time_limit:g} s: done")
            return
        if result.code != 0:
            how = (f"exit status {result.code}" if result.code is not None
                   else f"signal {result.signal}")
            raise WrapperError(Outcome.failure(
                ExitStatus.CHILD_FAILED,
                f"{label} ({application}) failed in the guest with {how}"))
        self._log(f"{label} finished in the guest ({result.wall_time:.1f} s)")

    # -- housekeeping tick ------------------------------------------------------------------------

    def cumulative_cpu(self) -> float:
        """CPU seconds of the VM and host tasks over every run of this task (what trickles
        carry)."""
        return self._cpu_base + self.episode_cpu()

    def episode_cpu(self) -> float:
        """CPU seconds of the VM and host tasks in this run (the runtime's ``cpu_time``)."""
        return self.meter.episode_seconds() + self.host.cpu_seconds()

    def _tick(self) -> None:
        now = self.clock.seconds()
        if self._last_tick is not None and not self.suspended:
            self.running_seconds += max(0.0, now - self._last_tick)
        self._last_tick = now
        self._ticks += 1
        try:
            self._housekeeping()
        except Exception as error:  # noqa: BLE001 - the tick must survive anything
            self._log(f"wrapper housekeeping: {_describe(error)}")

    def _housekeeping(self) -> None:
        deadline = self._boot_deadline
        if deadline is not None and self.running_seconds >= deadline[0]:
            self._boot_deadline = None
            deadline[1].errback(defer.TimeoutError("no hello from the guest agent"))
        if self.suspended or self._interrupt is not None:
            return
        if self._ticks % int(POLL_PERIOD / TICK) == 0 and self._vm_alive:
            self.meter.poll()
        duration_wait = self._duration_reached
        if (duration_wait is not None and not duration_wait.called
                and self.running_seconds >= self.job.job_duration):
            duration_wait.callback(None)
        if self.phase == "running tasks":
            self.trickles.maybe_send(self.running_seconds)
            if self._ticks % int(PROGRESS_PERIOD / TICK) == 0:
                self._update_progress()
            if self._vm_alive:
                self.guest_files.maybe_scan(self.running_seconds)
            if self.job.task and 0 < self.job.job_duration <= self.running_seconds:
                self._complete(Outcome.success(
                    f"job_duration of {self.job.job_duration:g} s reached"))
            if self._checkpoint_due():
                self._checkpoint()
            self._check_adopted()

    def _check_adopted(self) -> None:
        """An adopted command the agent no longer runs ended before the checkpoint was
        taken and its exit report went to the previous wrapper: count it as done rather
        than wait for it forever."""
        if self._adopting is None:
            return
        running, since = self._adopting
        count = self.channel.running_commands(self.vm_name)
        if count is None or count > len(self.state.daemon_seqs):
            self._adopt_missing_since = None
            return
        if self._adopt_missing_since is None:
            self._adopt_missing_since = self.running_seconds
        waited = self.running_seconds - max(self._adopt_missing_since, since)
        if waited >= ADOPT_GRACE and not running.called:
            self._log("the task's command had already ended when the checkpoint was taken; "
                      "its exit status is unknown: treating it as done")
            running.callback(_UNKNOWN_EXIT)

    def _expected_seconds(self) -> float:
        if self.job.job_duration > 0:
            return self.job.job_duration
        init = self.runtime.init_data
        if init.rsc_fpops_est > 0 and init.host_info.p_fpops > 0:
            return init.rsc_fpops_est / init.host_info.p_fpops
        return 0.0

    def _update_progress(self) -> None:
        if self._host_run is not None:
            self._watch_host_task()
            self._set_fraction()
            return
        index = self._task_running
        name = ""
        if index is not None:
            name = self.job.task[index].fraction_done_filename
        name = name or self.job.fraction_done_filename
        if name and (index is not None or not self.job.task) and not self._fetching_progress:
            self._fetch_progress(name)
        self._set_fraction()

    def _set_fraction(self) -> None:
        self.runtime.fraction_done = job_fraction_done(
            self.job, self._completed_work, self._task_fraction, self.running_seconds,
            self._expected_seconds())

    def _fetch_progress(self, name: str) -> None:
        self._fetching_progress = True
        target = self.layout.scratch_file("progress")
        d = self.channel.get_file(self.vm_name, name, str(target), PROGRESS_MAX_BYTES)

        def got(_: Any) -> None:
            value = read_fraction_done(target)
            if value is not None:
                self._task_fraction = value
                self._set_fraction()

        def done(_: Any) -> None:
            self._fetching_progress = False

        d.addCallbacks(got, lambda _: None).addBoth(done)

    # -- the guest ends the job (completion trigger, job_duration) -------------------------------

    def _complete(self, outcome: Outcome) -> None:
        """End the run with *outcome*; a successful one copies the outputs out first."""
        if self._interrupt is None:
            self._completion = outcome
            self.interrupt(outcome)

    async def _after_completion(self, outcome: Outcome) -> Outcome:
        if (outcome.ending is not Ending.FINISH or outcome.status != 0 or not self._vm_alive
                or self._abort_requested or not self.job.copy_from_guest):
            return outcome
        self._interrupt = None  # let the copy run; a later interrupt still wins
        try:
            await self._copy_out()
        except Interrupted as interrupted:
            return interrupted.outcome
        except Exception as error:  # noqa: BLE001 - every failure gets an ending
            return await self._outcome_for(error)
        return outcome

    def _checkpoint_if_possible(self) -> defer.Deferred[Any]:
        if self._vm_alive and self.driver.capabilities.checkpoint \
                and not self.job.disable_automatic_checkpoints:
            return self._checkpoint()
        return defer.succeed(False)

    # -- checkpoints ---------------------------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        # A job with tasks checkpoints while one runs (the state names the command to adopt);
        # a task-less vbox_job.xml job runs the VM's own workload and checkpoints throughout.
        if (self._checkpointing is not None or (self._run_seq is None and self.job.task)
                or self.job.disable_automatic_checkpoints
                or not self.driver.capabilities.checkpoint):
            return False
        if self.running_seconds - self._last_checkpoint_at < self.job.minimum_checkpoint_interval:
            return False
        return bool(self.runtime.time_to_checkpoint())

    def _checkpoint(self) -> defer.Deferred[bool]:
        """Save the VM, then the state file, then tell the client; fires with success."""
        if self._checkpointing is not None:
            return self._checkpointing
        seq, index = self._run_seq, self._task_running
        self._checkpointing = d = defer.ensureDeferred(self._save_vm(seq, index))

        def over(result: Any) -> Any:
            self._checkpointing = None
            return result

        return d.addBoth(over)

    async def _save_vm(self, seq: int | None, index: int | None) -> bool:
        try:
            await self.driver.save_checkpoint(self.vm_name)
            await self.meter.poll()
        except HypervisorError as error:
            self._log(f"checkpoint failed, the previous one is kept: {error}")
            return False
        self.state.resumable = True
        self.state.crash_restarts = 0
        self.state.task_index = index if index is not None else self.state.task_index
        self.state.run_seq = seq
        self._save_state()
        self.runtime.checkpoint_completed()
        self.checkpoints += 1
        self._last_checkpoint_at = self.running_seconds
        self._log(f"checkpoint saved (VM CPU {self.cumulative_cpu():.1f} s)")
        return True

    # -- state file ------------------------------------------------------------------------------------

    def _load_state(self) -> WrapperState:
        try:
            state = self._state_file.load()
        except StateFileError as error:
            self._log(f"ignoring the wrapper state: {error}")
            return WrapperState()
        return state or WrapperState()

    def _save_state(self) -> None:
        self.state.cpu_time = max(self.state.cpu_time, self.cumulative_cpu())
        try:
            self._state_file.save(self.state)
        except OSError as error:
            self._log(f"cannot save the wrapper state: {error}")

    def _forget_checkpoint(self) -> None:
        self.state.resumable = False
        self.state.task_index = 0
        self.state.inputs_copied = False
        self.state.run_seq = None
        self.state.daemon_seqs = []

    # -- errors ------------------------------------------------------------------------------------------

    async def _outcome_for(self, error: BaseException) -> Outcome:
        if isinstance(error, (VMLostError, ConnectionLostError)):
            return await self._guest_lost(error)
        outcome = outcome_for_error(error)
        if outcome.ending is Ending.FINISH and outcome.status == ExitStatus.CHILD_FAILED \
                and not isinstance(error, WrapperError):
            self._log(f"unexpected error: {_describe(error)}")
        return outcome

    async def _guest_lost(self, error: BaseException) -> Outcome:
        if isinstance(error, ConnectionLostError) and not isinstance(error, VMLostError):
            return Outcome.temporary(f"lost the connection to the broker: {error}")
        try:
            state = await self.driver.state(self.vm_name)
        except Exception:  # noqa: BLE001 - only for the message
            state = None
        console = await self._console_tail()
        self._log(f"the guest stopped answering ({error}); VM state {state}; "
                  f"guest console ends with:\n{console}")
        what = "crashed" if state is VMState.CRASHED else "stopped answering (hung)"
        return self._crash_outcome(f"the VM {what} while {self.phase}: no heartbeat from its agent")

    def _guest_silent(self, vm_id: str) -> None:
        if vm_id == self.vm_name and not self.suspended:
            self.interrupt(self._crash_outcome(
                f"the VM stopped answering while {self.phase}: no heartbeat from its agent"))

    # -- the single exit path -------------------------------------------------------------------------

    async def _wrap_up(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self._interrupt = self._interrupt or outcome
        self._log(outcome.describe())
        await self._stop_host_tasks()
        self.output.flush()
        try:
            if outcome.ending is Ending.FINISH:
                await self._final_trickle()
            if outcome.ending is Ending.SAVE:
                await self._save_and_stop()
            elif outcome.ending is Ending.TEMPORARY and self.state.resumable:
                await self._stop_vm()
            else:
                await self._destroy_vm(keep_state=outcome.ending is Ending.TEMPORARY)
        except Exception as error:  # noqa: BLE001 - exit anyway, after the last resort below
            self._log(f"while stopping the VM: {_describe(error)}")
            await self._last_resort()
        finally:
            if self._ticker is not None and self._ticker.running:
                self._ticker.stop()
            await self._close_channel()
        if self._abort_requested and outcome.ending is not Ending.ABORT:
            outcome = self.outcome = Outcome.abort()
            await self._destroy_vm()
        self._exit_with(outcome)

    async def _stop_host_tasks(self) -> None:
        """Terminate host tasks still running (quit, abort, failure): TERM, then KILL."""
        if not self.host.runs:
            return
        self._log(f"stopping {len(self.host.runs)} host task(s)")
        await _bounded(self.host.stop_all(), self.host.grace + 5.0, self.clock)

    async def _final_trickle(self) -> None:
        if self.trickles.period <= 0:
            return
        if self._vm_alive:
            await _bounded(self.meter.poll(), 5.0, self.clock)
        sending = self.trickles.send_now()
        taken = await _bounded(sending, FINAL_TRICKLE_TIMEOUT, self.clock)
        if not taken:
            self._log("the final CPU-time trickle was not taken by the client in time")

    async def _save_and_stop(self) -> None:
        if self._vm_alive and self.phase == "running tasks" and self._run_seq is not None \
                and self.driver.capabilities.checkpoint:
            saved = await _bounded(self._checkpoint(), QUIT_CHECKPOINT_BUDGET, self.clock)
            if not saved:
                self._log("could not save the VM before exiting; the next start continues "
                          "from the previous checkpoint")
        await self._stop_vm()
        self.layout.remove_scratch()

    async def _stop_vm(self) -> None:
        self._expect_stop()
        if self._vm_created:
            await _bounded(self.driver.power_off(self.vm_name, POWER_OFF_GRACE), POWER_OFF_BUDGET,
                           self.clock, raise_errors=True)
        self._save_state()

    async def _destroy_vm(self, keep_state: bool = False) -> None:
        """Remove the VM and the wrapper's files (all of them unless *keep_state*)."""
        self._expect_stop()
        if self._vm_created:
            await _bounded(self.driver.destroy(self.vm_name), DESTROY_BUDGET, self.clock,
                           raise_errors=True)
        elif self.driver is not None and self.job.needs_vm:
            await _bounded(self.driver.cleanup_stale(self.layout.vm_dir, keep_checkpoint=False),
                           DESTROY_BUDGET, self.clock, raise_errors=True)
        if keep_state:
            self._forget_checkpoint()
            self._save_state()
            self.layout.remove_vm_files()
        else:
            self.layout.remove_all()

    async def _last_resort(self) -> None:
        try:
            await _bounded(self.driver.cleanup_stale(self.layout.vm_dir,
                                                     keep_checkpoint=self.state.resumable),
                           10.0, self.clock)
        except Exception as error:  # noqa: BLE001 - nothing more we can do
            self._log(f"cleanup after a failed stop: {_describe(error)}")

    async def _close_channel(self) -> None:
        try:
            await _bounded(self.channel.close(), CLOSE_BUDGET, self.clock)
        except Exception as error:  # noqa: BLE001 - exiting anyway
            self._log(f"closing the guest channel: {_describe(error)}")

    def _exit_with(self, outcome: Outcome) -> None:
        for callback in self.on_exit:
            try:
                callback(outcome)
            except Exception as error:  # noqa: BLE001 - exiting anyway
                self._log(f"exit hook failed: {_describe(error)}")
        if outcome.ending is Ending.FINISH:
            finishing = self.runtime.finish(outcome.status, outcome.message or None,
                                            outcome.notice)
            finishing.addBoth(lambda _: self.done.callback(outcome))
            return
        if outcome.ending is Ending.TEMPORARY:
            self.runtime.temporary_exit(outcome.delay, outcome.message, outcome.notice)
        elif outcome.ending is Ending.ABORT:
            self.runtime.abort_exit()
        else:
            self.runtime.stop()
            self._exit(0)
        self.done.callback(outcome)


@dataclass(frozen=True)
class _UnknownExit:
    """Stands in for the ``ExitResult`` of a command whose exit report was lost."""

    code: int = 0
    signal: int | None = None
    wall_time: float = 0.0
    timed_out: bool = False


_UNKNOWN_EXIT = _UnknownExit()


def _first_result(deferred: defer.Deferred[Any]) -> defer.Deferred[Any]:
    """A Deferred fired by *deferred*'s result, unless someone fires it first."""
    first: defer.Deferred[Any] = defer.Deferred()

    def settle(result: Any) -> None:
        if first.called:
            return None
        if isinstance(result, Failure):
            first.errback(result)
        else:
            first.callback(result)
        return None

    deferred.addBoth(settle)
    return first


async def _bounded(deferred: defer.Deferred[Any], seconds: float, clock: Any,
                   raise_errors: bool = False) -> Any:
    """*deferred*'s result, or False after *seconds*; errors give False unless *raise_errors*."""
    deferred.addTimeout(seconds, clock)
    try:
        result = await deferred
    except defer.TimeoutError:
        if raise_errors:
            raise
        return False
    except Exception:
        if raise_errors:
            raise
        return False
    return True if result is None else result


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"

"""In-process test doubles for the wrapper's state machine, driven by a ``task.Clock``.

* :class:`FakeGuest`: the guest: a file system (dict) and commands that
  progress one second per clock second while the VM runs; a command's script
  says how long it takes, what it prints and writes, and its exit status.
* :class:`FakeDriver`: a hypervisor following ``vmwrapper.hypervisor.base``:
  states, pause/resume, checkpoints that snapshot the guest, crashes. Its
  ``disks`` (vm_dir -> checkpoint) outlive a driver instance, as files would,
  so a second wrapper run can restore what the first saved.
* :class:`FakeChannel`: the guest channel: hello some seconds after boot,
  commands, transfers, adoption after a restore, liveness.
* :class:`FakeRuntime`: the BOINC runtime's surface the wrapper uses.
"""

from __future__ import annotations

import copy
import pathlib
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task

from vmcontroller.host.controller import ExitResult
from vmcontroller.transfer import TransferError
from vmwrapper.boinc.initdata import InitData
from vmwrapper.hypervisor.base import Capabilities, Checkpoint, HypervisorDriver, VMSpec, VMState
from vmwrapper.hypervisor.errors import CheckpointMissing, VMExists, VMNotFound, VMStateError
from vmwrapper.wrapper.channel import BrokerSettings


@dataclass
class Script:
    """What a guest command does: *seconds* of running time, then *code*.

    ``writes`` files at the end; ``progress_file`` gets ``done/seconds`` every
    second; ``counter_file`` gets the number of seconds worked so far (the
    "counter in the guest" that proves no work is redone after a restore).
    """

    seconds: float = 5.0
    code: int = 0
    output: bytes = b""
    writes: dict[str, bytes] = field(default_factory=dict)
    progress_file: str = ""
    counter_file: str = ""


@dataclass
class Command:
    seq: int
    shell: str
    script: Script
    done: float = 0.0
    finished: bool = False
    timeout: float | None = None


class FakeGuest:
    """The inside of the VM: files and running commands."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.commands: dict[int, Command] = {}
        #: total seconds of work done by commands (across restores: only what survives)
        self.work_log: list[tuple[int, float]] = []

    def snapshot(self) -> dict[str, Any]:
        return {"files": dict(self.files), "commands": copy.deepcopy(self.commands)}

    def restore(self, snap: dict[str, Any]) -> None:
        self.files = dict(snap["files"])
        self.commands = copy.deepcopy(snap["commands"])

    def advance(self, seconds: float) -> list[Command]:
        """Let commands work *seconds*; returns those that finished now."""
        finished = []
        for command in self.commands.values():
            if command.finished:
                continue
            command.done += seconds
            script = command.script
            if script.progress_file:
                self.files[script.progress_file] = f"{min(command.done / script.seconds, 1):.3f}\n".encode()
            if script.counter_file:
                self.files[script.counter_file] = str(int(command.done)).encode()
            limit = command.timeout if command.timeout else script.seconds
            if command.done >= min(script.seconds, limit):
                command.finished = True
                self.files.update(script.writes)
                finished.append(command)
        return finished


class FakeDriver(HypervisorDriver):
    """An in-memory hypervisor; see the module docstring."""

    name = "fake"

    def __init__(self, clock: task.Clock, disks: dict[str, Any] | None = None,
                 capabilities: Capabilities | None = None) -> None:
        super().__init__(clock)
        self.clock = clock
        self.capabilities = capabilities or Capabilities(pause=True, checkpoint=True,
                                                         checkpoint_survives_crash=True,
                                                         config_disk=True, cpu_time=True)
        #: vm_dir -> {"checkpoint": guest snapshot or None}; outlives the driver
        self.disks = disks if disks is not None else {}
        self.vms: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.guest = FakeGuest()
        self.create_error: Exception | None = None
        self.start_error: Exception | None = None
        self.cpu_per_second = 0.9
        self._stopped_waiters: dict[str, list[defer.Deferred[VMState]]] = {}
        self._ticker = task.LoopingCall(self._tick)
        self._ticker.clock = clock
        self._ticker.start(1.0, now=False)
        self.on_guest_finished: Any = None

    # helpers for tests
    def vm_state(self, name: str) -> VMState:
        vm = self.vms.get(name)
        return VMState.ABSENT if vm is None else vm["state"]

    def crash(self, name: str) -> None:
        self._set_stopped(name, VMState.CRASHED)

    def _tick(self) -> None:
        for vm in self.vms.values():
            if vm["state"] is VMState.RUNNING:
                vm["cpu"] += self.cpu_per_second
                finished = self.guest.advance(1.0)
                if finished and self.on_guest_finished is not None:
                    self.on_guest_finished(finished)

    def _set_stopped(self, name: str, state: VMState) -> None:
        vm = self.vms[name]
        vm["state"] = state
        for waiter in self._stopped_waiters.pop(name, []):
            waiter.callback(state)

    def _vm(self, name: str) -> dict[str, Any]:
        if name not in self.vms:
            raise VMNotFound(f"no VM {name}")
        return self.vms[name]

    # the interface
    def probe_host(self) -> defer.Deferred[Any]:
        return defer.succeed(None)

    def create(self, spec: VMSpec) -> defer.Deferred[None]:
        self.calls.append(("create", spec.name))
        if self.create_error is not None:
            return defer.fail(self.create_error)
        if spec.name in self.vms:
            return defer.fail(VMExists(spec.name))
        spec.vm_dir.mkdir(parents=True, exist_ok=True)
        (spec.vm_dir / "disk.qcow2").write_bytes(b"overlay")
        self.disks.setdefault(str(spec.vm_dir), {"checkpoint": None})
        self.vms[spec.name] = {"state": VMState.STOPPED, "spec": spec, "cpu": 0.0}
        return defer.succeed(None)

    def start(self, name: str) -> defer.Deferred[None]:
        self.calls.append(("start", name))
        vm = self._vm(name)
        if vm["state"].is_alive:
            return defer.fail(VMStateError("already running"))
        if self.start_error is not None:
            return defer.fail(self.start_error)
        self.guest = FakeGuest()
        vm["state"], vm["cpu"] = VMState.RUNNING, 0.0
        return defer.succeed(None)

    def pause(self, name: str) -> defer.Deferred[None]:
        self.calls.append(("pause", name))
        vm = self._vm(name)
        if not vm["state"].is_alive:
            return defer.fail(VMStateError("not running"))
        vm["state"] = VMState.PAUSED
        return defer.succeed(None)

    def resume(self, name: str) -> defer.Deferred[None]:
        self.calls.append(("resume", name))
        vm = self._vm(name)
        if not vm["state"].is_alive:
            return defer.fail(VMStateError("not running"))
        vm["state"] = VMState.RUNNING
        return defer.succeed(None)

    def save_checkpoint(self, name: str) -> defer.Deferred[Checkpoint]:
        self.calls.append(("save_checkpoint", name))
        vm = self._vm(name)
        if not vm["state"].is_alive:
            return defer.fail(VMStateError("not running"))
        self.disks[str(vm["spec"].vm_dir)]["checkpoint"] = self.guest.snapshot()
        return defer.succeed(Checkpoint("boinc-1", self.clock.seconds()))

    def restore_checkpoint(self, name: str) -> defer.Deferred[None]:
        self.calls.append(("restore_checkpoint", name))
        vm = self._vm(name)
        snap = self.disks[str(vm["spec"].vm_dir)]["checkpoint"]
        if snap is None:
            return defer.fail(CheckpointMissing(name))
        self.guest = FakeGuest()
        self.guest.restore(snap)
        vm["state"], vm["cpu"] = VMState.RUNNING, 0.0
        return defer.succeed(None)

    def has_checkpoint(self, name: str) -> defer.Deferred[bool]:
        vm = self._vm(name)
        return defer.succeed(self.disks[str(vm["spec"].vm_dir)]["checkpoint"] is not None)

    def power_off(self, name: str, grace: float = 0.0) -> defer.Deferred[None]:
        self.calls.append(("power_off", name))
        vm = self._vm(name)
        if vm["state"].is_alive:
            self._set_stopped(name, VMState.STOPPED)
        return defer.succeed(None)

    def destroy(self, name: str) -> defer.Deferred[None]:
        self.calls.append(("destroy", name))
        vm = self.vms.get(name)
        if vm is None:
            return defer.succeed(None)
        if vm["state"].is_alive:
            self._set_stopped(name, VMState.STOPPED)
        self.disks.pop(str(vm["spec"].vm_dir), None)
        (vm["spec"].vm_dir / "disk.qcow2").unlink(missing_ok=True)
        del self.vms[name]
        return defer.succeed(None)

    def state(self, name: str) -> defer.Deferred[VMState]:
        return defer.succeed(self.vm_state(name))

    def when_stopped(self, name: str) -> defer.Deferred[VMState]:
        state = self.vm_state(name)
        if not state.is_alive:
            return defer.succeed(state)
        waiter: defer.Deferred[VMState] = defer.Deferred()
        self._stopped_waiters.setdefault(name, []).append(waiter)
        return waiter

    def cpu_time(self, name: str) -> defer.Deferred[float]:
        vm = self.vms.get(name)
        return defer.fail(VMNotFound(name)) if vm is None else defer.succeed(vm["cpu"])

    def memory_use(self, name: str) -> defer.Deferred[int]:
        return defer.succeed(0)

    def console_log(self, name: str, max_bytes: int = 65536) -> defer.Deferred[str]:
        return defer.succeed("[    0.000] fake console\n")

    def cleanup_stale(self, vm_dir: pathlib.Path, keep_checkpoint: bool = True) -> defer.Deferred[list[str]]:
        self.calls.append(("cleanup_stale", str(keep_checkpoint)))
        if not keep_checkpoint:
            self.disks.pop(str(vm_dir), None)
        return defer.succeed([])

    def stop_ticking(self) -> None:
        if self._ticker.running:
            self._ticker.stop()


class FakeChannel:
    """The guest channel over the fake driver's guest; see the module docstring.

    :param boot_seconds: seconds after a start/restore before the agent says hello
        (None: never).
    :param scripts: shell-command substring -> :class:`Script`.
    """

    def __init__(self, clock: task.Clock, driver: FakeDriver, boot_seconds: float | None = 3.0,
                 scripts: dict[str, Script] | None = None, first_seq: int = 100) -> None:
        self.clock = clock
        self.driver = driver
        self.boot_seconds = boot_seconds
        self.scripts = scripts or {}
        self.opened_with: list[BrokerSettings | None] = []
        self.closed = False
        self.held: set[str] = set()
        self.shells: list[str] = []
        self._seq = first_seq
        self._lost_callbacks: list[Any] = []
        self._pending: dict[int, tuple[defer.Deferred[Any], Any]] = {}
        #: commands whose exit report went to an earlier wrapper (adopting them never fires)
        self.reports_lost: set[int] = set()
        driver.on_guest_finished = self._finished

    def open(self, vm_id: str, saved: BrokerSettings | None) -> defer.Deferred[BrokerSettings]:
        self.opened_with.append(saved)
        return defer.succeed(saved or BrokerSettings(4242, {"host": ["h", "hp"], "vm": ["v", "vp"]}))

    def agent_settings(self, vm_id: str) -> dict[str, Any]:
        return {"broker_host": "10.0.2.2", "broker_port": 4242, "login": "v", "passcode": "vp",
                "vm_id": vm_id}

    def wait_for_hello(self, vm_id: str, timeout: float) -> defer.Deferred[Any]:
        waiter: defer.Deferred[Any] = defer.Deferred()
        if self.boot_seconds is not None:
            self.clock.callLater(self.boot_seconds, self._hello, vm_id, waiter)
        return waiter

    def _hello(self, vm_id: str, waiter: defer.Deferred[Any]) -> None:
        if self.driver.vm_state(vm_id).is_alive and not waiter.called:
            waiter.callback("hello")

    def _script_for(self, shell: str) -> Script:
        for key, script in self.scripts.items():
            if key in shell:
                return script
        return Script(seconds=1.0)

    def run(self, vm_id: str, shell: str, env: Any, cwd: Any, timeout: Any,
            on_output: Any) -> tuple[int, defer.Deferred[Any]]:
        self._seq += 1
        seq = self._seq
        self.shells.append(shell)
        script = self._script_for(shell)
        self.driver.guest.commands[seq] = Command(seq, shell, script, timeout=timeout)
        d: defer.Deferred[Any] = defer.Deferred()
        self._pending[seq] = (d, on_output)
        return seq, d

    def adopt(self, vm_id: str, seq: int, on_output: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self._pending[seq] = (d, on_output)
        command = self.driver.guest.commands.get(seq)
        if command is not None and command.finished and seq not in self.reports_lost:
            self._finished([command])
        return d

    def running_commands(self, vm_id: str) -> int | None:
        if not self.driver.vm_state(vm_id).is_alive:
            return None
        return sum(1 for c in self.driver.guest.commands.values() if not c.finished)

    def _finished(self, commands: list[Command]) -> None:
        for command in commands:
            entry = self._pending.pop(command.seq, None)
            if entry is None:
                continue
            d, on_output = entry
            if command.script.output:
                on_output("stdout", command.script.output)
            timed_out = bool(command.timeout and command.timeout < command.script.seconds)
            d.callback(ExitResult(None if timed_out else command.script.code, None, {},
                                  command.done, timed_out=timed_out))

    def kill(self, vm_id: str, seq: int) -> defer.Deferred[Any]:
        command = self.driver.guest.commands.get(seq)
        if command is not None:
            command.finished = True
        return defer.succeed(None)

    def put_file(self, vm_id: str, source: str, destination: str) -> defer.Deferred[Any]:
        self.driver.guest.files[destination] = pathlib.Path(source).read_bytes()
        return defer.succeed(None)

    def get_file(self, vm_id: str, source: str, destination: str,
                 max_size: int | None = None) -> defer.Deferred[Any]:
        data = self.driver.guest.files.get(source)
        if data is None:
            return defer.fail(TransferError("not_found", f"{source}: No such file"))
        pathlib.Path(destination).write_bytes(data)
        return defer.succeed(None)

    def hold_liveness(self, vm_id: str) -> None:
        self.held.add(vm_id)

    def release_liveness(self, vm_id: str) -> None:
        self.held.discard(vm_id)

    def on_lost(self, callback: Any) -> None:
        self._lost_callbacks.append(callback)

    def lose(self, vm_id: str) -> None:
        """Declare the guest lost, as missed heartbeats would."""
        for callback in self._lost_callbacks:
            callback(vm_id)

    def close(self) -> defer.Deferred[Any]:
        self.closed = True
        return defer.succeed(None)


class FakeRuntime:
    """What the wrapper uses of ``BoincRuntime``; records finishes, exits and trickles."""

    def __init__(self, clock: task.Clock, exits: list[int]) -> None:
        self.clock = clock
        self.init_data = InitData()
        self.fraction_done = 0.0
        self.other_pids: list[int] = []
        self.trickles: list[tuple[str, str]] = []
        self.checkpoints: list[float] = []
        self.finished: tuple[int, str | None] | None = None
        self.temporary: tuple[float, str] | None = None
        self.aborted = False
        self.stopped = False
        self.checkpoint_due = False
        self._exits = exits

    def send_trickle_up(self, variety: str, body: str) -> defer.Deferred[None]:
        self.trickles.append((variety, body))
        return defer.succeed(None)

    def time_to_checkpoint(self) -> bool:
        return self.checkpoint_due

    def checkpoint_completed(self) -> None:
        self.checkpoints.append(self.clock.seconds())

    def finish(self, status: int = 0, message: str | None = None,
               notice: bool = False) -> defer.Deferred[int]:
        self.finished = (status, message)
        self._exits.append(status)
        return defer.succeed(status)

    def temporary_exit(self, delay: float, reason: str, notice: bool = False) -> None:
        self.temporary = (delay, reason)
        self._exits.append(0)

    def abort_exit(self) -> None:
        self.aborted = True
        self._exits.append(194)

    def stop(self) -> None:
        self.stopped = True

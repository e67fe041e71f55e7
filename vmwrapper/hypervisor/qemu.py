"""The QEMU driver: one ``qemu-system-x86_64`` child process per VM, driven over QMP.

How each part of the interface maps onto QEMU (facts: ``shared/qemu_guest.md``):

* **accelerator**: KVM only after a short timed probe boot under KVM printed
  its marker (on some hosts ``/dev/kvm`` opens and the guest then hangs or QEMU
  aborts); otherwise TCG (``-accel tcg -cpu max``). The verdict is cached in
  memory and, with ``probe_cache``, on disk keyed by the QEMU binary and kernel.
* **disk**: a qcow2 overlay ``vm_dir/disk.qcow2`` backed by the base image,
  which QEMU opens read-only and never writes.
* **control**: QEMU starts paused (``-S``) with a QMP socket; every operation
  is a QMP command (``cont``, ``stop``, ``quit``, ``system_powerdown``, HMP
  ``savevm``/``loadvm``/``delvm``). Events keep the state current.
* **checkpoints**: ``savevm boinc-N`` into the overlay, then ``checkpoint.json``
  is replaced atomically, then the previous snapshot deleted: a crash at any
  point leaves one complete checkpoint. Restore = new QEMU, ``loadvm``, ``cont``.
* **death**: ``processExited`` of the child reports a dead QEMU at once; every
  wait is raced against it, and QEMU is killed on deadlines and when the
  reactor shuts down.
* **stale VMs**: ``vm_dir/vm.json`` records the pid and start time of the
  QEMU it runs; ``cleanup_stale`` kills that process only when ``/proc`` shows
  the same process (start time and QMP socket in its command line).

State table (QEMU -> ``VMState``):

=====================================  ============  ==========================================
QEMU                                   VMState       why
=====================================  ============  ==========================================
no process, overlay present            STOPPED       before start, after power_off/guest poweroff
running, QMP ``RESUME`` last           RUNNING
running, QMP ``STOP`` last             PAUSED        also briefly during savevm (QEMU stops it)
process ended, asked or guest poweroff STOPPED       SHUTDOWN reason guest-shutdown / host-qmp-*
process ended otherwise                CRASHED       killed, aborted, guest panic/reset
=====================================  ============  ==========================================
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from twisted.python.failure import Failure

from vmwrapper.hypervisor import procinfo
from vmwrapper.hypervisor.base import (
    Capabilities,
    Checkpoint,
    HostInfo,
    HypervisorDriver,
    VMSpec,
    VMState,
)
from vmwrapper.hypervisor.errors import (
    CheckpointFailed,
    CheckpointMissing,
    HypervisorError,
    HypervisorFailure,
    HypervisorNotInstalled,
    ImageCorrupt,
    ImageMissing,
    InvalidSpec,
    NoVirtualization,
    OperationTimeout,
    OutOfDisk,
    PortInUse,
    VMCrashed,
    VMExists,
    VMNotFound,
    VMStateError,
)
from vmwrapper.hypervisor.qmp import QMPDisconnected, QMPError, QMPProtocol, connect_qmp

log = Logger()

OVERLAY = "disk.qcow2"
RECORD = "vm.json"
CHECKPOINT = "checkpoint.json"
PIDFILE = "qemu.pid"
CONSOLE = "console.log"
#: ``VMSpec.extra`` keys this driver understands.
EXTRA_KEYS = {"machine"}
#: SHUTDOWN event reasons that mean a clean, intended stop.
CLEAN_SHUTDOWN = {"guest-shutdown", "host-qmp-quit", "host-qmp-system-reset"}
_MiB = 1024 * 1024
#: What the probe initramfs prints (see vmwrapper.appliance.builder.PROBE_MARKER).
PROBE_MARKER = b"BOINC-VM-PROBE-OK"


def _qopt(value: object) -> str:
    """Escape a value for a QEMU ``key=value,...`` option (a comma is doubled)."""
    return str(value).replace(",", ",,")


class _QemuProcess(protocol.ProcessProtocol):
    """Collects QEMU's stderr and tells every waiter when the process ends."""

    def __init__(self, watch_stdout_for: bytes | None = None) -> None:
        self.stderr = bytearray()
        self.stdout_tail = bytearray()
        self.watch = watch_stdout_for
        self.marker_seen: defer.Deferred[None] = defer.Deferred()
        self.stderr_closed: defer.Deferred[None] = defer.Deferred()
        self.ended = False
        self.reason: Failure | None = None
        self._waiters: list[defer.Deferred[BaseException]] = []

    def errReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        self.stderr += data
        del self.stderr[:-16384]

    def errConnectionLost(self) -> None:  # noqa: N802 - Twisted API
        if not self.stderr_closed.called:
            self.stderr_closed.callback(None)

    def outReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        self.stdout_tail += data
        del self.stdout_tail[:-4096]
        if self.watch and self.watch in self.stdout_tail and not self.marker_seen.called:
            self.marker_seen.callback(None)

    def processExited(self, reason: Failure) -> None:  # noqa: N802 - Twisted API
        # processExited, not processEnded: the latter also waits for every copy of
        # the stdout/stderr pipes to close, which a helper child of QEMU may hold.
        self.ended = True
        self.reason = reason
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:  # a race() may have cancelled it
                waiter.callback(reason.value)

    def when_ended(self) -> defer.Deferred[BaseException]:
        """A new Deferred firing with the end reason, ``ProcessDone`` or
        ``ProcessTerminated`` (at once if already ended)."""
        if self.ended:
            assert self.reason is not None
            return defer.succeed(self.reason.value)
        d: defer.Deferred[BaseException] = defer.Deferred()
        self._waiters.append(d)
        return d

    def stderr_text(self) -> str:
        return self.stderr.decode(errors="replace").strip()


@dataclass
class _VM:
    spec: VMSpec
    overlay: Path
    qmp_socket: Path
    state: VMState = VMState.STOPPED
    process: _QemuProcess | None = None
    transport: Any = None
    qmp: QMPProtocol | None = None
    stopping: bool = False
    shutdown_reason: str | None = None
    last_cpu: float = 0.0
    stopped_waiters: list[defer.Deferred[VMState]] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.transport.pid if self.transport is not None and self.process else None


def classify_qemu_error(text: str, spec: VMSpec | None = None) -> HypervisorError:
    """Turn QEMU's or qemu-img's error text into the matching typed error."""
    lowered = text.lower()
    detail = text.strip().splitlines()[-1] if text.strip() else "QEMU failed without a message"
    if "could not set up host forwarding" in lowered or "address already in use" in lowered:
        return PortInUse(f"QEMU could not forward a port: {detail}")
    if "no space left" in lowered or "disk quota" in lowered:
        return OutOfDisk(f"no room for the VM's files: {detail}")
    if "no such file or directory" in lowered and ("could not open" in lowered
                                                   or "drive" in lowered):
        return ImageMissing(f"a disk image is missing: {detail}")
    if ("image is not in" in lowered or "unknown driver" in lowered or "invalid" in lowered
            and "image" in lowered or "corrupt" in lowered or "could not open" in lowered):
        return ImageCorrupt(f"QEMU cannot read the disk image: {detail}")
    if "kvm" in lowered and ("failed to initialize" in lowered or "could not access" in lowered):
        return NoVirtualization(f"KVM is not usable: {detail}")
    return HypervisorFailure(f"QEMU failed: {detail}")


class QemuDriver(HypervisorDriver):
    """Runs VMs with QEMU. See the module docstring for the design.

    :param reactor: Twisted reactor (``IReactorProcess``, ``IReactorTime``, Unix sockets).
    :param qemu_binary: the system emulator (looked up on PATH).
    :param qemu_img: the image tool (looked up on PATH).
    :param accel: ``"auto"`` (KVM after a successful probe boot, else TCG),
        ``"tcg"`` or ``"kvm"`` (forced, no probe). Default: ``$VMWRAPPER_QEMU_ACCEL``,
        else ``"auto"``.
    :param probe_kernel: kernel for the KVM probe boot (the appliance's
        ``probe-vmlinuz``); without it ``auto`` means TCG. Default:
        ``probe-vmlinuz`` in ``$VMWRAPPER_QEMU_PROBE_DIR`` when that is set.
    :param probe_initrd: initramfs printing ``PROBE_MARKER`` (``probe-initrd``;
        same default rule).
    :param probe_timeout: seconds the probe may take before KVM is declared unusable.
    :param probe_cache: JSON file remembering the probe verdict across runs.
    :param start_timeout: seconds for QEMU to answer on QMP after it was started.
    :param command_timeout: seconds for an ordinary QMP command.
    :param checkpoint_timeout: seconds for savevm/loadvm.
    :param stop_timeout: seconds for QEMU to exit after ``quit`` before it is killed.
    """

    name = "qemu"
    capabilities = Capabilities(
        pause=True, checkpoint=True, checkpoint_survives_crash=True, shared_folder=True,
        port_forward=True, config_disk=True, cpu_time=True, memory_use=True, console_log=True,
        graceful_shutdown=True)

    def __init__(self, reactor: Any, *, qemu_binary: str = "qemu-system-x86_64",
                 qemu_img: str = "qemu-img", accel: str | None = None,
                 probe_kernel: Path | None = None, probe_initrd: Path | None = None,
                 probe_timeout: float = 10.0, probe_cache: Path | None = None,
                 start_timeout: float = 30.0, command_timeout: float = 30.0,
                 checkpoint_timeout: float = 120.0, stop_timeout: float = 10.0) -> None:
        super().__init__(reactor)
        accel = accel or os.environ.get("VMWRAPPER_QEMU_ACCEL") or "auto"
        if accel not in ("auto", "tcg", "kvm"):
            raise InvalidSpec(f"QEMU accelerator {accel!r} must be 'auto', 'tcg' or 'kvm'")
        probe_dir = os.environ.get("VMWRAPPER_QEMU_PROBE_DIR")
        if probe_dir and probe_kernel is None and probe_initrd is None:
            probe_kernel = Path(probe_dir) / "probe-vmlinuz"
            probe_initrd = Path(probe_dir) / "probe-initrd"
        self.qemu_binary = qemu_binary
        self.qemu_img = qemu_img
        self.accel = accel
        self.probe_kernel = probe_kernel
        self.probe_initrd = probe_initrd
        self.probe_timeout = probe_timeout
        self.probe_cache = probe_cache
        self.start_timeout = start_timeout
        self.command_timeout = command_timeout
        self.checkpoint_timeout = checkpoint_timeout
        self.stop_timeout = stop_timeout
        self._vms: dict[str, _VM] = {}
        self._host_waiters: list[defer.Deferred[HostInfo]] = []
        self._host_info: HostInfo | None = None
        add_trigger = getattr(reactor, "addSystemEventTrigger", None)
        if add_trigger is not None:
            add_trigger("before", "shutdown", self.kill_all)

    # -- host ------------------------------------------------------------------

    def _which(self, program: str, role: str) -> str:
        path = shutil.which(program)
        if path is None:
            raise HypervisorNotInstalled(f"{program} was not found ({role})")
        return path

    def probe_host(self) -> defer.Deferred[HostInfo]:
        if self._host_info is not None:
            return defer.succeed(self._host_info)
        waiter: defer.Deferred[HostInfo] = defer.Deferred()
        self._host_waiters.append(waiter)
        if len(self._host_waiters) == 1:  # the first caller starts the probe
            defer.ensureDeferred(self._probe_host()).addBoth(self._host_probed)
        return waiter

    def _host_probed(self, result: HostInfo | Failure) -> None:
        if isinstance(result, HostInfo):
            self._host_info = result
            log.info("QEMU host: {detail}", detail=result.detail)
        waiters, self._host_waiters = self._host_waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _probe_host(self) -> HostInfo:
        binary = self._which(self.qemu_binary, "the QEMU system emulator")
        self._which(self.qemu_img, "QEMU's image tool")
        out, err, code = await getProcessOutputAndValue(binary, ["--version"], env=os.environ)
        if code != 0:
            raise HypervisorNotInstalled(f"{binary} --version failed: {err.decode().strip()}")
        match = re.search(r"version (\S+)", out.decode())
        version = match.group(1) if match else out.decode().strip()
        if self.accel == "tcg":
            return HostInfo("qemu", version, False, "TCG (asked for)")
        kvm_usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
        if self.accel == "kvm":
            if not kvm_usable:
                raise NoVirtualization("KVM was asked for but /dev/kvm is missing or not writable")
            return HostInfo("qemu", version, True, "KVM (asked for, not probed)")
        if not kvm_usable:
            return HostInfo("qemu", version, False, "TCG: no usable /dev/kvm")
        if not (self.probe_kernel and self.probe_initrd):
            return HostInfo("qemu", version, False, "TCG: KVM not probed (no probe kernel)")
        key = self._probe_key(binary)
        cached = self._read_probe_cache(key)
        if cached is not None:
            return HostInfo("qemu", version, cached["accelerated"], cached["detail"] + " (cached)")
        accelerated, detail = await self._kvm_probe(binary)
        self._write_probe_cache(key, {"accelerated": accelerated, "detail": detail})
        return HostInfo("qemu", version, accelerated, detail)

    def _probe_key(self, binary: str) -> str:
        st = os.stat(binary)
        return hashlib.sha256(f"{binary}:{st.st_mtime_ns}:{os.uname().release}".encode()
                              ).hexdigest()[:16]

    def _read_probe_cache(self, key: str) -> dict[str, Any] | None:
        if self.probe_cache is None:
            return None
        try:
            return json.loads(self.probe_cache.read_text()).get(key)
        except (OSError, ValueError):
            return None

    def _write_probe_cache(self, key: str, verdict: dict[str, Any]) -> None:
        if self.probe_cache is None:
            return
        with contextlib.suppress(OSError):
            self.probe_cache.parent.mkdir(parents=True, exist_ok=True)
            partial = self.probe_cache.with_suffix(".part")
            partial.write_text(json.dumps({key: verdict}))
            partial.replace(self.probe_cache)

    async def _kvm_probe(self, binary: str) -> tuple[bool, str]:
        """Boot the probe kernel under KVM; True only if it printed its marker in time."""
        proc = _QemuProcess(watch_stdout_for=PROBE_MARKER)
        argv = [binary, "-accel", "kvm", "-cpu", "host", "-M", "q35", "-m", "128",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-serial", "stdio", "-kernel", str(self.probe_kernel),
                "-initrd", str(self.probe_initrd), "-append", "console=ttyS0 quiet panic=-1"]
        started = self.reactor.seconds()
        transport = self.reactor.spawnProcess(proc, binary, argv, env=os.environ)
        deadline = task.deferLater(self.reactor, self.probe_timeout, lambda: "timeout")
        index, _ = await defer.race([proc.marker_seen, proc.when_ended(), deadline])
        took = self.reactor.seconds() - started
        if not proc.ended:
            with contextlib.suppress(Exception):
                transport.signalProcess("KILL")
            ended = proc.when_ended()
            await defer.race([ended, task.deferLater(self.reactor, self.stop_timeout, lambda: None)])
        if index == 0:
            return True, f"KVM (probe boot reached user space in {took:.1f} s)"
        if index == 1:
            last = proc.stderr_text().splitlines()[-1:] or ["no message"]
            return False, f"TCG: KVM probe QEMU exited after {took:.1f} s ({last[0]})"
        return False, f"TCG: KVM probe boot hung for {self.probe_timeout:.0f} s"

    # -- helpers -----------------------------------------------------------------

    def _get(self, name: str) -> _VM:
        try:
            return self._vms[name]
        except KeyError:
            raise VMNotFound(f"no VM named {name!r} in this QEMU driver") from None

    async def _qemu_img_status(self, *args: str) -> tuple[str, str, int]:
        binary = self._which(self.qemu_img, "QEMU's image tool")
        out, err, code = await getProcessOutputAndValue(
            binary, list(args), env=dict(os.environ, LC_ALL="C"))
        return out.decode(errors="replace"), err.decode(errors="replace"), code

    async def _qemu_img(self, *args: str) -> str:
        out, err, code = await self._qemu_img_status(*args)
        if code != 0:
            raise classify_qemu_error(err or out)
        return out

    def _write_record(self, vm: _VM, **updates: Any) -> None:
        path = vm.spec.vm_dir / RECORD
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {}
        record.update({"name": vm.spec.name, "overlay": str(vm.overlay),
                       "qmp_socket": str(vm.qmp_socket),
                       "console_log": str(vm.spec.console_log_path)}, **updates)
        partial = path.with_suffix(".part")
        partial.write_text(json.dumps(record))
        partial.replace(path)

    @staticmethod
    def _socket_path(vm_dir: Path) -> Path:
        path = vm_dir / "qmp.sock"
        if len(str(path)) < 100:  # Unix socket paths are limited to 107 bytes
            return path
        digest = hashlib.sha256(str(vm_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"boinc-vm-{digest}.qmp"

    @staticmethod
    def _check_free(directory: Path, need: int, what: str) -> None:
        stat = os.statvfs(directory)
        free = stat.f_bavail * stat.f_frsize
        if free < need:
            raise OutOfDisk(f"{directory} has {free // _MiB} MiB free; {what} needs about "
                            f"{need // _MiB} MiB")

    # -- lifecycle -------------------------------------------------------------------

    def create(self, spec: VMSpec) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._create(spec))

    async def _create(self, spec: VMSpec) -> None:
        if spec.name in self._vms:
            raise VMExists(f"a VM named {spec.name!r} already exists")
        unknown = set(spec.extra) - EXTRA_KEYS
        if unknown:
            raise InvalidSpec(f"unknown QEMU options {sorted(unknown)}; "
                              f"valid: {sorted(EXTRA_KEYS)}")
        for label, path in (("base image", spec.base_image), ("config disk", spec.config_disk)):
            if path is not None and not path.is_file():
                raise ImageMissing(f"the VM's {label} {path} does not exist")
        if spec.shared_folder is not None and not Path(spec.shared_folder.host_path).is_dir():
            raise ImageMissing(f"shared folder {spec.shared_folder.host_path} is not a directory")
        await self.probe_host()
        info = json.loads(await self._qemu_img("info", "--output=json", str(spec.base_image)))
        fmt = info.get("format")
        if fmt == "raw":
            with open(spec.base_image, "rb") as f:
                f.seek(510)
                if f.read(2) != b"\x55\xaa":
                    raise ImageCorrupt(f"{spec.base_image} is neither a known disk image "
                                       "format nor a bootable raw disk")
        elif fmt == "qcow2":
            # qemu-img check: 0 clean, 3 leaked clusters only (harmless), 1/2 broken.
            out, err, code = await self._qemu_img_status("check", str(spec.base_image))
            if code in (1, 2):
                first = (err or out).strip().splitlines()[:1] or ["check failed"]
                raise ImageCorrupt(f"{spec.base_image} is damaged ({first[0]})")
        made_dir = not spec.vm_dir.exists()
        spec.vm_dir.mkdir(parents=True, exist_ok=True)
        vm = _VM(spec=spec, overlay=spec.vm_dir / OVERLAY,
                 qmp_socket=self._socket_path(spec.vm_dir))
        try:
            await self._make_overlay(vm, fmt)
        except BaseException:
            if made_dir:
                with contextlib.suppress(OSError):
                    spec.vm_dir.rmdir()
            raise
        self._vms[spec.name] = vm
        self._write_record(vm, base_image=str(spec.base_image), pid=None)

    async def _make_overlay(self, vm: _VM, fmt: str) -> None:
        """Create the copy-on-write overlay, or adopt the one an earlier run left."""
        spec = vm.spec
        if vm.overlay.exists():
            info = json.loads(await self._qemu_img("info", "-U", "--output=json",
                                                   str(vm.overlay)))
            if info.get("backing-filename") == str(spec.base_image):
                return
            log.warn("overlay {overlay} belongs to another base image ({other}); replacing it",
                     overlay=vm.overlay, other=info.get("backing-filename"))
            vm.overlay.unlink()
            (spec.vm_dir / CHECKPOINT).unlink(missing_ok=True)
        if not vm.overlay.exists():
            self._check_free(spec.vm_dir, 64 * _MiB + spec.memory_mb * _MiB // 2,
                             "the VM's disk overlay and a checkpoint")
            partial = spec.vm_dir / (OVERLAY + ".part")
            try:
                await self._qemu_img("create", "-q", "-f", "qcow2", "-b", str(spec.base_image),
                                     "-F", fmt, str(partial))
                partial.replace(vm.overlay)
            finally:
                partial.unlink(missing_ok=True)

    def _argv(self, vm: _VM, binary: str, info: HostInfo) -> list[str]:
        spec = vm.spec
        if info.accelerated:
            accel, cpu = ["-accel", "kvm"], ["-cpu", "host"]
        else:
            accel, cpu = ["-accel", "tcg,tb-size=64"], ["-cpu", "max"]
        argv = [binary, "-name", f"boinc-vm-{spec.name}", *accel, *cpu,
                "-M", spec.extra.get("machine", "q35"), "-m", str(spec.memory_mb),
                "-smp", str(spec.cpus), "-nodefaults", "-no-user-config", "-display", "none",
                "-no-reboot", "-S",
                "-chardev", f"file,id=console,path={_qopt(spec.console_log_path)},append=on",
                "-serial", "chardev:console",
                "-qmp", f"unix:{_qopt(vm.qmp_socket)},server=on,wait=off",
                "-pidfile", str(spec.vm_dir / PIDFILE),
                "-drive", f"file={_qopt(vm.overlay)},if=virtio,format=qcow2,discard=unmap"]
        if spec.config_disk is not None:
            argv += ["-drive", f"file={_qopt(spec.config_disk)},if=virtio,format=raw,readonly=on"]
        if spec.network:
            netdev = "user,id=net0"
            for fwd in spec.port_forwards:
                netdev += f",hostfwd={fwd.protocol}:{fwd.host_address}:{fwd.host_port}-:{fwd.guest_port}"
            argv += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,romfile="]
        if spec.shared_folder is not None:
            shared = spec.shared_folder
            ro = ",readonly=on" if shared.read_only else ""
            argv += ["-fsdev", f"local,id=shared0,path={_qopt(shared.host_path)},"
                               f"security_model=none{ro}",
                     "-device", f"virtio-9p-pci,fsdev=shared0,mount_tag={shared.tag}"]
        return argv

    @staticmethod
    def _check_ports(spec: VMSpec) -> None:
        if not spec.network:
            return
        for fwd in spec.port_forwards:
            kind = socket.SOCK_STREAM if fwd.protocol == "tcp" else socket.SOCK_DGRAM
            with socket.socket(socket.AF_INET, kind) as probe:
                try:
                    probe.bind((fwd.host_address, fwd.host_port))
                except OSError as error:
                    if error.errno == errno.EADDRINUSE:
                        raise PortInUse(f"host port {fwd.host_address}:{fwd.host_port} "
                                        f"({fwd.protocol}) is already in use") from None
                    raise PortInUse(f"cannot use host port {fwd.host_address}:"
                                    f"{fwd.host_port}: {error.strerror}") from None

    async def _launch(self, vm: _VM) -> None:
        """Start a paused QEMU for ``vm`` and connect QMP; kill it on any failure."""
        info = await self.probe_host()
        binary = self._which(self.qemu_binary, "the QEMU system emulator")
        self._check_ports(vm.spec)
        vm.qmp_socket.unlink(missing_ok=True)
        vm.spec.console_log_path.parent.mkdir(parents=True, exist_ok=True)
        proc = _QemuProcess()
        vm.process, vm.stopping, vm.shutdown_reason, vm.last_cpu = proc, False, None, 0.0
        vm.transport = self.reactor.spawnProcess(
            proc, binary, self._argv(vm, binary, info), env=dict(os.environ, LC_ALL="C"))
        pid = vm.transport.pid
        self._write_record(vm, pid=pid, start_ticks=procinfo.start_ticks(pid))
        proc.when_ended().addCallback(self._on_ended, vm, proc)
        connecting = connect_qmp(self.reactor, str(vm.qmp_socket), timeout=self.start_timeout,
                                 on_event=lambda *event: self._on_event(vm, proc, *event))
        # A failed connection is a result here (race() waits for a success otherwise).
        connecting.addCallbacks(lambda qmp: (qmp, None), lambda failure: (None, failure))
        index, (value, failure) = await defer.race([connecting, proc.when_ended().addCallback(
            lambda reason: (None, reason))])
        if index == 1:  # QEMU exited: read the rest of its stderr, then say why
            await defer.race([proc.stderr_closed,
                              task.deferLater(self.reactor, 1.0, lambda: None)])
            raise classify_qemu_error(proc.stderr_text(), vm.spec)
        if failure is not None:
            self._kill(vm)
            await self._wait_ended(vm, self.stop_timeout)
            if failure.check(TimeoutError):
                raise OperationTimeout(f"QEMU did not answer on QMP within "
                                       f"{self.start_timeout:.0f} s")
            raise HypervisorFailure(f"QMP connection failed: {failure.getErrorMessage()}")
        vm.qmp = value
        vm.state = VMState.PAUSED

    def _on_event(self, vm: _VM, proc: _QemuProcess, event: str, data: dict[str, Any],
                  _when: float) -> None:
        if vm.process is not proc:
            return
        if event == "STOP":
            vm.state = VMState.PAUSED
        elif event == "RESUME":
            vm.state = VMState.RUNNING
        elif event == "SHUTDOWN":
            vm.shutdown_reason = data.get("reason", "")

    def _on_ended(self, reason: BaseException, vm: _VM, proc: _QemuProcess) -> None:
        if vm.process is not proc:
            return
        exit_code = getattr(reason, "exitCode", None)
        clean = vm.stopping or (exit_code == 0 and vm.shutdown_reason in CLEAN_SHUTDOWN)
        vm.state = VMState.STOPPED if clean else VMState.CRASHED
        if not clean:
            log.warn("QEMU for {name} ended unexpectedly ({reason}): {stderr}",
                     name=vm.spec.name, reason=reason,
                     stderr=proc.stderr_text()[-500:])
        vm.process, vm.transport, vm.qmp = None, None, None
        for leftover in (vm.qmp_socket, vm.spec.vm_dir / PIDFILE):
            with contextlib.suppress(OSError):
                leftover.unlink()
        if vm.spec.vm_dir.is_dir():
            with contextlib.suppress(OSError):
                self._write_record(vm, pid=None, start_ticks=None)
        waiters, vm.stopped_waiters = vm.stopped_waiters, []
        for waiter in waiters:
            waiter.callback(vm.state)

    def _kill(self, vm: _VM) -> None:
        if vm.transport is not None and vm.process is not None and not vm.process.ended:
            vm.stopping = True
            with contextlib.suppress(Exception):
                vm.transport.signalProcess("KILL")

    def kill_all(self) -> None:
        """Kill every QEMU this driver runs, now (reactor shutdown, last resort)."""
        for vm in self._vms.values():
            self._kill(vm)

    async def _wait_ended(self, vm: _VM, timeout: float) -> bool:
        if vm.process is None:
            return True
        ended = vm.process.when_ended()
        deadline = task.deferLater(self.reactor, timeout, lambda: None)
        index, _ = await defer.race([ended, deadline])
        return index == 0

    async def _command(self, vm: _VM, command: str, args: dict[str, Any] | None = None,
                       timeout: float | None = None) -> Any:
        if vm.qmp is None:
            raise VMStateError(f"VM {vm.spec.name!r} is {vm.state.value}, not running")
        timeout = self.command_timeout if timeout is None else timeout
        call = vm.qmp.execute(command, args)
        call.addTimeout(timeout, self.reactor)
        try:
            return await call
        except defer.TimeoutError:
            raise OperationTimeout(f"QEMU did not answer {command} within {timeout:.0f} s"
                                   ) from None
        except QMPDisconnected:
            raise VMCrashed(f"QEMU for {vm.spec.name!r} ended during {command}") from None

    async def _hmp(self, vm: _VM, command_line: str, timeout: float) -> str:
        if vm.qmp is None:
            raise VMStateError(f"VM {vm.spec.name!r} is {vm.state.value}, not running")
        call = defer.ensureDeferred(vm.qmp.human_monitor(command_line))
        call.addTimeout(timeout, self.reactor)
        try:
            return await call
        except defer.TimeoutError:
            raise OperationTimeout(f"QEMU did not finish '{command_line}' within "
                                   f"{timeout:.0f} s") from None
        except QMPDisconnected:
            raise VMCrashed(f"QEMU for {vm.spec.name!r} ended during '{command_line}'") from None

    def start(self, name: str) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start(name))

    async def _start(self, name: str) -> None:
        vm = self._get(name)
        if vm.state.is_alive:
            raise VMStateError(f"VM {name!r} is already {vm.state.value}")
        await self._launch(vm)
        await self._command(vm, "cont")
        vm.state = VMState.RUNNING

    def pause(self, name: str) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._pause_resume(name, "stop", VMState.PAUSED))

    def resume(self, name: str) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._pause_resume(name, "cont", VMState.RUNNING))

    async def _pause_resume(self, name: str, command: str, target: VMState) -> None:
        vm = self._get(name)
        if not vm.state.is_alive:
            raise VMStateError(f"cannot {command} VM {name!r}: it is {vm.state.value}")
        if vm.state is not target:
            await self._command(vm, command)
            vm.state = target

    def _read_checkpoint(self, vm: _VM) -> dict[str, Any] | None:
        try:
            return json.loads((vm.spec.vm_dir / CHECKPOINT).read_text())
        except (OSError, ValueError):
            return None

    def has_checkpoint(self, name: str) -> defer.Deferred[bool]:
        vm = self._get(name)
        return defer.succeed(self._read_checkpoint(vm) is not None and vm.overlay.exists())

    def save_checkpoint(self, name: str) -> defer.Deferred[Checkpoint]:
        return defer.ensureDeferred(self._save_checkpoint(name))

    async def _save_checkpoint(self, name: str) -> Checkpoint:
        vm = self._get(name)
        if not vm.state.is_alive:
            raise VMStateError(f"cannot checkpoint VM {name!r}: it is {vm.state.value}")
        previous = self._read_checkpoint(vm)
        seq = (previous or {}).get("seq", 0) + 1
        tag = f"boinc-{seq}"
        pid = vm.pid
        self._check_free(vm.spec.vm_dir, 32 * _MiB + (procinfo.resident_bytes(pid) if pid else 0),
                         "a checkpoint")
        try:
            await self._hmp(vm, f"savevm {tag}", self.checkpoint_timeout)
        except QMPError as error:
            if "no space" in error.description.lower():
                raise OutOfDisk(f"no room for a checkpoint: {error.description}") from None
            raise CheckpointFailed(f"QEMU could not save a checkpoint: {error.description}"
                                   ) from None
        created = self.reactor.seconds()
        partial = vm.spec.vm_dir / (CHECKPOINT + ".part")
        partial.write_text(json.dumps({"tag": tag, "seq": seq, "created": created}))
        partial.replace(vm.spec.vm_dir / CHECKPOINT)
        if previous and previous.get("tag") != tag:
            try:
                await self._hmp(vm, f"delvm {previous['tag']}", self.checkpoint_timeout)
            except (QMPError, OperationTimeout) as error:
                log.warn("could not delete old checkpoint {tag}: {error}",
                         tag=previous["tag"], error=error)
        return Checkpoint(tag, created, vm.overlay.stat().st_blocks * 512)

    def restore_checkpoint(self, name: str) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._restore_checkpoint(name))

    async def _restore_checkpoint(self, name: str) -> None:
        vm = self._get(name)
        checkpoint = self._read_checkpoint(vm)
        if checkpoint is None:
            raise CheckpointMissing(f"VM {name!r} has no checkpoint to restore")
        if vm.state.is_alive:
            await self._stop_hard(vm)
        await self._launch(vm)
        try:
            await self._hmp(vm, f"loadvm {checkpoint['tag']}", self.checkpoint_timeout)
        except QMPError as error:
            await self._stop_hard(vm)
            raise CheckpointFailed(f"QEMU could not load checkpoint {checkpoint['tag']}: "
                                   f"{error.description}") from None
        await self._command(vm, "cont")
        vm.state = VMState.RUNNING

    async def _stop_hard(self, vm: _VM) -> None:
        """quit over QMP, SIGKILL if QEMU lingers; returns once the process is gone."""
        if vm.process is None:
            return
        vm.stopping = True
        if vm.qmp is not None:
            with contextlib.suppress(HypervisorError, QMPError):
                await self._command(vm, "quit", timeout=self.stop_timeout)
        if not await self._wait_ended(vm, self.stop_timeout):
            self._kill(vm)
            if not await self._wait_ended(vm, self.stop_timeout):
                raise OperationTimeout(f"QEMU for {vm.spec.name!r} did not die after SIGKILL")

    def power_off(self, name: str, grace: float = 0.0) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._power_off(name, grace))

    async def _power_off(self, name: str, grace: float) -> None:
        vm = self._get(name)
        if not vm.state.is_alive or vm.process is None:
            return
        if grace > 0 and vm.qmp is not None:
            vm.stopping = True
            if vm.state is VMState.PAUSED:
                await self._command(vm, "cont")
            with contextlib.suppress(HypervisorError):
                await self._command(vm, "system_powerdown")
                if await self._wait_ended(vm, grace):
                    return
        await self._stop_hard(vm)

    def destroy(self, name: str) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._destroy(name))

    async def _destroy(self, name: str) -> None:
        vm = self._vms.get(name)
        if vm is None:
            return
        await self._power_off(name, 0.0)
        self._remove_files(vm.spec.vm_dir, vm.qmp_socket, vm.spec.console_log_path, everything=True)
        del self._vms[name]

    @staticmethod
    def _remove_files(vm_dir: Path, qmp_socket: Path, console: Path, everything: bool) -> None:
        runtime = [qmp_socket, vm_dir / PIDFILE, vm_dir / (RECORD + ".part"),
                   vm_dir / (CHECKPOINT + ".part"), vm_dir / (OVERLAY + ".part")]
        lasting = [vm_dir / OVERLAY, vm_dir / CHECKPOINT, vm_dir / RECORD, console]
        for path in runtime + (lasting if everything else []):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if everything:
            with contextlib.suppress(OSError):
                vm_dir.rmdir()  # only when empty: other files are the caller's

    # -- observation ---------------------------------------------------------------

    def state(self, name: str) -> defer.Deferred[VMState]:
        vm = self._vms.get(name)
        return defer.succeed(VMState.ABSENT if vm is None else vm.state)

    def when_stopped(self, name: str) -> defer.Deferred[VMState]:
        vm = self._get(name)
        if not vm.state.is_alive:
            return defer.succeed(vm.state)
        d: defer.Deferred[VMState] = defer.Deferred()
        vm.stopped_waiters.append(d)
        return d

    def cpu_time(self, name: str) -> defer.Deferred[float]:
        vm = self._get(name)
        pid = vm.pid
        if pid is not None:
            vm.last_cpu = max(vm.last_cpu, procinfo.cpu_seconds(pid))
        return defer.succeed(vm.last_cpu)

    def memory_use(self, name: str) -> defer.Deferred[int]:
        pid = self._get(name).pid
        return defer.succeed(procinfo.resident_bytes(pid) if pid is not None else 0)

    def console_log(self, name: str, max_bytes: int = 65536) -> defer.Deferred[str]:
        path = self._get(name).spec.console_log_path
        try:
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - max_bytes))
                return defer.succeed(f.read().decode(errors="replace"))
        except FileNotFoundError:
            return defer.succeed("")

    def pid(self, name: str) -> int | None:
        """The QEMU process id of a live VM (for the wrapper's report to BOINC), else None."""
        return self._get(name).pid

    # -- recovery -------------------------------------------------------------------

    def cleanup_stale(self, vm_dir: Path, keep_checkpoint: bool = True) -> defer.Deferred[list[str]]:
        return defer.ensureDeferred(self._cleanup_stale(Path(vm_dir), keep_checkpoint))

    async def _cleanup_stale(self, vm_dir: Path, keep_checkpoint: bool) -> list[str]:
        try:
            record = json.loads((vm_dir / RECORD).read_text())
        except (OSError, ValueError):
            return []
        name = record.get("name", "?")
        mine = self._vms.get(name)
        if mine is not None and mine.spec.vm_dir == vm_dir:
            raise VMStateError(f"VM {name!r} in {vm_dir} belongs to this driver; destroy it")
        pid, ticks = record.get("pid"), record.get("start_ticks")
        socket_path = record.get("qmp_socket", str(self._socket_path(vm_dir)))
        if (pid and procinfo.is_running(pid) and procinfo.start_ticks(pid) == ticks
                and any(socket_path in arg for arg in procinfo.command_line(pid))):
            log.info("killing QEMU {pid} left by an earlier run of {name}", pid=pid, name=name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = self.reactor.seconds() + self.stop_timeout
            while procinfo.is_running(pid) and procinfo.start_ticks(pid) == ticks:
                if self.reactor.seconds() > deadline:
                    raise OperationTimeout(f"stale QEMU {pid} did not die after SIGKILL")
                await task.deferLater(self.reactor, 0.05, lambda: None)
        console = Path(record.get("console_log", vm_dir / CONSOLE))
        self._remove_files(vm_dir, Path(socket_path), console, everything=not keep_checkpoint)
        if keep_checkpoint:
            record.update(pid=None, start_ticks=None)
            (vm_dir / RECORD).write_text(json.dumps(record))
        return [name]

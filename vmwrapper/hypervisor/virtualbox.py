"""The VirtualBox driver: VMs through ``VBoxManage`` (and ``vboxapi`` when it imports).

How the driver's vocabulary maps onto VirtualBox (facts: ``shared/vboxwrapper.md``,
VirtualBox's VBoxManage manual, BOINC's ``samples/vboxwrapper``):

* **Names.** The VirtualBox VM for spec name ``N`` is ``boinc_<first 16 hex of
  md5(N)>`` (vboxwrapper's scheme, with the result name as ``N``), its
  description is ``N``, and it lives in ``<vm_dir>/<vbox name>/`` (``createvm
  --basefolder <vm_dir>``), so it is unique per slot and easy to find again.
* **Copy-on-write.** The base image is never attached: ``createmedium disk
  --diffparent <base>`` makes ``<vm_dir>/overlay.vdi``, a differencing image
  that takes every write.
* **Checkpoints are snapshots**, taken the vboxwrapper way (pause, ``snapshot
  take``, resume) and **only one is kept**: the new one is complete before the
  older ones are deleted (LHC@home volunteers' disks filled with snapshots).
* **Calls** go through ``VBoxManageRunner``: a deadline per call (the stuck
  child is killed: ``OperationTimeout``), retries with doubling pauses for the
  session lock and VBoxSVC-unreachable failures, typed errors from ``VERR_*``.
* **Processes.** The VM process id comes from ``VBox.log`` ("Process ID:"), as
  vboxwrapper reads it; CPU time (all its threads) and memory come from
  ``/proc`` (``procinfo``); the end of the VM process is an event (a Linux
  pidfd the reactor watches), with /proc polling every ``watch_interval`` s as
  the fallback; no ``VBoxManage`` polling.
* **Stale VMs.** ``cleanup_stale`` finds VMs a crashed run left in ``vm_dir``
  (from the record file ``virtualbox-vm.json`` there and the settings files),
  plus any ``boinc_*`` VM still holding our overlay disk (vboxwrapper:
  ``deregister_stale_vm``), and removes only those.

6.1 versus 7.x: the version is read once (``probe_host``); options that differ
are chosen in ``_version_options``. ``VMSpec.extra`` takes the VirtualBox-only
``vbox_job.xml`` options (``vbox_options.VBoxOptions``).
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from vmwrapper.hypervisor import errors, procinfo
from vmwrapper.hypervisor.base import (
    Capabilities,
    Checkpoint,
    HostInfo,
    HypervisorDriver,
    VMSpec,
    VMState,
)
from vmwrapper.hypervisor.exitwatch import ExitWatch
from vmwrapper.hypervisor.vbox_layout import (
    CONTROLLER,
    OVERLAY_FILE,
    VBOX_STATES,
    is_iso9660,
    read_record,
    remove_driver_files,
    tail_text,
    vbox_vm_name,
    write_record,
)
from vmwrapper.hypervisor.vbox_options import VBoxOptions
from vmwrapper.hypervisor.vbox_stale import StaleCleanup
from vmwrapper.hypervisor.vboxapi_control import make_control
from vmwrapper.hypervisor.vboxmanage import (
    BROKEN_VERSIONS,
    VBOX_E_OBJECT_NOT_FOUND,
    VBoxManageFailed,
    VBoxManageRunner,
    VBoxResult,
    VBoxVersion,
    classify,
    find_vboxmanage,
    parse_hostinfo,
    parse_machine_readable,
    parse_snapshot_list,
    parse_version,
    parse_vm_pid,
)

log = Logger()

#: Seconds VBoxManage may take for calls that do real work (start, snapshots).
LONG_TIMEOUT = 300.0

def _same_process(pid: int | None, start: int | None) -> bool:
    """True while ``pid`` runs and is the process that started at ``start``."""
    return bool(pid) and procinfo.is_running(pid) and procinfo.start_ticks(pid) == start


# -- the driver ---------------------------------------------------------------------


@dataclass
class _VM:
    """What the driver knows about one VM it created or adopted."""

    spec: VMSpec
    vbox_name: str
    options: VBoxOptions = field(default_factory=VBoxOptions)
    rdp_port: int | None = None
    uuid: str = ""
    pid: int | None = None
    pid_start: int | None = None
    waiters: list[defer.Deferred[VMState]] = field(default_factory=list)
    watcher: task.LoopingCall | None = None
    exit_watch: ExitWatch | None = None
    last_cpu: float = 0.0

    @property
    def folder(self) -> Path:
        return self.spec.vm_dir / self.vbox_name

    @property
    def overlay(self) -> Path:
        return self.spec.vm_dir / OVERLAY_FILE

    def process_alive(self) -> bool:
        return _same_process(self.pid, self.pid_start)


class VirtualBoxDriver(HypervisorDriver):
    """VirtualBox through ``VBoxManage`` (see the module docstring).

    :param reactor: Twisted reactor (spawnProcess + time).
    :param vboxmanage: path of VBoxManage; default ``$VBOXWRAPPER_VBOXMANAGE``, then PATH.
    :param vbox_user_home: VirtualBox's home (``VBOX_USER_HOME``) for every call;
        default: inherited from the environment.
    :param clock: ``IReactorTime`` for deadlines, retries and the watcher (default: reactor).
    :param command_timeout: seconds per ordinary VBoxManage call (vboxwrapper: 45).
    :param long_timeout: seconds for calls that do real work (start, snapshots).
    :param watch_interval: seconds between checks that the VM process still lives,
        when the reactor or kernel cannot watch a pidfd.
    :param retry_delay: first pause before retrying a locked session (doubles each time).
    :param environ: the environment VBoxManage runs in (default ``os.environ``).
    :param use_api: ``"auto"`` uses ``vboxapi`` for state and pause/resume when it
        imports; False never; True requires it.
    """

    name = "virtualbox"
    capabilities = Capabilities(
        pause=True, checkpoint=True, checkpoint_survives_crash=True, shared_folder=True,
        port_forward=True, config_disk=True, cpu_time=True, memory_use=True,
        console_log=True, graceful_shutdown=True)

    def __init__(self, reactor: Any, *, vboxmanage: str | None = None,
                 vbox_user_home: str | os.PathLike[str] | None = None, clock: Any = None,
                 command_timeout: float = 45.0, long_timeout: float = LONG_TIMEOUT,
                 watch_interval: float = 0.2,
                 retry_delay: float = 1.0, environ: dict[str, str] | None = None,
                 use_api: Any = "auto") -> None:
        super().__init__(reactor)
        self.clock = clock or reactor
        env = dict(os.environ if environ is None else environ)
        if vbox_user_home is not None:
            env["VBOX_USER_HOME"] = str(vbox_user_home)
        self.executable = find_vboxmanage(vboxmanage, env)
        self.runner = VBoxManageRunner(reactor, self.executable or "VBoxManage", env,
                                       clock=self.clock, timeout=command_timeout,
                                       first_retry_delay=retry_delay)
        self.watch_interval = watch_interval
        self.long_timeout = long_timeout
        self.api = make_control(use_api)
        self._stale = StaleCleanup(self._vbm, long_timeout)
        self.version: VBoxVersion | None = None
        self._host: HostInfo | None = None
        self._vms: dict[str, _VM] = {}

    # -- helpers ----------------------------------------------------------------------

    def _vbm(self, *args: str, doing: str, check: bool = True,
             timeout: float | None = None) -> defer.Deferred[VBoxResult]:
        if self.executable is None:
            return defer.fail(errors.HypervisorNotInstalled(
                "VBoxManage was not found (looked at $VBOXWRAPPER_VBOXMANAGE and PATH)"))
        return self.runner.run(*args, doing=doing, check=check, timeout=timeout)

    def _vm(self, name: str) -> _VM:
        try:
            return self._vms[name]
        except KeyError:
            raise errors.VMNotFound(f"no VirtualBox VM named {name!r} in this driver") from None

    @defer.inlineCallbacks
    def _ensure_version(self) -> Any:
        if self.version is None:
            result = yield self._vbm("--version", doing="read the VirtualBox version")
            self.version = parse_version(result.stdout)
        return self.version

    def _version_options(self) -> dict[str, list[str]]:
        """Command-line spellings that differ between VirtualBox versions."""
        version = self.version or parse_version("")
        return {
            # vboxwrapper: create_vm switches at 4.3.0 (--sataportcount removed later).
            "portcount": ["--portcount", "3"] if version.at_least(4, 3)
            else ["--sataportcount", "3"],
            # 7.0 split --audio into --audio-driver and --audio-enabled.
            "audio_off": ["--audio-enabled", "off"] if version.at_least(7)
            else ["--audio", "none"],
            # 6.1 renamed --clipboard to --clipboard-mode.
            "clipboard_off": ["--clipboard-mode", "disabled"] if version.at_least(6, 1)
            else ["--clipboard", "disabled"],
            # 7.0 added --delete-all (also removes DVD/floppy images attached only here);
            # the driver detaches the caller's media first, so --delete is enough on both.
            "unregister": ["--delete"],
        }

    @defer.inlineCallbacks
    def _info(self, vm: _VM) -> Any:
        """``showvminfo --machinereadable`` as a dict, or None when not registered."""
        result = yield self._vbm("showvminfo", vm.vbox_name, "--machinereadable",
                                 doing=f"query VM {vm.vbox_name}", check=False)
        if result.failed:
            if result.code == VBOX_E_OBJECT_NOT_FOUND or "VBOX_E_OBJECT_NOT_FOUND" in result.output:
                return None
            raise classify(result, f"query VM {vm.vbox_name}")
        return parse_machine_readable(result.stdout)

    @defer.inlineCallbacks
    def _vbox_state(self, vm: _VM) -> Any:
        if self.api is not None:
            try:
                return self.api.machine_state(vm.vbox_name)
            except LookupError:
                return None
        info = yield self._info(vm)
        return None if info is None else info.get("VMState", "")

    def _write_record(self, vm: _VM) -> None:
        write_record(vm.spec.vm_dir, {
            "name": vm.spec.name, "vbox_name": vm.vbox_name, "uuid": vm.uuid,
            "rdp_port": vm.rdp_port, "overlay": str(vm.overlay),
            "config_disk": str(vm.spec.config_disk) if vm.spec.config_disk else None,
            "vbox_user_home": self.runner.env.get("VBOX_USER_HOME", "")})

    def _read_vm_pid(self, vm: _VM) -> None:
        try:
            text = (vm.folder / "Logs" / "VBox.log").read_text(errors="replace")
        except OSError:
            text = ""
        pid = parse_vm_pid(text)
        vm.pid = pid
        vm.pid_start = procinfo.start_ticks(pid) if pid else None

    # -- host -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def probe_host(self) -> Any:
        if self._host is not None:
            return self._host
        version = yield self._ensure_version()
        if (version.major, version.minor, version.build) in BROKEN_VERSIONS:
            raise errors.HypervisorFailure(
                f"VirtualBox {version} has known bugs that break BOINC VMs; please upgrade it")
        result = yield self._vbm("list", "hostinfo", doing="check VirtualBox is usable",
                                 check=False)
        if "vboxdrv kernel module is not loaded" in result.output:
            raise errors.HypervisorNotInstalled(
                "the VirtualBox kernel driver (vboxdrv) is not loaded; reinstall VirtualBox "
                "or rebuild its kernel modules")
        info = parse_hostinfo(result.stdout)
        if result.failed or "Processor count" not in info:
            failure = classify(result, "VBoxManage list hostinfo") if result.failed else None
            raise errors.HypervisorNotInstalled(
                "communication with VirtualBox failed (VBoxManage list hostinfo): "
                + (str(failure) if failure else "no processor information"))
        accelerated = info.get("Processor supports HW virtualization") == "yes"
        self._host = HostInfo(
            "virtualbox", version.raw, accelerated,
            f"VirtualBox {version} via {'vboxapi' if self.api else 'VBoxManage'}; "
            f"VT-x/AMD-V {'available' if accelerated else 'not reported'}")
        return self._host

    # -- lifecycle --------------------------------------------------------------------

    def _check_spec(self, spec: VMSpec) -> VBoxOptions:
        options = VBoxOptions.from_extra(spec.extra)
        if not spec.base_image.is_file():
            raise errors.ImageMissing(f"disk image {spec.base_image} does not exist")
        if spec.config_disk is not None and not spec.config_disk.is_file():
            raise errors.ImageMissing(f"config disk {spec.config_disk} does not exist")
        if spec.shared_folder is not None and not Path(spec.shared_folder.host_path).is_dir():
            raise errors.InvalidSpec(
                f"shared folder {spec.shared_folder.host_path} is not an existing directory")
        return options

    @defer.inlineCallbacks
    def create(self, spec: VMSpec) -> Any:
        if spec.name in self._vms:
            raise errors.VMExists(f"VM {spec.name!r} already exists in this driver")
        options = self._check_spec(spec)
        vm = _VM(spec, vbox_vm_name(spec.name), options)
        self._vms[spec.name] = vm  # taken at once: a second create() of it is VMExists
        try:
            adopted = yield self._adopt(vm)
        except BaseException:
            del self._vms[spec.name]
            raise
        if adopted:
            return None
        try:
            yield self._create_new(vm)
        except BaseException:
            del self._vms[spec.name]
            try:
                yield self._remove_everything(vm)
            except errors.HypervisorError as cleanup_failure:  # keep the first error
                log.warn("cleaning up after a failed create: {failure}",
                         failure=cleanup_failure)
            raise
        return None

    @defer.inlineCallbacks
    def _adopt(self, vm: _VM) -> Any:
        """Take over this slot's VM from an earlier run, if VirtualBox (or the slot) has
        it: True when adopted, False when it must be created."""
        spec = vm.spec
        yield self._ensure_version()
        spec.vm_dir.mkdir(parents=True, exist_ok=True)
        settings = vm.folder / f"{vm.vbox_name}.vbox"
        info = yield self._info(vm)
        if info is not None and Path(info.get("CfgFile", "")).resolve() != settings.resolve():
            raise errors.VMExists(
                f"a VirtualBox VM named {vm.vbox_name} is registered from "
                f"{info.get('CfgFile')}, not from {spec.vm_dir}; not touching it")
        if info is None and settings.exists():
            # Our settings file from an earlier run: register it again (vboxwrapper:
            # register_vm), keeping the overlay and its snapshot.
            yield self._vbm("registervm", str(settings), doing=f"register VM {vm.vbox_name}")
            info = yield self._info(vm)
        if info is None:
            return False
        vm.uuid = info.get("UUID", "")
        record = read_record(spec.vm_dir)
        if record and record.get("vbox_name") == vm.vbox_name:
            vm.rdp_port = record.get("rdp_port")
        if VBOX_STATES.get(info.get("VMState", "")) in (VMState.RUNNING, VMState.PAUSED):
            yield self._vbm("controlvm", vm.vbox_name, "poweroff",
                            doing=f"power off adopted VM {vm.vbox_name}")
        self._write_record(vm)
        log.info("adopted VirtualBox VM {vbox} for {name}", vbox=vm.vbox_name, name=spec.name)
        return True

    @defer.inlineCallbacks
    def _create_new(self, vm: _VM) -> Any:
        spec = vm.spec
        name = vm.vbox_name
        options = self._version_options()
        if vm.overlay.exists():
            # Left by a create that died half-way: it is ours and holds nothing.
            yield self._vbm("closemedium", "disk", str(vm.overlay), "--delete",
                            doing="remove a half-made overlay", check=False)
            vm.overlay.unlink(missing_ok=True)
        yield self._vbm("createmedium", "disk", "--filename", str(vm.overlay), "--diffparent",
                        str(spec.base_image), "--format", "VDI",
                        doing=f"create the copy-on-write overlay over {spec.base_image}",
                        timeout=self.long_timeout)
        result = yield self._vbm("createvm", "--name", name, "--basefolder", str(spec.vm_dir),
                                 "--ostype", vm.options.os_name,
                                 "--register", doing=f"create VM {name}")
        for line in result.stdout.splitlines():
            if line.startswith("UUID:"):
                vm.uuid = line.split(":", 1)[1].strip()
        self._write_record(vm)
        required = ["--description", spec.name, "--memory", str(spec.memory_mb),
                    "--cpus", str(spec.cpus), "--acpi", "on", "--ioapic", "on",
                    "--boot1", "disk", "--boot2", "dvd", "--boot3", "none", "--boot4", "none",
                    "--vram", str(vm.options.vram),
                    "--uart1", "0x3F8", "4", "--uartmode1", "file", str(spec.console_log_path)]
        required += yield self._network_options(vm)
        yield self._vbm("modifyvm", name, *required, doing=f"configure VM {name}")
        # Optional knobs: a VirtualBox without one of them still runs the job
        # (BOINC/boinc#1501: "Unknown option: --lpt1" failed 7 % of tasks).
        # One call for all of them; one call each only when that fails.
        knobs = [["--usb", "off"], options["audio_off"], options["clipboard_off"],
                 ["--draganddrop", "disabled"]]
        if vm.options.vm_graphics_controller_type:
            knobs.append(["--graphicscontroller", vm.options.vm_graphics_controller_type])
        result = yield self._vbm("modifyvm", name, *sum(knobs, []),
                                 doing=f"configure VM {name}", check=False)
        for knob in knobs if result.failed else []:
            result = yield self._vbm("modifyvm", name, *knob, doing=f"configure VM {name}",
                                     check=False)
            if result.failed:
                log.warn("VirtualBox ignored {knob}: {message}", knob=" ".join(knob),
                         message=result.message)
        # vboxwrapper: create_vm sets a port count on SATA only and turns the host I/O
        # cache off on SATA, SCSI and SAS.
        controller = vm.options.controller_type
        extra_args = list(options["portcount"]) if controller == "sata" else []
        if controller in ("sata", "scsi", "sas"):
            extra_args += ["--hostiocache", "off"]
        yield self._vbm("storagectl", name, "--name", CONTROLLER, "--add", controller,
                        "--controller", vm.options.vm_disk_controller_model, *extra_args,
                        doing=f"add the disk controller to {name}")
        yield self._vbm("storageattach", name, "--storagectl", CONTROLLER, "--port", "0",
                        "--device", "0", "--type", "hdd", "--medium", str(vm.overlay),
                        doing=f"attach the overlay to {name}")
        if spec.config_disk is not None:
            yield self._attach_config_disk(vm)
        if spec.shared_folder is not None:
            folder = spec.shared_folder
            args = ["sharedfolder", "add", name, "--name", folder.tag, "--hostpath",
                    str(folder.host_path)]
            if folder.read_only:
                args.append("--readonly")
            yield self._vbm(*args, doing=f"share {folder.host_path} with {name}")
        if vm.options.enable_remotedesktop:
            yield self._enable_remote_desktop(vm)

    @defer.inlineCallbacks
    def _network_options(self, vm: _VM) -> Any:
        """The NIC settings: none, NAT (DNS proxy, loopback port forwards) or bridged
        to the host's first interface (vboxwrapper: create_vm)."""
        spec, options = vm.spec, vm.options
        if not spec.network:
            return ["--nic1", "none"]
        args: list[str] = []
        if options.network_bridged_mode:
            result = yield self._vbm("list", "bridgedifs", doing="find a host interface to bridge")
            names = [line.split(":", 1)[1].strip() for line in result.stdout.splitlines()
                     if line.startswith("Name:")]
            if not names:
                raise VBoxManageFailed("network_bridged_mode: VirtualBox lists no host network "
                                       "interface to bridge to", result)
            args += ["--nic1", "bridged", "--bridgeadapter1", names[0]]
        else:
            args += ["--nic1", "nat", "--natdnsproxy1", "on"]
            if options.enable_nat_dns_host_resolver:
                args += ["--natdnshostresolver1", "on"]
            for forward in spec.port_forwards:
                args += ["--natpf1", f"pf{forward.host_port},{forward.protocol},"
                         f"{forward.host_address},{forward.host_port},,{forward.guest_port}"]
        if options.vm_network_driver:
            args += ["--nictype1", options.vm_network_driver]
        return [*args, "--cableconnected1", "on"]

    @defer.inlineCallbacks
    def _enable_remote_desktop(self, vm: _VM) -> Any:
        """VRDE on a free loopback port, when the Extension Pack that provides it is
        installed (vboxwrapper: is_extpack_installed); without it the VM stays headless."""
        result = yield self._vbm("list", "extpacks", doing="look for the Extension Pack",
                                 check=False)
        if "Oracle VM VirtualBox Extension Pack" not in result.stdout or \
                "VBoxVRDP" not in result.stdout:
            log.warn("remote desktop not enabled: the VirtualBox Extension Pack is not installed")
            return
        with socket.socket() as probe:  # a free port, as boinc_get_port finds one
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        args = ["--vrde", "on", "--vrdeextpack", "default", "--vrdeauthlibrary", "default",
                "--vrdeauthtype", "null", "--vrdeaddress", "127.0.0.1", "--vrdeport", str(port)]
        if self.version is not None and self.version.at_least(7, 1):
            # VirtualBox 7.1 needs the security method set (BOINC/boinc#5824).
            args += ["--vrde-property", "Security/Method=RDP"]
        yield self._vbm("modifyvm", vm.vbox_name, *args, doing="enable the remote desktop")
        vm.rdp_port = port
        self._write_record(vm)

    def remote_desktop_address(self, name: str) -> str | None:
        """``127.0.0.1:<port>`` of the VM's remote desktop (VRDE), or None when off
        (what vboxwrapper reports with ``boinc_remote_desktop_addr``)."""
        vm = self._vm(name)
        return f"127.0.0.1:{vm.rdp_port}" if vm.rdp_port else None

    def _attach_config_disk(self, vm: _VM) -> defer.Deferred[VBoxResult]:
        disk = vm.spec.config_disk
        assert disk is not None
        if is_iso9660(disk):
            kind = ["--type", "dvddrive"]
        else:  # a plain disk: immutable, so VirtualBox never writes to the caller's file
            kind = ["--type", "hdd", "--mtype", "immutable"]
        return self._vbm("storageattach", vm.vbox_name, "--storagectl", CONTROLLER, "--port",
                         "1", "--device", "0", *kind, "--medium", str(disk),
                         doing=f"attach the config disk {disk}")

    @defer.inlineCallbacks
    def start(self, name: str) -> Any:
        vm = self._vm(name)
        state = yield self.state(name)
        if state.is_alive:
            raise errors.VMStateError(f"VM {name!r} is already {state.value}")
        yield self._vbm("startvm", vm.vbox_name, "--type", "headless",
                        doing=f"start VM {vm.vbox_name}", timeout=self.long_timeout)
        self._started(vm)

    def _started(self, vm: _VM) -> None:
        self._read_vm_pid(vm)
        vm.last_cpu = 0.0
        self._watch_exit(vm)

    def _watch_exit(self, vm: _VM) -> None:
        """Learn of the VM process's end: through a pidfd when the reactor and the
        kernel allow it, else by reading /proc every ``watch_interval`` (no VBoxManage
        call either way)."""
        if self._is_watching(vm):
            return
        if vm.pid and hasattr(self.reactor, "addReader") and hasattr(os, "pidfd_open"):
            try:
                watch = ExitWatch(self.reactor, vm.pid, lambda: self._watch(vm))
            except OSError:
                pass
            else:
                if vm.process_alive():  # the pid still names our process: watch it
                    vm.exit_watch = watch
                    return
                watch.close()
        vm.watcher = task.LoopingCall(self._watch, vm)
        vm.watcher.clock = self.clock
        vm.watcher.start(self.watch_interval, now=not vm.pid)

    @staticmethod
    def _is_watching(vm: _VM) -> bool:
        return (vm.exit_watch is not None and vm.exit_watch.fd >= 0) or (
            vm.watcher is not None and vm.watcher.running)

    def _watch(self, vm: _VM) -> defer.Deferred[None] | None:
        """The VM process may have ended: /proc says; VBoxManage only once it is gone."""
        if vm.process_alive():
            return None
        self._stop_watching(vm)
        d = self._current_state(vm)
        d.addCallback(lambda state: self._fire_stopped(vm, state))
        d.addErrback(lambda failure: log.failure("watching {vm}", failure, vm=vm.vbox_name))
        return d

    def _fire_stopped(self, vm: _VM, state: VMState) -> None:
        if state.is_alive:
            state = VMState.CRASHED  # the process is gone whatever VBoxSVC still says
        waiters, vm.waiters = vm.waiters, []
        for waiter in waiters:
            waiter.callback(state)

    def _stop_watching(self, vm: _VM) -> None:
        if vm.exit_watch is not None:
            vm.exit_watch.close()
            vm.exit_watch = None
        if vm.watcher is not None and vm.watcher.running:
            vm.watcher.stop()

    @defer.inlineCallbacks
    def _current_state(self, vm: _VM) -> Any:
        vbox_state = yield self._vbox_state(vm)
        if vbox_state is None:
            return VMState.ABSENT
        return VBOX_STATES.get(vbox_state, VMState.STOPPED)

    def pause(self, name: str) -> defer.Deferred[None]:
        return self._change(name, "pause", VMState.PAUSED)

    def resume(self, name: str) -> defer.Deferred[None]:
        return self._change(name, "resume", VMState.RUNNING)

    @defer.inlineCallbacks
    def _change(self, name: str, action: str, target: VMState) -> Any:
        """pause/resume in one call on the usual path; the state is asked for only
        when VirtualBox refuses, to tell "already there" (a no-op) from a real error."""
        vm = self._vm(name)
        try:
            yield self._control(vm, action)
        except (errors.VMStateError, errors.VMNotFound) as refused:
            state = yield self.state(name)
            if state is target:
                return None
            raise errors.VMStateError(
                f"cannot {action} VM {name!r}: it is {state.value}") from refused
        return None

    def _control(self, vm: _VM, action: str) -> defer.Deferred[Any]:
        """pause/resume through vboxapi when present, else ``controlvm``."""
        if self.api is not None:
            return defer.maybeDeferred(getattr(self.api, action), vm.vbox_name)
        return self._vbm("controlvm", vm.vbox_name, action, doing=f"{action} VM {vm.vbox_name}")

    @defer.inlineCallbacks
    def _snapshots(self, vm: _VM) -> Any:
        result = yield self._vbm("snapshot", vm.vbox_name, "list",
                                 doing=f"list snapshots of {vm.vbox_name}", check=False)
        if result.failed and "does not have any snapshots" not in result.output:
            raise classify(result, f"list snapshots of {vm.vbox_name}")
        return parse_snapshot_list(result.stdout)

    @defer.inlineCallbacks
    def save_checkpoint(self, name: str) -> Any:
        vm = self._vm(name)
        state = yield self.state(name)
        if not state.is_alive:
            raise errors.VMStateError(f"cannot checkpoint VM {name!r}: it is {state.value}")
        snapshot = f"boinc_{int(self.clock.seconds() * 1000)}"
        # vboxwrapper: create_snapshot pauses first to avoid a live snapshot.
        if state is VMState.RUNNING:
            yield self._control(vm, "pause")
        try:
            taken = yield self._vbm("snapshot", vm.vbox_name, "take", snapshot,
                                    doing=f"take snapshot {snapshot} of {vm.vbox_name}",
                                    timeout=self.long_timeout)
        except errors.OutOfDisk:
            raise
        except errors.HypervisorError as failure:
            raise errors.CheckpointFailed(f"snapshot of VM {name!r} failed: {failure}") from None
        finally:
            if state is VMState.RUNNING:
                yield self._control(vm, "resume")
        # Only now that the new snapshot exists: delete the older ones, newest first
        # (vboxwrapper: cleanup_snapshots; older-first fails on a disk with 2 children).
        # "Snapshot taken. UUID: <uuid>" names the new one (the current one, "*", else).
        new_uuid = taken.stdout.rsplit("UUID:", 1)[-1].strip() if "UUID:" in taken.stdout else None
        entries = yield self._snapshots(vm)
        for entry in reversed(entries):
            if entry.uuid != new_uuid and not (new_uuid is None and entry.current):
                yield self._vbm("snapshot", vm.vbox_name, "delete", entry.uuid,
                                doing=f"delete old snapshot {entry.name} of {vm.vbox_name}",
                                timeout=self.long_timeout)
        size = sum(p.stat().st_size for p in (vm.folder / "Snapshots").glob("*")
                   if p.is_file()) if (vm.folder / "Snapshots").is_dir() else 0
        return Checkpoint(snapshot, self.clock.seconds(), size)

    @defer.inlineCallbacks
    def has_checkpoint(self, name: str) -> Any:
        vm = self._vm(name)
        info = yield self._info(vm)
        return bool(info and info.get("CurrentSnapshotUUID"))

    @defer.inlineCallbacks
    def restore_checkpoint(self, name: str) -> Any:
        vm = self._vm(name)
        has = yield self.has_checkpoint(name)
        if not has:
            raise errors.CheckpointMissing(f"VM {name!r} has no snapshot to restore")
        state = yield self.state(name)
        if state.is_alive:
            yield self._hard_stop(vm)
        try:
            yield self._vbm("snapshot", vm.vbox_name, "restorecurrent",
                            doing=f"restore the snapshot of {vm.vbox_name}",
                            timeout=self.long_timeout)
        except errors.HypervisorError as failure:
            raise errors.CheckpointFailed(f"restoring VM {name!r} failed: {failure}") from None
        yield self._vbm("startvm", vm.vbox_name, "--type", "headless",
                        doing=f"start VM {vm.vbox_name} from its snapshot",
                        timeout=self.long_timeout)
        self._started(vm)

    @defer.inlineCallbacks
    def _hard_stop(self, vm: _VM, save: bool = False) -> Any:
        """``controlvm poweroff``, or ``savestate`` (memory to disk, the next start
        continues) when asked to and the job enabled it."""
        self._stop_watching(vm)
        action = "savestate" if save and vm.options.enable_vm_savestate_usage else "poweroff"
        yield self._vbm("controlvm", vm.vbox_name, action,
                        doing=f"{action} VM {vm.vbox_name}", timeout=self.long_timeout)
        self._fire_stopped(vm, VMState.STOPPED)

    @defer.inlineCallbacks
    def power_off(self, name: str, grace: float = 0.0) -> Any:
        vm = self._vm(name)
        state = yield self.state(name)
        if not state.is_alive:
            return None
        if grace > 0 and state is VMState.RUNNING:
            yield self._vbm("controlvm", vm.vbox_name, "acpipowerbutton",
                            doing=f"press the power button of {vm.vbox_name}")
            deadline = self.clock.seconds() + grace
            while vm.process_alive() and self.clock.seconds() < deadline:
                yield task.deferLater(self.clock, min(0.1, grace), lambda: None)
            if not vm.process_alive():  # the guest shut itself down
                self._stop_watching(vm)
                self._fire_stopped(vm, VMState.STOPPED)
                return None
        yield self._hard_stop(vm, save=True)
        return None

    @defer.inlineCallbacks
    def destroy(self, name: str) -> Any:
        vm = self._vms.get(name)
        if vm is None:
            return None
        self._stop_watching(vm)
        yield self._remove_everything(vm)
        del self._vms[name]
        self._fire_stopped(vm, VMState.STOPPED)
        return None

    @defer.inlineCallbacks
    def _remove_everything(self, vm: _VM) -> Any:
        """Power off, detach the caller's media, unregister and delete our files."""
        info = yield self._info(vm)
        if info is not None:
            if VBOX_STATES.get(info.get("VMState", "")) in (VMState.RUNNING, VMState.PAUSED):
                yield self._vbm("controlvm", vm.vbox_name, "poweroff",
                                doing=f"power off VM {vm.vbox_name}", timeout=self.long_timeout)
            if f"{CONTROLLER}-1-0" in info:
                # Never let "unregistervm --delete" delete the caller's config disk.
                yield self._vbm("storageattach", vm.vbox_name, "--storagectl", CONTROLLER,
                                "--port", "1", "--device", "0", "--medium", "none",
                                doing="detach the config disk")
            yield self._vbm("unregistervm", vm.vbox_name,
                            *self._version_options()["unregister"],
                            doing=f"unregister and delete VM {vm.vbox_name}",
                            timeout=self.long_timeout)
        if vm.pid and vm.process_alive():
            os.kill(vm.pid, signal.SIGKILL)
        if vm.overlay.exists():
            yield self._vbm("closemedium", "disk", str(vm.overlay), "--delete",
                            doing="delete the overlay", check=False)
            vm.overlay.unlink(missing_ok=True)
        remove_driver_files(vm.spec.vm_dir, vm.vbox_name, vm.spec.console_log_path)

    # -- observation -------------------------------------------------------------------

    @defer.inlineCallbacks
    def state(self, name: str) -> Any:
        vm = self._vms.get(name)
        if vm is None:
            return VMState.ABSENT
        state = yield self._current_state(vm)
        if state.is_alive and vm.pid and not vm.process_alive():
            state = VMState.CRASHED
        return state

    def when_stopped(self, name: str) -> defer.Deferred[VMState]:
        vm = self._vms.get(name)
        if vm is None:
            return defer.succeed(VMState.ABSENT)
        waiter: defer.Deferred[VMState] = defer.Deferred()
        if self._is_watching(vm):
            vm.waiters.append(waiter)
            return waiter
        d = self.state(name)
        d.addCallback(lambda state: self._waiter_for(vm, state, waiter))
        return waiter

    def _waiter_for(self, vm: _VM, state: VMState, waiter: defer.Deferred[VMState]) -> None:
        if state.is_alive:
            vm.waiters.append(waiter)
            if not vm.pid:
                self._read_vm_pid(vm)
            self._watch_exit(vm)
        else:
            waiter.callback(state)

    def cpu_time(self, name: str) -> defer.Deferred[float]:
        vm = self._vm(name)
        if vm.process_alive():
            vm.last_cpu = max(vm.last_cpu, procinfo.cpu_seconds(vm.pid))
        return defer.succeed(vm.last_cpu)

    def pid(self, name: str) -> int | None:
        """The VM process id (VBoxHeadless), for BOINC's ``<other_pid>``: the client
        counts its memory and kills it if the wrapper dies (vboxwrapper reports the
        same pid). None when the VM is not running."""
        vm = self._vm(name)
        return vm.pid if vm.process_alive() else None

    def memory_use(self, name: str) -> defer.Deferred[int]:
        vm = self._vm(name)
        return defer.succeed(procinfo.resident_bytes(vm.pid) if vm.process_alive() else 0)

    def console_log(self, name: str, max_bytes: int = 65536) -> defer.Deferred[str]:
        """The serial console file; without one, the "Guest Log:" lines of VBox.log
        (what vboxwrapper copies to stderr)."""
        vm = self._vm(name)
        path = vm.spec.console_log_path
        if path.exists():
            return defer.succeed(tail_text(path, max_bytes))
        log_path = vm.folder / "Logs" / "VBox.log"
        if log_path.exists():
            lines = [line for line in tail_text(log_path, 4 * max_bytes).splitlines()
                     if "Guest Log:" in line]
            return defer.succeed("\n".join(lines)[-max_bytes:])
        return defer.succeed("")

    # -- recovery -----------------------------------------------------------------------

    def cleanup_stale(self, vm_dir: Path, keep_checkpoint: bool = True) -> defer.Deferred[Any]:
        live = {vm.vbox_name for vm in self._vms.values()}
        d = self._ensure_version()
        d.addCallback(lambda _: self._stale.clean(Path(vm_dir), keep_checkpoint, live))
        return d

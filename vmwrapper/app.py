"""The BOINC application: ``vmwrapper [app flags]`` as the client starts it in a slot.

Builds the real pieces and hands them to :class:`vmwrapper.wrapper.machine.Wrapper`:

1. the BOINC runtime (``init_data.xml``, shared memory); a slot that is not
   usable yet means a temporary exit, not an error;
2. the job file (``job.xml``, else vboxwrapper's ``vbox_job.xml``, through
   BOINC's logical names) with the application's flags; an invalid job file
   ends the task with 206 (EXIT_INIT_FAILURE) and every problem in stderr.txt;
3. the first hypervisor driver of the job's preference that works here;
4. the guest channel (embedded broker unless the job names one);

then runs the reactor until the wrapper exits the process itself.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
from typing import Any

from vmwrapper.boinc.errors import BoincApiError
from vmwrapper.boinc.exitcodes import RESTART_DELAY, ExitStatus
from vmwrapper.boinc.filenames import resolve_filename
from vmwrapper.boinc.log import log
from vmwrapper.boinc.runtime import BoincRuntime

#: Job file logical names, in the order they are looked for.
JOB_FILES = ("job.xml", "vbox_job.xml")


#: Seconds between two returns of freed memory to the system (after the first, at start-up).
TRIM_PERIOD = 600.0


def limit_malloc_arenas() -> None:
    """One malloc arena for the whole process (the broker's threads would each get one).

    The wrapper's threads move a few small frames; per-thread arenas only add
    resident memory on the volunteer's machine. glibc only; elsewhere a no-op.
    """
    try:
        import ctypes  # noqa: PLC0415

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def trim_memory() -> None:
    """Collect garbage and give freed heap pages back to the system (glibc's malloc_trim)."""
    import gc  # noqa: PLC0415

    gc.collect()
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _exit(status: int) -> None:
    """End the process now (no reactor shutdown that could hang), stderr flushed."""
    try:
        sys.stderr.flush()
    finally:
        os._exit(status)


class CpuSource:
    """The runtime's ``cpu_time`` callable, pointed at the wrapper once it exists."""

    def __init__(self) -> None:
        self.source: Any = lambda: 0.0

    def __call__(self) -> float:
        return float(self.source())


def find_job_file(slot_dir: pathlib.Path) -> pathlib.Path:
    """The job file in the slot: the first of :data:`JOB_FILES` that exists, resolved."""
    for name in JOB_FILES:
        path = resolve_filename(slot_dir, name)
        if path.exists():
            return path
    return resolve_filename(slot_dir, JOB_FILES[0])


def main(argv: list[str] | None = None) -> int:
    """Run as the BOINC application in the current directory (the slot); never returns."""
    from twisted.internet import reactor, task  # noqa: PLC0415 - keep `vmwrapper --help` fast

    limit_malloc_arenas()
    args = list(sys.argv[1:] if argv is None else argv)
    slot_dir = pathlib.Path.cwd()
    cpu = CpuSource()
    runtime = BoincRuntime(slot_dir, reactor, cpu_time=cpu, exit=_exit)
    try:
        runtime.init()
    except BoincApiError as error:
        log(f"the BOINC slot is not usable yet: {error}")
        runtime.temporary_exit(RESTART_DELAY, f"slot not ready: {error}")
        return 0
    runtime.start()
    reactor.callWhenRunning(_start, reactor, runtime, cpu, slot_dir, args)
    trimming = task.LoopingCall(trim_memory)
    trimming.clock = reactor
    reactor.callLater(30.0, trimming.start, TRIM_PERIOD)
    reactor.run()
    return 0


def _start(reactor: Any, runtime: BoincRuntime, cpu: CpuSource, slot_dir: pathlib.Path,
           args: list[str]) -> None:
    from twisted.internet import defer  # noqa: PLC0415

    d = defer.ensureDeferred(_build_and_run(reactor, runtime, cpu, slot_dir, args))

    def failed(failure: Any) -> None:
        log(f"vmwrapper could not start: {failure.getTraceback()}")
        runtime.finish(int(ExitStatus.CHILD_FAILED), f"wrapper start-up failed: {failure.value}")

    d.addErrback(failed)


async def _build_and_run(reactor: Any, runtime: BoincRuntime, cpu: CpuSource,
                         slot_dir: pathlib.Path, args: list[str]) -> None:
    from vmwrapper import __version__  # noqa: PLC0415
    from vmwrapper.job.issues import JobFileError  # noqa: PLC0415
    from vmwrapper.job.load import candidate_drivers, load_job  # noqa: PLC0415
    from vmwrapper.wrapper.outcome import outcome_for_error  # noqa: PLC0415

    init = runtime.init_data
    log(f"vmwrapper {__version__}: {init.result_name or 'standalone'} in {slot_dir}")
    if init.app_name:
        log(f"app version: {init.app_name} {init.app_version} "
            f"{init.plan_class or '(no plan class)'}")
    job_path = find_job_file(slot_dir)
    try:
        loaded = load_job(job_path, args)
    except JobFileError as error:
        for issue in error.errors + error.warnings:
            log(str(issue))
        first = error.errors[0] if error.errors else None
        runtime.finish(int(ExitStatus.INIT_FAILURE),
                       f"invalid job description: {first}" if first else "invalid job description")
        return
    for warning in loaded.warnings:
        log(str(warning))
    job = loaded.job
    if not job.needs_vm:  # only host tasks: no hypervisor to check or start
        log("every task runs on the host: no VM, no hypervisor, no broker")
        _run(reactor, runtime, cpu, build_wrapper(reactor, runtime, slot_dir, job, None), None)
        return
    if not _host_ready(runtime, job, slot_dir, candidate_drivers(job)):
        return
    try:
        driver = await choose_driver(reactor, candidate_drivers(job), slot_dir,
                                     init.project_dir)
    except Exception as error:  # noqa: BLE001 - mapped onto an exit
        outcome = outcome_for_error(error)
        log(outcome.describe())
        if outcome.ending.name == "TEMPORARY":
            runtime.temporary_exit(outcome.delay, outcome.message)
        else:
            runtime.finish(outcome.status, outcome.message)
        return
    _run(reactor, runtime, cpu, build_wrapper(reactor, runtime, slot_dir, job, driver), driver)


def _run(reactor: Any, runtime: BoincRuntime, cpu: CpuSource, wrapper: Any, driver: Any) -> None:
    """Start *wrapper* with its CPU source, signal handlers and status page."""
    cpu.source = wrapper.episode_cpu
    _install_signal_handlers(reactor, wrapper)
    _attach_status_page(reactor, runtime, wrapper, driver)
    wrapper.run()


def _host_ready(runtime: BoincRuntime, job: Any, slot_dir: pathlib.Path,
                drivers: tuple[str, ...]) -> bool:
    """The pre-boot checks (``vmwrapper.diagnostics``); False after a temporary exit."""
    if not drivers:
        return True
    from vmwrapper.diagnostics.host import check_host  # noqa: PLC0415

    diagnosis = check_host(drivers, int(job.vm_memory_mb), slot_dir)
    return bool(diagnosis.act(runtime))


def _attach_status_page(reactor: Any, runtime: BoincRuntime, wrapper: Any, driver: Any) -> None:
    """The volunteer's status page (``web_graphics_url``, built on the first visit: see
    :mod:`vmwrapper.wrapper.lazystatus`) and the final summary lines."""
    from vmwrapper.wrapper.lazystatus import LazyStatusPage  # noqa: PLC0415

    page = LazyStatusPage(reactor, runtime, wrapper,
                          hypervisor=driver.name if driver else "none (host tasks)")
    try:
        page.start()
    except Exception as error:  # noqa: BLE001 - the job runs without a page
        log(f"status page unavailable: {type(error).__name__}: {error}")
    wrapper.on_exit.append(lambda outcome: page.write_summary(outcome.describe()))


async def choose_driver(reactor: Any, names: tuple[str, ...],
                        slot_dir: pathlib.Path | None = None, project_dir: str = "") -> Any:
    """The first driver in *names* whose ``probe_host`` succeeds.

    Each driver gets its options from :func:`vmwrapper.wrapper.driveroptions.driver_options`
    (for QEMU: the KVM probe files in the slot and the probe cache in *project_dir*).

    :raises HypervisorError: the last driver's error when none works (the
        message lists what each one said).
    """
    from vmwrapper.hypervisor import load_driver  # noqa: PLC0415
    from vmwrapper.hypervisor.errors import HypervisorError, HypervisorNotInstalled  # noqa: PLC0415
    from vmwrapper.wrapper.driveroptions import driver_options  # noqa: PLC0415

    problems: list[str] = []
    last: HypervisorError | None = None
    for name in names:
        try:
            options = driver_options(name, slot_dir, project_dir) if slot_dir else {}
            driver = load_driver(name, reactor, **options)
            info = await driver.probe_host()
        except HypervisorError as error:
            problems.append(f"{name}: {error}")
            last = error
            continue
        log(f"hypervisor: {info.hypervisor} {info.version} ({info.detail or 'ready'})")
        return driver
    if last is None:
        raise HypervisorNotInstalled("the job names no hypervisor")
    raise type(last)("no usable hypervisor; " + "; ".join(problems))


def build_wrapper(reactor: Any, runtime: BoincRuntime, slot_dir: pathlib.Path, job: Any,
                  driver: Any) -> Any:
    """The :class:`~vmwrapper.wrapper.machine.Wrapper` wired to the real pieces."""
    from vmwrapper.appliance.userdata import AgentConfig, write_config_disk  # noqa: PLC0415
    from vmwrapper.job.flags import vm_cpus  # noqa: PLC0415
    from vmwrapper.wrapper.guestlink import GuestLink  # noqa: PLC0415
    from vmwrapper.wrapper.machine import VMSettings, Wrapper  # noqa: PLC0415
    from vmwrapper.wrapper.slot import SlotLayout, vm_name_for  # noqa: PLC0415

    init = runtime.init_data
    layout = SlotLayout.at(slot_dir)
    vm = VMSettings(
        image=resolve_filename(layout.slot_dir, job.image).resolve(),
        memory_mb=int(job.vm_memory_mb),
        cpus=vm_cpus(job.flags, init.ncpus or 1.0),
    )
    heartbeat = float(os.environ.get("VMWRAPPER_GUEST_HEARTBEAT", "10"))

    def config_disk(path: pathlib.Path, settings: dict[str, Any]) -> None:
        write_config_disk(path, AgentConfig(**settings))

    wrapper = Wrapper(
        clock=reactor, runtime=runtime, driver=driver,
        channel=GuestLink(reactor, job.broker, heartbeat_interval=heartbeat),
        job=job, layout=layout, vm_name=vm_name_for(init.result_name, init.slot), vm=vm,
        write_config_disk=config_disk, exit=_exit)
    runtime.listener = wrapper
    return wrapper


def _install_signal_handlers(reactor: Any, wrapper: Any) -> None:
    """SIGTERM/SIGINT/SIGHUP: save the VM and exit, as on ``<quit/>``."""

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(wrapper.interrupt, _signal_outcome(signum))

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, handler)


def _signal_outcome(signum: int) -> Any:
    from vmwrapper.wrapper.outcome import Outcome  # noqa: PLC0415

    return Outcome.save(f"received signal {signal.Signals(signum).name}")

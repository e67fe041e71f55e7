"""What running a task on the host through vmwrapper costs, against plain ``subprocess``.

Two figures, each against a baseline measured in the same run (the machine is
shared, so only the ratios mean much):

* start-to-end latency of a trivial host task (``/bin/true``) through
  :class:`vmwrapper.wrapper.hosttask.HostTasks` (own process group via
  ``setsid``, Twisted process protocol, reaping) against ``subprocess.run`` of
  the same program;
* the accuracy of the CPU time it counts for a busy task (``awk`` loop)
  against the kernel's figure for the same child (``RUSAGE_CHILDREN`` growth),
  and the suspend -> stopped latency (SIGSTOP of the group until the kernel
  shows every process stopped).

Usage: .venv/bin/python bench/bench_hosttask.py [--runs 50]
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twisted.internet import task  # noqa: E402
from twisted.internet.process import reapAllProcesses  # noqa: E402
from twisted.internet.selectreactor import SelectReactor  # noqa: E402

from vmwrapper.job.model import JobDescription, Task  # noqa: E402
from vmwrapper.wrapper.hosttask import HostTasks  # noqa: E402

BUSY = "awk 'BEGIN { for (n = 0; n < 20000000; n++) s += n }'"


def spin(reactor: SelectReactor, deferred) -> None:
    while not deferred.called:
        reactor.iterate(0.001)
        reapAllProcesses()


def host_tasks(slot: pathlib.Path, reactor: SelectReactor, *tasks: Task) -> HostTasks:
    return HostTasks(spawn=reactor.spawnProcess, clock=task.Clock(), job=JobDescription(task=tasks),
                     slot_dir=slot, project_dir=str(slot), log=print)


def bench_latency(slot: pathlib.Path, runs: int) -> tuple[list[float], list[float]]:
    reactor = SelectReactor()
    host = host_tasks(slot, reactor, Task(application="/bin/true", where="host"))
    ours, plain = [], []
    for _ in range(runs):
        started = time.perf_counter()
        run = host.start(0, lambda *_: None)
        spin(reactor, run.ended)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run(["/bin/true"], check=True)
        plain.append(time.perf_counter() - started)
    return ours, plain


def bench_cpu(slot: pathlib.Path) -> tuple[float, float]:
    reactor = SelectReactor()
    host = host_tasks(slot, reactor, Task(application="/bin/sh", where="host",
                                          command_line=f'-c "{BUSY}"'))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = host.start(0, lambda *_: None)
    spin(reactor, run.ended)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    kernel = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return host.cpu_seconds(), kernel


def bench_suspend(slot: pathlib.Path, runs: int) -> list[float]:
    reactor = SelectReactor()
    host = host_tasks(slot, reactor, Task(application="/bin/sh", where="host",
                                          command_line='-c "sleep 60 & sleep 60 & wait"'))
    run = host.start(0, lambda *_: None)
    time.sleep(0.3)
    pids = [int(p) for p in pathlib.Path(f"/proc/{run.pid}/task/{run.pid}/children")
            .read_text().split()] + [run.pid]
    figures = []
    for _ in range(runs):
        started = time.perf_counter()
        host.suspend()
        while not all(_state(p) == "T" for p in pids):
            pass
        figures.append(time.perf_counter() - started)
        host.resume()
        while any(_state(p) == "T" for p in pids):
            pass
    ending = host.stop_all()
    spin(reactor, ending)
    return figures


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hosttask-") as directory:
        slot = pathlib.Path(directory)
        ours, plain = bench_latency(slot, args.runs)
        counted, kernel = bench_cpu(slot)
        suspends = bench_suspend(slot, min(args.runs, 20))
    ms = 1000.0
    print(f"start-to-end of /bin/true, {args.runs} runs (median, min..max):")
    print(f"  host task runner : {statistics.median(ours) * ms:7.2f} ms "
          f"({min(ours) * ms:.2f}..{max(ours) * ms:.2f})")
    print(f"  subprocess.run   : {statistics.median(plain) * ms:7.2f} ms "
          f"({min(plain) * ms:.2f}..{max(plain) * ms:.2f})")
    print(f"  ratio            : {statistics.median(ours) / statistics.median(plain):7.2f}x")
    print(f"CPU of a busy host task: counted {counted:.3f} s, kernel {kernel:.3f} s "
          f"(ratio {counted / kernel if kernel else float('nan'):.3f})")
    print(f"suspend -> whole group stopped, {len(suspends)} runs: median "
          f"{statistics.median(suspends) * ms:.3f} ms, max {max(suspends) * ms:.3f} ms")


if __name__ == "__main__":
    main()

"""Benchmark the VirtualBox driver against the fake VBoxManage.

VirtualBox cannot run here, so absolute figures say little about a real host
(a real VBoxManage call costs 50-500 ms); what carries over is how many
VBoxManage round trips each operation needs and the wrapper's idle overhead.
Everything is measured in this one run and printed as ratios to a baseline:

* baseline: one bare ``VBoxManage -q list vms`` call (process start + answer);
* pause, resume, checkpoint (pause + snapshot + resume + delete the older one),
  restore (poweroff + restorecurrent + start), each as ms and as "calls' worth"
  of the baseline;
* wrapper-side CPU while the guest idles, as % of one core: our driver (waits for
  the VM process's exit on a pidfd, no VBoxManage, no polling) against vboxwrapper's
  way (``showvminfo --machinereadable`` every 1 s), and the same loop with nothing
  watched (the floor): target <= 0.2 %.

Usage: .venv/bin/python bench/bench_virtualbox.py [--runs 10] [--idle-seconds 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, task  # noqa: E402

from tests.fakes.vboxmanage import FAKE_VBOXMANAGE, kill_fake_vms, write_qcow2  # noqa: E402
from vmwrapper.hypervisor.base import VMSpec  # noqa: E402
from vmwrapper.hypervisor.virtualbox import VirtualBoxDriver, vbox_vm_name  # noqa: E402


def cpu_seconds() -> float:
    """CPU of this process and every child it waited for (VBoxManage calls)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def timed(reactor, runs: int, operation) -> float:
    """Median milliseconds of ``operation()`` (a coroutine function) over ``runs``."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await operation()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def idle_cpu(reactor, seconds: float, poll=None) -> float:
    """% of one core this process (+ children) uses over ``seconds`` of idling."""
    before_cpu, before_wall = cpu_seconds(), time.perf_counter()
    deadline = reactor.seconds() + seconds
    while reactor.seconds() < deadline:
        if poll is not None:
            await poll()
        await task.deferLater(reactor, 1.0, lambda: None)
    return 100 * (cpu_seconds() - before_cpu) / (time.perf_counter() - before_wall)


async def main(reactor, args) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-vbox-"))
    home = root / "home"
    env = {**os.environ, "VBOX_USER_HOME": str(home)}
    driver = VirtualBoxDriver(reactor, vboxmanage=str(FAKE_VBOXMANAGE), vbox_user_home=home,
                              use_api=False)
    spec = VMSpec(name="bench", base_image=write_qcow2(root / "base.qcow2"),
                  vm_dir=root / "slot", memory_mb=512)
    try:
        baseline = await timed(reactor, args.runs, lambda: driver.runner.run("list", "vms"))
        await driver.create(spec)
        await driver.start(spec.name)
        # Pause and resume in pairs, so each measures a real state change.
        pairs = []
        for _ in range(args.runs):
            started = time.perf_counter()
            await driver.pause(spec.name)
            middle = time.perf_counter()
            await driver.resume(spec.name)
            pairs.append(((middle - started) * 1000, (time.perf_counter() - middle) * 1000))
        pause = statistics.median(p for p, _ in pairs)
        resume = statistics.median(r for _, r in pairs)
        checkpoint = await timed(reactor, args.runs, lambda: driver.save_checkpoint(spec.name))
        restore = await timed(reactor, max(3, args.runs // 3),
                              lambda: driver.restore_checkpoint(spec.name))
        snapshots = list((spec.vm_dir / vbox_vm_name(spec.name) / "Snapshots").glob("*"))
        ours = await idle_cpu(reactor, args.idle_seconds)
        vm = driver._vms[spec.name]
        how = "pidfd event" if vm.exit_watch is not None else f"/proc every {driver.watch_interval} s"
        driver._stop_watching(vm)  # the same idle loop with nothing watched: the floor
        floor = await idle_cpu(reactor, args.idle_seconds)
        driver._watch_exit(vm)

        def cli_poll():
            return driver.runner.run("showvminfo", vbox_vm_name(spec.name), "--machinereadable")

        theirs = await idle_cpu(reactor, args.idle_seconds, cli_poll)
        await driver.destroy(spec.name)
    finally:
        kill_fake_vms(root)
        subprocess.run(["rm", "-rf", str(root)], check=False, env=env)

    print(f"baseline: one VBoxManage call (fake)        {baseline:8.1f} ms")
    for label, value in (("pause", pause), ("resume", resume), ("checkpoint", checkpoint),
                         ("restore", restore)):
        print(f"{label:<11} median {value:8.1f} ms = {value / baseline:4.1f} x baseline")
    print(f"files in Snapshots/ after {args.runs} checkpoints + restores: {len(snapshots)} "
          "(one snapshot: its saved state and its differencing image)")
    print(f"idle wrapper CPU, our watcher ({how}): {ours:6.3f} % of a core "
          "(target <= 0.2 %)")
    print(f"  of which the benchmark loop itself:       {floor:6.3f} % of a core")
    print(f"idle wrapper CPU, showvminfo every 1 s:     {theirs:6.3f} % of a core "
          f"(ratio ours/theirs {ours / theirs if theirs else float('nan'):.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    arguments = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))

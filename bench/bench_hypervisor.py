"""Benchmark the QEMU driver on the real appliance (TCG here; KVM on production hosts).

Prints, each next to a baseline measured in the same run (the machine is
shared and noisy, so ratios matter more than absolute numbers):

* boot to agent hello: ``start`` -> the real guest agent's hello through the
  embedded broker; baseline: QEMU process start -> QMP ready (no guest);
* pause/resume latency (target <= 100 ms); baseline: a QMP ``query-status``
  round trip on the same socket;
* checkpoint (``savevm``) and restore (new QEMU + ``loadvm``) of a 512 MiB
  guest (target <= 2 s each); baseline: a cold ``start`` to RUNNING;
* wrapper-side CPU while the guest idles, with a 1 s status poll (state +
  cpu_time) as the wrapper does (target <= 0.2 % of a core); baseline: the same
  process and poll with no VM. The process also hosts the embedded broker and
  host controller that hear the agent's heartbeats.

Usage: ``.venv/bin/python bench/bench_hypervisor.py [--boots N] [--idle SECONDS]``
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmwrapper.appliance.builder import BuildOptions, build, default_output  # noqa: E402
from vmwrapper.appliance.userdata import AgentConfig, write_config_disk  # noqa: E402
from vmwrapper.hypervisor.base import VMSpec  # noqa: E402
from vmwrapper.hypervisor.qemu import QemuDriver  # noqa: E402


def _ms(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
    return f"median {statistics.median(values) * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms"


def _cpu() -> float:
    """This process's CPU seconds, all threads, microsecond resolution."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Bench:
    def __init__(self, reactor, args) -> None:
        from vmcontroller.broker.credentials import generate_credentials
        from vmcontroller.broker.server import EmbeddedBroker

        self.reactor = reactor
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="bench-hv-"))
        self.appliance = build(BuildOptions(output=default_output(), formats=("qcow2",)),
                               log=lambda text: print(f"  appliance: {text}", flush=True))
        self.ids = [f"bench{n}" for n in range(20)]
        self.credentials = generate_credentials(self.ids)
        self.broker = EmbeddedBroker(credentials=self.credentials)
        _, self.port = self.broker.start()
        self.driver = QemuDriver(reactor, accel="tcg")
        self.n = 0

    async def connect_host(self) -> None:
        from vmcontroller.host.controller import HostController
        from vmcontroller.stomp.client import StompConfig, StompSession

        login = self.credentials.host_login()
        session = StompSession(TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port),
                               StompConfig(login.login, login.passcode, heartbeat=10.0),
                               clock=self.reactor)
        self.host = HostController(session, self.reactor)
        self.host.start()
        await self.host.when_connected(5)

    async def new_vm(self, memory_mb: int = 512, heartbeat: float = 10.0) -> VMSpec:
        vm_id = self.ids[self.n]
        self.n += 1
        login = self.credentials.vm_login(vm_id)
        iso = write_config_disk(self.work / f"{vm_id}.iso", AgentConfig(
            "10.0.2.2", self.port, login.login, login.passcode, vm_id,
            heartbeat_interval=heartbeat))
        spec = VMSpec(name=vm_id, base_image=self.appliance.qcow2, vm_dir=self.work / vm_id,
                      memory_mb=memory_mb, config_disk=iso)
        await self.driver.create(spec)
        return spec

    async def boot(self, spec: VMSpec) -> float:
        started = time.monotonic()
        await self.driver.start(spec.name)
        await self.host.wait_for_hello(spec.name, 180)
        return time.monotonic() - started

    async def bare_qemu_start(self) -> float:
        """Baseline: QEMU start to QMP ready with -S (firmware never runs)."""
        spec = await self.new_vm()
        vm = self.driver._vms[spec.name]
        started = time.monotonic()
        await self.driver._launch(vm)
        took = time.monotonic() - started
        await self.driver.destroy(spec.name)
        return took

    async def run(self) -> None:
        await self.connect_host()
        print(f"QEMU driver benchmark, TCG, appliance {self.appliance.key}", flush=True)

        bare = [await self.bare_qemu_start() for _ in range(self.args.boots)]
        boots = []
        for _ in range(self.args.boots):
            spec = await self.new_vm()
            boots.append(await self.boot(spec))
            await self.driver.destroy(spec.name)
        print(f"boot to agent hello      {_ms(boots)}   (n={len(boots)})")
        print(f"  baseline QEMU->QMP     {_ms(bare)}   ratio "
              f"{statistics.median(boots) / statistics.median(bare):.1f}x")

        spec = await self.new_vm(memory_mb=512)
        await self.boot(spec)
        vm = self.driver._vms[spec.name]
        rtt, pauses, resumes = [], [], []
        for _ in range(20):
            t0 = time.monotonic()
            await vm.qmp.execute("query-status")
            rtt.append(time.monotonic() - t0)
            t0 = time.monotonic()
            await self.driver.pause(spec.name)
            pauses.append(time.monotonic() - t0)
            t0 = time.monotonic()
            await self.driver.resume(spec.name)
            resumes.append(time.monotonic() - t0)
        print(f"pause                    {_ms(pauses)}   target <= 100 ms")
        print(f"resume                   {_ms(resumes)}   target <= 100 ms")
        print(f"  baseline QMP roundtrip {_ms(rtt)}")

        saves, restores, colds, sizes = [], [], [], []
        for _ in range(3):
            t0 = time.monotonic()
            checkpoint = await self.driver.save_checkpoint(spec.name)
            saves.append(time.monotonic() - t0)
            sizes.append(checkpoint.size_bytes)
            t0 = time.monotonic()
            await self.driver.restore_checkpoint(spec.name)
            restores.append(time.monotonic() - t0)
        for _ in range(3):
            await self.driver.power_off(spec.name)
            t0 = time.monotonic()
            await self.driver.start(spec.name)
            colds.append(time.monotonic() - t0)
        print(f"checkpoint 512 MiB guest {_ms(saves)}   target <= 2 s "
              f"(overlay with checkpoint {max(sizes) / 2**20:.0f} MiB)")
        print(f"restore 512 MiB guest    {_ms(restores)}   target <= 2 s")
        print(f"  baseline cold start    {_ms(colds)}   restore ratio "
              f"{statistics.median(restores) / statistics.median(colds):.1f}x")
        await self.driver.restore_checkpoint(spec.name)
        await self.host.wait_for_hello(spec.name, 120)  # agent reconnected, guest idle again

        async def idle_cpu(with_vm: bool) -> float:
            def poll() -> defer.Deferred:
                if not with_vm:
                    return defer.succeed(None)
                return defer.gatherResults([self.driver.state(spec.name),
                                            self.driver.cpu_time(spec.name)])

            loop = task.LoopingCall(poll)
            loop.clock = self.reactor
            loop.start(1.0)
            c0, t0 = _cpu(), time.monotonic()
            await task.deferLater(self.reactor, self.args.idle, lambda: None)
            used = (_cpu() - c0) / (time.monotonic() - t0)
            loop.stop()
            return used

        base = await idle_cpu(False)
        busy = await idle_cpu(True)
        guest_cpu = await self.driver.cpu_time(spec.name)
        print(f"wrapper CPU, guest idle  {busy * 100:6.3f} % of a core over {self.args.idle:.0f} s"
              f"   target <= 0.2 %")
        print(f"  baseline, no VM        {base * 100:6.3f} % of a core   "
              f"(driver's share {max(0.0, busy - base) * 100:.3f} %; QEMU itself used "
              f"{guest_cpu:.1f} s since restore)")
        await self.driver.destroy(spec.name)

    async def close(self) -> None:
        self.driver.kill_all()
        await self.host.stop()
        self.broker.stop()


async def main(reactor, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--idle", type=float, default=30.0)
    bench = Bench(reactor, parser.parse_args(argv))
    try:
        await bench.run()
    finally:
        await bench.close()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))

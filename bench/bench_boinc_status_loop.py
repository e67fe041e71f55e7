"""CPU cost of the BOINC runtime's status loop, in CPU seconds per wall hour.

The loop runs every second for the whole life of a task (days), so it must be
nearly free: target <= 1.8 CPU s per hour (0.05 % of one core).

What runs: a real :class:`~vmwrapper.boinc.runtime.BoincRuntime` on the real
reactor against a real ``boinc_mmap_file`` in a temporary slot, with a fake
client in a separate process that sends a heartbeat every second and reads
each status (as the BOINC client does). Measured in the same run:

* baselines: the same reactor idling for the same wall time (what any Twisted
  app costs), and the same reactor running an empty ``LoopingCall`` every
  second (the floor for any once-a-second timer); the loop's own code costs
  ``loop - empty loop``;
* per tick: one loop pass timed over many passes with the client's side
  emptied in between, times 3600 (less noisy on a shared machine).

Usage: ``bench/bench_boinc_status_loop.py [--seconds 60]`` (``--seconds 10`` for a
quick look). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import textwrap
import time

from twisted.internet import reactor, task

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmwrapper.boinc.runtime import BoincRuntime  # noqa: E402
from vmwrapper.boinc.shmem import MMAP_FILE_NAME, Channel, SharedMemory  # noqa: E402

TARGET = 1.8  # CPU seconds per wall hour

#: The fake client: heartbeat every second, read statuses, print how many it got.
CLIENT = textwrap.dedent(
    """
    import sys, time
    from vmwrapper.boinc.shmem import Channel, SharedMemory
    shmem = SharedMemory.open(sys.argv[1])
    end = time.monotonic() + float(sys.argv[2])
    statuses = 0
    while time.monotonic() < end:
        shmem.force_send(Channel.HEARTBEAT,
            "<heartbeat/><wss>1.411482e+07</wss><max_wss>2.274885e+10</max_wss>")
        if shmem.receive(Channel.APP_STATUS) is not None:
            statuses += 1
        time.sleep(1.0)
    print(statuses)
    """
)


def cpu_seconds() -> float:
    """CPU time of this process only (the fake client is not counted)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_slot(directory: pathlib.Path, client_pid: int) -> None:
    (directory / "init_data.xml").write_text(
        "<app_init_data>\n<shm_key>-1</shm_key>\n"
        f"<client_pid>{client_pid}</client_pid>\n<result_name>bench_0</result_name>\n"
        "<checkpoint_period>60.000000</checkpoint_period>\n</app_init_data>\n"
    )
    SharedMemory.create(directory / MMAP_FILE_NAME).close()


def run_reactor_for(seconds: float) -> float:
    """Run the reactor *seconds* of wall time; return the CPU seconds it used.

    Each ``iterate`` sleeps until the next timed call (the reactor's own
    ``timeout()``, as ``reactor.run()`` does), so the harness adds no wake-ups.
    """
    done = task.deferLater(reactor, seconds, lambda: None)
    deadline = time.monotonic() + seconds
    start = cpu_seconds()
    while not done.called:
        remaining = max(deadline - time.monotonic(), 0.0)
        next_call = reactor.timeout()  # type: ignore[attr-defined]
        reactor.iterate(remaining if next_call is None else min(next_call, remaining))  # type: ignore[attr-defined]
    return cpu_seconds() - start


def per_tick_seconds(runtime: BoincRuntime, client: SharedMemory, passes: int) -> float:
    """Mean CPU seconds of one loop pass, the client's side emptied between passes."""
    heartbeat = "<heartbeat/><wss>1.411482e+07</wss><max_wss>2.274885e+10</max_wss>"
    start = time.process_time()
    for _ in range(passes):
        client.force_send(Channel.HEARTBEAT, heartbeat)
        runtime._tick()
        client.receive(Channel.APP_STATUS)
    return (time.process_time() - start) / passes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="wall time per phase")
    args = parser.parse_args()
    seconds = args.seconds

    with tempfile.TemporaryDirectory(prefix="bench_boinc_") as tmp:
        slot = pathlib.Path(tmp)
        make_slot(slot, os.getpid())
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        fake_client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(slot / MMAP_FILE_NAME), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            runtime = BoincRuntime(slot, clock=reactor, exit=lambda status: None)
            runtime.init()
            runtime.start()
            loop_cpu = run_reactor_for(seconds)
            runtime.stop()
            statuses = int(fake_client.communicate(timeout=seconds + 30)[0].strip() or 0)
        finally:
            if fake_client.poll() is None:
                fake_client.kill()
                fake_client.wait()

        baseline_cpu = run_reactor_for(seconds)
        empty = task.LoopingCall(lambda: None)
        empty.clock = reactor
        empty.start(1.0)
        empty_cpu = run_reactor_for(seconds)
        empty.stop()

        client = SharedMemory.open(slot / MMAP_FILE_NAME)
        tick = per_tick_seconds(runtime, client, 20000)
        client.close()

    per_hour = 3600.0 / seconds
    loop_h, base_h, empty_h = loop_cpu * per_hour, baseline_cpu * per_hour, empty_cpu * per_hour
    net_h = max(loop_h - empty_h, 0.0)
    tick_h = tick * 3600.0
    print(f"wall time per phase:               {seconds:.0f} s")
    print(f"statuses the fake client received:  {statuses} (about one per second expected)")
    print(f"status loop on the reactor:         {loop_h:.3f} CPU s per wall hour")
    print(f"baseline, idle reactor:             {base_h:.3f} CPU s per wall hour")
    print(f"baseline, empty 1-s LoopingCall:    {empty_h:.3f} CPU s per wall hour")
    print(f"loop minus empty LoopingCall:       {net_h:.3f} CPU s per wall hour (our code)")
    print(f"one loop pass:                      {tick * 1e6:.1f} us -> {tick_h:.3f} CPU s/h")
    print(f"target:                             {TARGET:.3f} CPU s per wall hour")
    print(f"ratio loop/target (whole process):  {loop_h / TARGET:.3f}")
    print(f"ratio loop/empty LoopingCall:       {loop_h / empty_h:.2f}" if empty_h else "")
    print(f"ratio per-pass cost/target:         {tick_h / TARGET:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""vmwrapper's cost to the volunteer while a guest job runs, and its suspend latency.

The bench plays the BOINC client itself (a slot with ``init_data.xml`` and a
real ``boinc_mmap_file``; a heartbeat every second; control messages written
into the shared memory), runs the real wrapper process on the real QEMU
appliance with a guest task that just waits, and measures:

* the wrapper process's own CPU seconds (``/proc/PID/stat`` utime+stime; QEMU
  is not included) over the measuring window, per wall hour and as % of one
  core (target <= 0.2 %), next to a baseline measured in the same window: the
  BOINC runtime's status loop alone, heartbeats and all (the least any Python
  BOINC app costs);
* the wrapper's resident memory (target <= 40 MB) next to the baseline's;
* suspend -> VM paused: ``<suspend/>`` is written, the wrapper reads it (the
  bench sees the channel flag cleared) and logs when QMP confirmed the pause;
  the figure is the wrapper's time from reading the message to the pause
  being confirmed (target <= 100 ms), plus the bench's own view from writing
  the message (which includes the wrapper's up-to-1-s polling of the channel).

Usage: .venv/bin/python bench/bench_wrapper.py [--seconds 120] [--suspends 5]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmwrapper.appliance.builder import BuildOptions, build, default_output  # noqa: E402
from vmwrapper.boinc.shmem import MMAP_FILE_NAME, Channel, SharedMemory  # noqa: E402

INIT_DATA = ROOT / "tests" / "data" / "boinc" / "init_data.xml"
JOB = """<vm_job>
  <image>vm_image.qcow2</image>
  <hypervisor>qemu</hypervisor>
  <trickle_period>0</trickle_period>
  <boot_timeout>300</boot_timeout>
  <task><application>/bin/sh</application>
    <command_line>-c 'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); sleep 1; done'</command_line>
  </task>
</vm_job>
"""
#: The baseline: the BOINC runtime's status loop alone in a slot of its own (what any
#: Python BOINC app costs), so the ratio shows what running a VM adds.
BASELINE = ("import sys\nsys.path.insert(0, {root!r})\nfrom twisted.internet import reactor\n"
            "from vmwrapper.boinc.runtime import BoincRuntime\n"
            "runtime = BoincRuntime({slot!r}, reactor)\nruntime.init()\nruntime.start()\n"
            "reactor.run()\n")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def private_mb(pid: int) -> tuple[float, float]:
    """(PSS, private dirty) in MB: memory that is this process's own, not shared libraries."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                values[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return values.get("Pss", 0.0), values.get("Private_Dirty", 0.0)


def make_slot(directory: pathlib.Path, image: pathlib.Path) -> None:
    text = INIT_DATA.read_text()
    for tag, value in (("client_pid", os.getpid()), ("checkpoint_period", "3600.000000"),
                       ("result_name", "bench_wrapper_0"), ("wu_cpu_time", "0.000000")):
        text = re.sub(rf"<{tag}>[^<]*</{tag}>", f"<{tag}>{value}</{tag}>", text)
    directory.mkdir()
    (directory / "init_data.xml").write_text(text)
    SharedMemory.create(directory / MMAP_FILE_NAME).close()
    (directory / "job.xml").write_text(JOB)
    (directory / "vm_image.qcow2").symlink_to(image)


class PlayedClient:
    """Heartbeats every second into the slot's shared memory, and control messages."""

    def __init__(self, slot: pathlib.Path) -> None:
        self.shm = SharedMemory.open(slot / MMAP_FILE_NAME)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(1.0):
            self.shm.send(Channel.HEARTBEAT, "<heartbeat/><wss>0</wss><max_wss>0</max_wss>")
            self.shm.receive(Channel.APP_STATUS)

    def control(self, message: str, timeout: float = 10.0) -> tuple[float, float]:
        """Write *message*; returns (time written, time the wrapper read it)."""
        deadline = time.monotonic() + timeout
        while not self.shm.send(Channel.PROCESS_CONTROL_REQUEST, message):
            if time.monotonic() > deadline:
                raise TimeoutError(f"control channel still full; {message} not sent")
            time.sleep(0.01)
        written = time.monotonic()
        while self.shm.has_message(Channel.PROCESS_CONTROL_REQUEST):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the wrapper did not read {message}")
            time.sleep(0.001)
        return written, time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def wait_log(path: pathlib.Path, pattern: str, timeout: float, count: int = 1) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if len(re.findall(pattern, text)) >= count:
            return text
        time.sleep(0.005)
    raise TimeoutError(f"no {pattern!r} in {path} within {timeout} s")


def kill_qemus_under(directory: pathlib.Path) -> None:
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(directory) + "/" in cmdline and "qemu" in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="measuring window")
    parser.add_argument("--suspends", type=int, default=5, help="suspend/resume rounds")
    args = parser.parse_args()

    image = build(BuildOptions(output=default_output(), formats=("qcow2",))).qcow2
    with tempfile.TemporaryDirectory(prefix="bench-wrapper-") as tmp:
        slot = pathlib.Path(tmp)
        make_slot(slot / "wrapper", image)
        make_slot(slot / "baseline", image)
        client = PlayedClient(slot / "wrapper")
        baseline_client = PlayedClient(slot / "baseline")
        stderr_path = slot / "wrapper" / "stderr.txt"
        with open(stderr_path, "ab") as stderr:
            wrapper = subprocess.Popen([sys.executable, "-m", "vmwrapper.cli"], cwd=slot / "wrapper",
                                       stdout=subprocess.DEVNULL, stderr=stderr,
                                       env={**os.environ, "PYTHONPATH": str(ROOT)})
            baseline = None
        try:
            wait_log(stderr_path, r"task 1 started in the guest", 300)
            time.sleep(5)  # let the start-up settle
            baseline = subprocess.Popen(
                [sys.executable, "-c", BASELINE.format(root=str(ROOT), slot=str(slot / "baseline"))])
            time.sleep(2)
            start = time.monotonic()
            cpu0, base0 = cpu_seconds(wrapper.pid), cpu_seconds(baseline.pid)
            time.sleep(args.seconds)
            wall = time.monotonic() - start
            cpu = cpu_seconds(wrapper.pid) - cpu0
            base = cpu_seconds(baseline.pid) - base0
            rss, base_rss = rss_mb(wrapper.pid), rss_mb(baseline.pid)
            pss, private = private_mb(wrapper.pid)

            inside, outside = [], []
            for round_ in range(1, args.suspends + 1):
                written, read = client.control("<suspend/>")
                text = wait_log(stderr_path, r"VM paused [\d.]+ ms", 10, count=round_)
                seen = time.monotonic()
                inside.append(float(re.findall(r"VM paused ([\d.]+) ms", text)[-1]))
                outside.append((seen - written) * 1000)
                time.sleep(0.5)
                client.control("<resume/>")
                wait_log(stderr_path, r"VM running again", 10, count=round_)
                time.sleep(0.5)

            per_hour = cpu / wall * 3600
            print(f"measured over {wall:.0f} s of a running guest job (wrapper PID {wrapper.pid})")
            print(f"wrapper CPU: {per_hour:.2f} s per wall hour = {100 * cpu / wall:.3f} % of one "
                  f"core (target <= 0.2 %); BOINC status loop alone {base / wall * 3600:.2f} s/h; "
                  f"ratio {cpu / base if base else float('inf'):.1f}x")
            print(f"wrapper RSS: {rss:.1f} MB (target <= 40 MB); baseline {base_rss:.1f} MB; "
                  f"ratio {rss / base_rss:.2f}x; PSS {pss:.1f} MB, private {private:.1f} MB "
                  "(the rest is shared library pages)")
            print(f"suspend -> VM paused after the wrapper read <suspend/>: median "
                  f"{statistics.median(inside):.1f} ms, max {max(inside):.1f} ms over "
                  f"{len(inside)} rounds (target <= 100 ms)")
            print(f"  seen from the played client, from writing <suspend/> (includes the "
                  f"wrapper's 1-s channel poll): median {statistics.median(outside):.0f} ms, "
                  f"max {max(outside):.0f} ms")
        finally:
            try:
                client.control("<abort/>")
                wrapper.wait(60)
            except (subprocess.TimeoutExpired, TimeoutError):
                wrapper.kill()
            if baseline is not None:
                baseline.kill()
                baseline.wait()
            client.stop()
            baseline_client.stop()
            kill_qemus_under(slot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

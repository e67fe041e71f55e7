#!/usr/bin/env python3
"""``make demo``'s wall time against the issue's target (<= 5 minutes, first-time build included).

Runs ``python -m vmwrapper.demo`` twice in the same run: cold (empty appliance
and executable caches, as on a fresh machine; the debootstrap mirror is still
the network's) and warm (both cached). Prints each step's time from the demo's
progress lines, the totals, and cold / target and cold / warm ratios.
Needs root, QEMU and the BOINC client (scripts/bootstrap.sh).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET_S = 300.0
_STEP = re.compile(r"^demo \[(\d+)/\d+ (\d+):(\d\d)\] (.*?)(?: \(previous step [0-9:]+\))?$")


def run(label: str, env: dict[str, str], work: pathlib.Path) -> tuple[float, list[tuple[str, int]]]:
    """One demo run: (wall seconds, [(step text, seconds at its start)])."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vmwrapper.demo", "--work-dir", str(work)],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{label} demo failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    steps = []
    for line in done.stderr.splitlines():
        match = _STEP.match(line)
        if match:
            steps.append((match.group(4), int(match.group(2)) * 60 + int(match.group(3))))
    return wall, steps


def show(label: str, wall: float, steps: list[tuple[str, int]]) -> None:
    print(f"{label}: {wall:.0f} s")
    ends = [at for _, at in steps[1:]] + [round(wall)]
    for (text, at), end in zip(steps, ends, strict=True):
        print(f"  {end - at:4d} s  {text.split(':')[0]}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-demo-", dir="/var/tmp") as temp:
        base = pathlib.Path(temp)
        env = dict(os.environ, BOINCVM_APPLIANCE_CACHE=str(base / "appliance"),
                   VMWRAPPER_EXE_CACHE=str(base / "exe"))
        cold, cold_steps = run("cold", env, base / "work")
        warm, warm_steps = run("warm", env, base / "work")
    show("cold (empty caches)", cold, cold_steps)
    show("warm (cached appliance and executable)", warm, warm_steps)
    print(f"cold / target ({TARGET_S:.0f} s): {cold / TARGET_S:.2f}   "
          f"cold / warm: {cold / warm:.2f}")
    return 0 if cold <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Figures of the standalone executable against the issue's targets.

- size of the one-file executable (target <= 30 MB);
- start to first heartbeat: exec in a fake slot (init_data.xml + boinc_mmap_file)
  until the first app_status message appears in the mapped file (target <= 0.5 s);
- ``--version`` wall time.

Baseline in the same run: ``python -m vmwrapper`` from the virtualenv (no
self-extraction), so the ratio shows what the one-file packaging costs on
this (shared, noisy) machine. Medians of N runs, interleaved.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from vmwrapper.deploy.executable import build_executable  # noqa: E402
from vmwrapper.testing.fake_slot import time_to_first_status  # noqa: E402

SIZE_TARGET_MB = 30.0
HEARTBEAT_TARGET_S = 0.5


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    exe = build_executable(log=lambda text: print(text, file=sys.stderr))
    python = [sys.executable, "-m", "vmwrapper"]
    size_mb = exe.stat().st_size / 1e6
    first = {"exe": [], "python": []}
    version = {"exe": [], "python": []}
    with tempfile.TemporaryDirectory(prefix="bench-exe-") as tmp:
        for run in range(args.runs):
            for name, command in (("exe", [str(exe)]), ("python", python)):
                seconds, _ = time_to_first_status(command, pathlib.Path(tmp) / f"{name}{run}")
                first[name].append(seconds)
                version[name].append(wall([*command, "--version"]))
    hb_exe, hb_py = statistics.median(first["exe"]), statistics.median(first["python"])
    v_exe, v_py = statistics.median(version["exe"]), statistics.median(version["python"])
    print(f"executable: {exe}")
    print(f"size                     {size_mb:6.1f} MB    target <= {SIZE_TARGET_MB:g} MB  "
          f"{'OK' if size_mb <= SIZE_TARGET_MB else 'OVER'}")
    print(f"start -> first heartbeat {hb_exe:6.3f} s     target <= {HEARTBEAT_TARGET_S:g} s   "
          f"{'OK' if hb_exe <= HEARTBEAT_TARGET_S else 'OVER'}   "
          f"(python -m vmwrapper {hb_py:.3f} s, ratio {hb_exe / hb_py:.2f}x; "
          f"min/max {min(first['exe']):.3f}/{max(first['exe']):.3f} s)")
    print(f"--version wall time      {v_exe:6.3f} s     "
          f"(python -m vmwrapper {v_py:.3f} s, ratio {v_exe / v_py:.2f}x)")
    print(f"medians of {args.runs} interleaved runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The process a fake VirtualBox VM runs as (stands in for ``VBoxHeadless``).

``fake_vboxmanage.py startvm`` launches this script; it detaches itself (double
fork, new session) so that, like the real ``VBoxHeadless``, it outlives the
``VBoxManage`` call that started it, then prints its pid on stdout.

What it does while it lives, so that tests observe real effects:

* it is a real process: ``pause`` is SIGSTOP, ``resume`` SIGCONT, power-off
  SIGTERM, a crash SIGKILL; its CPU time and memory are in ``/proc``;
* it burns CPU while it "boots" (0.05 s) and a little every tick (about 2 % of a
  core) so CPU time grows;
* it keeps a "guest memory" file (``fake-vm-ram.json`` in the VM folder) with a
  tick counter and the guest's monotonic clock, rewritten every tick; the
  counter only advances while the process runs, so it stops while paused and a
  snapshot/saved state (a copy of this file) brings it back to an older value;
* it holds the listening sockets of the VM's NAT port forwards (passed in by
  ``startvm``), so a forwarded host port is really taken while the VM runs;
* it writes a few lines to the serial console file, when the VM has one;
* on SIGUSR1 (the ACPI power button) the "guest" shuts down cleanly: it marks
  ``clean_shutdown`` in its memory file and exits 0.

It exits by itself when its VM folder disappears or after ``--max-lifetime``
seconds, so a test that dies half-way cannot leave it behind for long.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

TICK = 0.1
BUSY = 0.002
#: CPU seconds a "boot" takes, as a real guest burns CPU while it starts. Also makes
#: the process's CPU time visible in /proc, which samples at clock ticks and can
#: miss 2 ms bursts entirely.
BOOT_CPU = 0.05


def _write_ram(path: str, ram: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(ram, handle)
    os.replace(tmp, path)


def _log(log_path: str, text: str) -> None:
    try:
        with open(log_path, "a") as handle:
            handle.write(f"{time.strftime('%H:%M:%S')}.000000 {text}\n")
    except OSError:
        pass


def run(args: argparse.Namespace) -> int:
    ram_path = os.path.join(args.vm_folder, "fake-vm-ram.json")
    ram = {"ticks": args.ticks, "guest_clock": args.guest_clock, "clean_shutdown": False,
           "pid": os.getpid()}
    state = {"shutdown": False}

    def on_power_button(signum, frame):  # noqa: ARG001 - signal handler signature
        state["shutdown"] = True

    signal.signal(signal.SIGUSR1, on_power_button)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    boot_end = time.process_time() + BOOT_CPU
    while time.process_time() < boot_end:
        pass
    _log(args.log, f"Guest Log: fake guest running (ticks={ram['ticks']})")
    if args.serial:
        with open(args.serial, "a") as serial:
            serial.write(f"fake guest: booted, counter at {ram['ticks']}\n")
    started = time.monotonic()
    while True:
        if not os.path.isdir(args.vm_folder) or time.monotonic() - started > args.max_lifetime:
            return 0
        if state["shutdown"]:
            ram["clean_shutdown"] = True
            _write_ram(ram_path, ram)
            _log(args.log, "Guest Log: ACPI power button: guest shut down")
            if args.serial:
                with open(args.serial, "a") as serial:
                    serial.write("fake guest: power button pressed, shutting down\n")
            return 0
        spin_until = time.perf_counter() + BUSY
        while time.perf_counter() < spin_until:
            pass
        ram["ticks"] += 1
        ram["guest_clock"] = round(ram["guest_clock"] + TICK, 3)
        _write_ram(ram_path, ram)
        time.sleep(TICK)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vm-folder", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--ticks", type=int, default=0)
    parser.add_argument("--guest-clock", type=float, default=0.0)
    parser.add_argument("--max-lifetime", type=float, default=900.0)
    parser.add_argument("--serial", help="file the guest's serial console goes to")
    args = parser.parse_args()
    read_end, write_end = os.pipe()
    if os.fork():
        # Intermediate parent: wait for the grandchild's pid and hand it to startvm.
        os.close(write_end)
        pid = os.read(read_end, 32).decode().strip()
        sys.stdout.write(pid + "\n")
        sys.stdout.flush()
        os._exit(0)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.write(write_end, f"{os.getpid()}\n".encode())
    os.close(write_end)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

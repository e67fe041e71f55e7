"""A fake ``VBoxManage`` (executable ``VBoxManage`` + ``fake_vboxmanage.py``) with real on-disk state.

Also the helpers tests use to find and kill the fake's VM processes, so that a
failing test never leaves one behind.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

#: Directory holding the executable; put it first on PATH or pass it to the driver.
FAKE_VBOXMANAGE_DIR = Path(__file__).resolve().parent
#: The executable itself.
FAKE_VBOXMANAGE = FAKE_VBOXMANAGE_DIR / "VBoxManage"


def fake_vm_pids(root: Path) -> list[int]:
    """Live (not zombie) fake VM processes whose VM folder is below ``root``."""
    marker = f"--vm-folder {Path(root)}/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError, UnicodeDecodeError):
            continue
        if "fake_vm_process.py" in cmdline and marker in cmdline and state not in ("Z", "X"):
            found.append(int(entry))
    return found


def kill_fake_vms(root: Path) -> list[int]:
    """SIGKILL every fake VM process below ``root``; returns their pids."""
    pids = fake_vm_pids(root)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids

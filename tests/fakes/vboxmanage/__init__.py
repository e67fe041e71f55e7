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


def write_qcow2(path: Path, virtual_size: int = 1 << 30) -> Path:
    """Write an empty but structurally valid qcow2 image (version 3, 64 KiB clusters:
    header, refcount table, refcount block, L1 table; all data unallocated).

    Enough for the fake (and ``qemu-img``) to open it; cut short, it is corrupt.
    """
    cluster_bits = 16
    cluster = 1 << cluster_bits
    l1_size = -(-virtual_size // (cluster * (cluster // 8)))
    image = bytearray(4 * cluster)
    header = {0: b"QFI\xfb", 4: (3).to_bytes(4, "big"), 20: cluster_bits.to_bytes(4, "big"),
              24: virtual_size.to_bytes(8, "big"), 36: l1_size.to_bytes(4, "big"),
              40: (3 * cluster).to_bytes(8, "big"), 48: cluster.to_bytes(8, "big"),
              56: (1).to_bytes(4, "big"), 96: (4).to_bytes(4, "big"),  # refcount_order 4
              100: (104).to_bytes(4, "big")}  # header length
    for offset, value in header.items():
        image[offset:offset + len(value)] = value
    image[cluster:cluster + 8] = (2 * cluster).to_bytes(8, "big")  # refcount block
    for index in range(4):  # clusters 0-3 are in use once
        image[2 * cluster + 2 * index:2 * cluster + 2 * index + 2] = (1).to_bytes(2, "big")
    path.write_bytes(bytes(image))
    return path


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

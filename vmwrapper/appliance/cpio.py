"""Write a newc ("SVR4 with no CRC") cpio archive, the format the Linux kernel
unpacks as an initramfs. Written here because the build host has no ``cpio``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

_TRAILER = "TRAILER!!!"


def _header(name: bytes, mode: int, size: int, ino: int, nlink: int, mtime: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, len(name) + 1, 0)
    return b"070701" + b"".join(b"%08X" % value for value in fields)


def _pad(out: BinaryIO, written: int) -> None:
    out.write(b"\0" * (-written % 4))


def _entry(out: BinaryIO, name: str, mode: int, data: bytes, ino: int) -> None:
    encoded = name.encode()
    head = _header(encoded, mode, len(data), ino, 2 if stat.S_ISDIR(mode) else 1, 0)
    out.write(head + encoded + b"\0")
    _pad(out, len(head) + len(encoded) + 1)
    out.write(data)
    _pad(out, len(data))


def write_newc(root: Path, out: BinaryIO) -> None:
    """Archive every file, directory and symlink under ``root`` (paths relative to it).

    Owners are root, times are 0, so the archive depends only on the tree's contents.
    """
    ino = 1
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        if rel_dir != Path("."):
            _entry(out, str(rel_dir), stat.S_IFDIR | 0o755, b"", ino)
            ino += 1
        for name in sorted(filenames) + [d for d in dirnames if (here / d).is_symlink()]:
            path = here / name
            rel = str(rel_dir / name) if rel_dir != Path(".") else name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                _entry(out, rel, stat.S_IFLNK | 0o777, os.readlink(path).encode(), ino)
            else:
                _entry(out, rel, stat.S_IFREG | (info.st_mode & 0o7777), path.read_bytes(), ino)
            ino += 1
    _entry(out, _TRAILER, 0, b"", 0)

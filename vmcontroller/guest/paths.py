"""Keep every file the agent touches inside its work directory.

The host names files by paths relative to the agent's work directory.  A
path is refused (:class:`PathRefused`) when it

* is empty or contains a NUL byte,
* has a ``..`` component (even one that would stay inside: no cleverness),
* is absolute and does not lie under the work directory,
* reaches outside the work directory through a symlink, in any component
  including the last one.

Checking a path and then opening it by name would let a process in the
guest swap a symlink in between and escape.  So the path is never used by
name: :func:`resolve` walks it one component at a time from a descriptor of
the work directory, opening each directory with ``O_NOFOLLOW`` relative to
the previous one (``dir_fd``) and following a symlink only by reading it
and walking its target the same way (an absolute target must lie under the
work directory, a relative one may not climb above it).  The caller opens
the last component relative to the directory descriptor it gets back, again
with ``O_NOFOLLOW`` (:func:`open_confined`), so whatever is swapped in,
every descriptor handed out is one that was reached inside.  Only the
standard library is used (the appliance's Python 3.11); ``openat2`` with
``RESOLVE_BENEATH`` would do the same in one call but needs Linux 5.6 and
ctypes.
"""

# -*- test-case-name: tests.unit.vmcontroller.test_guest_paths -*-

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

__all__ = [
    "Confined",
    "PathRefused",
    "confine",
    "open_confined",
    "open_confined_dir",
    "open_in",
    "resolve",
]

#: As the kernel's limit on symlinks followed during one lookup.
_MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathRefused(ValueError):
    """A path names something outside the agent's work directory."""


@dataclass
class Confined:
    """A path resolved inside the work directory.

    :attr dir_fd: descriptor of the directory holding the last component
        (owned by the caller: close it, or use the object as a context manager).
    :attr name: the last component, to use relative to ``dir_fd``.
    :attr path: the absolute path, for messages and logs only.
    """

    dir_fd: int
    name: str
    path: str

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self) -> Confined:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def confine(work_dir: str, requested: str, create_parents: bool = False) -> str:
    """Return the absolute path ``requested`` names inside ``work_dir``.

    For checks and messages only: opening the returned path by name is open
    to a symlink swapped in afterwards; use :func:`open_confined` or
    :func:`resolve` to open.

    :param create_parents: create missing parent directories (for an upload).
    :raises PathRefused: with a message naming the path and the reason.
    """
    with resolve(work_dir, requested, create_parents) as confined:
        return confined.path


def resolve(work_dir: str, requested: str, create_parents: bool = False) -> Confined:
    """Walk ``requested`` from ``work_dir`` by descriptors; see the module docstring.

    A symlink in the last position is followed (confined); a missing last
    component is fine (an upload creates it).

    :raises PathRefused: the path leaves the work directory or names it.
    :raises OSError: a parent is missing (without ``create_parents``) or not
        a directory, or another system error.
    """
    parts = _check_syntax(requested)
    root = os.path.realpath(work_dir)
    if requested.startswith("/"):
        if not _inside(root, os.path.normpath(requested)):
            raise PathRefused(f"path {requested!r} refused: outside the work directory {root}")
        parts = os.path.relpath(os.path.normpath(requested), root).split("/")
    parts = [p for p in parts if p not in ("", ".")]
    if not parts:
        raise PathRefused(f"path {requested!r} refused: it names the work directory itself")
    walker = _Walker(root, requested)
    try:
        return walker.walk(parts, create_parents)
    except BaseException:
        walker.close()
        raise


def open_confined(work_dir: str, requested: str, flags: int = os.O_RDONLY) -> int:
    """Open the file ``requested`` names, guaranteed inside ``work_dir``.

    :raises PathRefused: it leaves the work directory (also when a symlink is
        swapped in while we look).
    :raises OSError: e.g. FileNotFoundError.
    """
    with resolve(work_dir, requested) as confined:
        return open_in(confined, flags)


def open_confined_dir(work_dir: str, requested: str) -> int:
    """A descriptor of the directory ``requested`` names inside ``work_dir``."""
    return open_confined(work_dir, requested, os.O_RDONLY | os.O_DIRECTORY)


def open_in(confined: Confined, flags: int, mode: int = 0o666) -> int:
    """Open ``confined.name`` relative to its directory, never through a symlink."""
    try:
        return os.open(
            confined.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=confined.dir_fd
        )
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise PathRefused(
                f"path {confined.path!r} refused: it became a symlink while it was opened"
            ) from None
        raise


def _check_syntax(requested: object) -> list[str]:
    if not isinstance(requested, str) or not requested or "\x00" in requested:
        raise PathRefused(f"invalid path {requested!r}: empty or contains NUL")
    parts = requested.replace("\\", "/").split("/")
    if ".." in parts:
        raise PathRefused(f"path {requested!r} refused: '..' components are not allowed")
    return parts


class _Walker:
    """The stack of directory descriptors from the work directory down."""

    def __init__(self, root: str, requested: str) -> None:
        self.root = root
        self.requested = requested
        self.names: list[str] = []  # below root, one per descriptor after the first
        self.fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
        self.links = 0

    def refuse(self, why: str) -> PathRefused:
        return PathRefused(f"path {self.requested!r} refused: {why}")

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())

    def walk(self, parts: list[str], create_parents: bool) -> Confined:
        pending = list(reversed(parts))  # a stack: the next component is last
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":  # only from a symlink's target
                if len(self.fds) == 1:
                    raise self.refuse(f"a symlink leads outside {self.root}")
                os.close(self.fds.pop())
                self.names.pop()
                continue
            last = not any(p not in ("", ".") for p in pending)
            target = self._readlink(name)
            if target is not None:
                self._follow(target, pending)
                continue
            if last:
                break
            self._descend(name, create_parents)
        else:  # the path ended on "." or ".." from a symlink: a directory
            if len(self.fds) == 1:
                raise self.refuse("it names the work directory itself")
            name = self.names.pop()
            os.close(self.fds.pop())
        dir_fd = self.fds.pop()
        self.close()
        path = os.path.join(self.root, *self.names, name)
        return Confined(dir_fd, name, path)

    def _readlink(self, name: str) -> str | None:
        """The target if ``name`` is a symlink now, else None (missing is None too)."""
        try:
            return os.readlink(name, dir_fd=self.fds[-1])
        except OSError as error:
            if error.errno in (errno.EINVAL, errno.ENOENT):
                return None
            raise

    def _follow(self, target: str, pending: list[str]) -> None:
        self.links += 1
        if self.links > _MAX_SYMLINKS:
            raise self.refuse("too many levels of symlinks")
        if target.startswith("/"):
            target = os.path.normpath(target)
            if not _inside(self.root, target):
                raise self.refuse(f"a symlink leads outside {self.root}")
            while len(self.fds) > 1:
                os.close(self.fds.pop())
            self.names.clear()
            target = os.path.relpath(target, self.root)
        pending.extend(reversed(target.split("/")))

    def _descend(self, name: str, create: bool) -> None:
        for _ in range(_MAX_SYMLINKS):
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=self.fds[-1])
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o777, dir_fd=self.fds[-1])  # never follows a symlink
                except FileExistsError:
                    pass  # made meanwhile: open it (or find it is a symlink) again
                continue
            except OSError as error:
                if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                try:
                    mode = os.stat(name, dir_fd=self.fds[-1], follow_symlinks=False).st_mode
                except FileNotFoundError:
                    continue  # gone meanwhile: look again
                if stat.S_ISLNK(mode):
                    raise self.refuse(
                        f"component {name!r} became a symlink while it was opened"
                    ) from None
                if stat.S_ISDIR(mode):
                    continue  # a directory again meanwhile: open it again
                raise
            self.fds.append(fd)
            self.names.append(name)
            return
        raise self.refuse(f"component {name!r} keeps changing")


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")

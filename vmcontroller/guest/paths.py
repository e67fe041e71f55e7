"""Keep every file the agent touches inside its work directory.

The host names files by paths relative to the agent's work directory.  A
path is refused (:class:`PathRefused`) when it

* is empty or contains a NUL byte,
* has a ``..`` component (even one that would stay inside: no cleverness),
* is absolute and does not lie under the work directory,
* reaches outside the work directory through a symlink, in any component
  including the last one.

The check resolves symlinks with :func:`os.path.realpath`; a symlink swapped
in between the check and the use could still escape (the agent runs as an
unprivileged user inside a throw-away VM, which bounds the damage).
"""

# -*- test-case-name: tests.unit.vmcontroller.test_guest_paths -*-

from __future__ import annotations

import os

__all__ = ["PathRefused", "confine"]


class PathRefused(ValueError):
    """A path names something outside the agent's work directory."""


def confine(work_dir: str, requested: str, create_parents: bool = False) -> str:
    """Return the absolute path ``requested`` names inside ``work_dir``.

    :param create_parents: create missing parent directories (for an
        upload), after checking that the deepest existing one is inside.
    :raises PathRefused: with a message naming the path and the reason.
    """
    if not isinstance(requested, str) or not requested or "\x00" in requested:
        raise PathRefused(f"invalid path {requested!r}: empty or contains NUL")
    parts = requested.replace("\\", "/").split("/")
    if ".." in parts:
        raise PathRefused(f"path {requested!r} refused: '..' components are not allowed")
    root = os.path.realpath(work_dir)
    candidate = os.path.normpath(os.path.join(root, requested))
    if not _inside(root, candidate):
        raise PathRefused(f"path {requested!r} refused: outside the work directory {root}")
    parent = os.path.dirname(candidate)
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not _inside(root, os.path.realpath(existing)):
        raise PathRefused(f"path {requested!r} refused: a symlink leads outside {root}")
    if create_parents and existing != parent:
        os.makedirs(parent, exist_ok=True)
    real = os.path.realpath(candidate)
    if not _inside(root, real):
        raise PathRefused(f"path {requested!r} refused: a symlink leads outside {root}")
    if real == root:
        raise PathRefused(f"path {requested!r} refused: it names the work directory itself")
    return candidate


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")

"""Trickle messages: small app <-> server messages while a task runs.

Up (``boinc_protocol.md`` section 6): the app writes ``trickle_up.xml`` in the
slot (``<variety>NAME</variety>`` line + body) and sends
``<have_new_trickle_up/>`` on the trickle_up channel; at its next poll the client
moves the file into the project directory under a name with one-second
resolution. There is one such file per slot, so a second trickle written before
the client took the first, or taken in the same second, *replaces* it.
:class:`TrickleUpQueue` therefore sends one at a time: the next one is written
only after the channel flag is 0 and the file is gone, and one poll later.

Down (section 7): the client writes ``trickle_down_<time>`` files in the slot
and sends ``<have_trickle_down/>``; the app reads and deletes them itself.
"""

from __future__ import annotations

import collections
import pathlib
import re

from twisted.internet import defer

from vmwrapper.boinc.errors import SlotError
from vmwrapper.boinc.shmem import Channel, SharedMemory

TRICKLE_UP_FILE = "trickle_up.xml"
HAVE_NEW_TRICKLE_UP = "<have_new_trickle_up/>\n"
HAVE_TRICKLE_DOWN = "<have_trickle_down/>"
#: Slot entries whose name contains this are trickle-down messages.
TRICKLE_DOWN_MARK = "trickle_down"

_VARIETY = re.compile(r"[A-Za-z0-9_.-]{1,255}")


def format_trickle_up(variety: str, body: str) -> str:
    """The content of ``trickle_up.xml`` for *variety* and *body*.

    :raises ValueError: a variety that is empty or not a plain name (it becomes
        an XML tag's text on the server and a file name part in the project).
    """
    if not isinstance(variety, str) or not _VARIETY.fullmatch(variety):
        raise ValueError(
            f"trickle variety {variety!r} must be 1-255 letters, digits, '_', '.' or '-'"
        )
    return f"<variety>{variety}</variety>\n{body}"


def take_trickle_down_files(
    slot_dir: str | pathlib.Path,
) -> tuple[list[tuple[pathlib.Path, str]], list[str]]:
    """Read and delete every trickle-down file in *slot_dir*, oldest name first.

    :returns: ``(taken, problems)``: ``(path, body)`` pairs of files read and
        deleted, and one message per file that could not be read or deleted
        (left in place; the next scan tries again).
    :raises SlotError: the slot directory cannot be listed.
    """
    slot = pathlib.Path(slot_dir)
    try:
        names = sorted(entry.name for entry in slot.iterdir() if TRICKLE_DOWN_MARK in entry.name)
    except OSError as exc:
        raise SlotError(f"cannot list the slot directory {slot}: {exc.strerror or exc}") from None
    taken: list[tuple[pathlib.Path, str]] = []
    problems: list[str] = []
    for name in names:
        path = slot / name
        try:
            if not path.is_file():
                continue
            body = path.read_bytes().decode("utf-8", errors="replace")
            path.unlink()
        except OSError as exc:
            problems.append(f"cannot take the trickle-down file {path}: {exc.strerror or exc}")
            continue
        taken.append((path, body))
    return taken, problems


class TrickleUpQueue:
    """Sends trickle-up messages one at a time, never overwriting one.

    :meth:`pump` is called once per status-loop tick; :meth:`submit` may be
    called any time and also pumps at once.
    """

    def __init__(self, slot_dir: str | pathlib.Path, shmem: SharedMemory) -> None:
        self._file = pathlib.Path(slot_dir) / TRICKLE_UP_FILE
        self._shmem = shmem
        self._waiting: collections.deque[tuple[str, defer.Deferred[None]]] = collections.deque()
        #: the trickle whose file is written: (deferred, notice sent yet?)
        self._in_flight: defer.Deferred[None] | None = None
        self._notified = False
        #: the client took a trickle during this tick: write the next one next tick
        self._just_taken = False

    @property
    def pending(self) -> int:
        """Trickles not yet taken by the client (queued or in flight)."""
        return len(self._waiting) + (self._in_flight is not None)

    def submit(self, variety: str, body: str) -> defer.Deferred[None]:
        """Queue a trickle; the Deferred fires once the client has moved the file."""
        content = format_trickle_up(variety, body)
        done: defer.Deferred[None] = defer.Deferred()
        self._waiting.append((content, done))
        self.pump(new_tick=False)
        return done

    def pump(self, new_tick: bool = True) -> None:
        """Advance: notice a taken trickle, then write and announce the next."""
        if new_tick:
            self._just_taken = False
        if self._in_flight is not None:
            if not self._notified:
                self._notified = self._shmem.send(Channel.TRICKLE_UP, HAVE_NEW_TRICKLE_UP)
                return
            if self._shmem.has_message(Channel.TRICKLE_UP) or self._file.exists():
                return
            done, self._in_flight, self._notified = self._in_flight, None, False
            self._just_taken = True
            done.callback(None)
        if not self._waiting or self._just_taken:
            return
        if self._file.exists():
            # Left by an earlier episode that died before the client took it:
            # have the client take it first rather than overwrite it.
            if not self._shmem.has_message(Channel.TRICKLE_UP):
                self._shmem.send(Channel.TRICKLE_UP, HAVE_NEW_TRICKLE_UP)
            return
        content, done = self._waiting.popleft()
        try:
            self._file.write_text(content, encoding="utf-8")
        except OSError as exc:
            self._waiting.appendleft((content, done))
            raise SlotError(f"cannot write {self._file}: {exc.strerror or exc}") from None
        self._in_flight = done
        self._notified = self._shmem.send(Channel.TRICKLE_UP, HAVE_NEW_TRICKLE_UP)

"""Logical file names: what ``in`` and ``out`` mean in a slot directory.

The client puts one entry per ``<open_name>`` in the slot: on Linux 7.20 a small
"link file" whose first line is ``<soft_link>../../projects/P/file</soft_link>``,
elsewhere possibly a real symlink or the file itself (``boinc_protocol.md``
section 8). Apps must open the resolved path, and write outputs there too.
"""

from __future__ import annotations

import pathlib
import re

from vmwrapper.boinc.errors import SlotError

#: The client reads at most this many characters of a link file's first line.
_LINK_LINE_MAX = 511

_SOFT_LINK = re.compile(r"<soft_link>(.*?)</soft_link>")


def resolve_filename(slot_dir: str | pathlib.Path, logical_name: str) -> pathlib.Path:
    """The path of the file the app knows as *logical_name*.

    A symlink is returned as is; a link file gives its target, relative to the
    slot directory (absolute targets stay absolute); anything else, including a
    name that does not exist yet (an output), is the name itself in the slot.

    :raises SlotError: an empty name, or an entry that exists but cannot be read.
    """
    if not logical_name or logical_name in (".", ".."):
        raise SlotError(f"logical file name {logical_name!r} is empty or a directory")
    slot = pathlib.Path(slot_dir)
    path = slot / logical_name
    if path.is_symlink() or not path.is_file():
        return path
    try:
        with path.open("rb") as link:
            head = link.read(_LINK_LINE_MAX)
    except OSError as exc:
        raise SlotError(f"cannot read the link file {path}: {exc.strerror or exc}") from None
    first_line = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    match = _SOFT_LINK.search(first_line)
    if match is None or not match.group(1).strip():
        return path
    return slot / match.group(1).strip()

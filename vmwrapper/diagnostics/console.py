"""Keep the guest's console log of a failed task, size-capped, where admins see it.

When a task fails, the slot (and the VM's console log in it) is deleted; the
only text that reaches the project is the last 64 KB of ``stderr.txt``. So
the tail of the console (kernel panic, missing disk, the agent's traceback)
is copied into ``stderr.txt``, capped at :data:`DEFAULT_CAP` bytes so that the
wrapper's own lines and the final summary written after it still fit, and
with secrets masked (the console may echo the agent's configuration).
"""

from __future__ import annotations

from collections.abc import Callable

from vmwrapper.boinc.log import log as default_log
from vmwrapper.status.secrets import SecretFilter

#: Bytes of console text kept per failure (a quarter of what the server receives).
DEFAULT_CAP = 16 * 1024
#: Longest console line kept (the rest of it is cut).
MAX_LINE = 400
PREFIX = "[console] "


def console_tail(text: str, cap: int = DEFAULT_CAP) -> tuple[list[str], int]:
    """The last whole lines of *text* fitting in *cap* bytes, and how many bytes were dropped.

    Control characters other than tab are removed (the console has escape
    sequences that would garble stderr.txt); empty lines are skipped.
    """
    if cap <= 0:
        raise ValueError(f"cap={cap}: keep at least one byte")
    kept: list[str] = []
    size = 0
    total = len(text.encode("utf-8", errors="replace"))
    for raw in reversed(text.splitlines()):
        line = "".join(ch for ch in raw if ch == "\t" or ch >= " ")[:MAX_LINE].rstrip()
        if not line:
            continue
        cost = len(line.encode("utf-8", errors="replace")) + 1
        if size + cost > cap:
            break
        kept.append(line)
        size += cost
    kept.reverse()
    return kept, max(total - size, 0)


def keep_console_log(text: str, why: str, log: Callable[[str], None] = default_log,
                     secrets: SecretFilter | None = None, cap: int = DEFAULT_CAP) -> int:
    """Copy the tail of the console *text* into stderr.txt; returns the bytes kept.

    :param why: the failure it explains (one line, shown before the console).
    """
    hide = secrets or SecretFilter()
    lines, dropped = console_tail(hide(text), cap)
    if not lines:
        log(f"guest console ({why}): empty")
        return 0
    skipped = f", {dropped} earlier bytes not shown" if dropped else ""
    log(f"guest console ({why}): last {len(lines)} lines{skipped}")
    for line in lines:
        log(PREFIX + line)
    log("guest console: end")
    return sum(len(line.encode("utf-8", errors="replace")) + 1 for line in lines)

"""Parse ``boinccmd --get_tasks`` output into task records.

The output is one block per task, ``N) -----------`` followed by
``   key: value`` lines. Keys vary between client versions, so every key is
kept in ``fields`` and the ones tests use get typed properties.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BLOCK_START = re.compile(r"^\s*\d+\) -+\s*$")


@dataclass(frozen=True)
class TaskInfo:
    """One task as the client describes it."""

    fields: dict[str, str]

    def _get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)

    def _float(self, key: str) -> float:
        value = self._get(key, "0")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"task {self.name}: {key!r} is not a number: {value!r}") from None

    @property
    def name(self) -> str:
        return self._get("name")

    @property
    def wu_name(self) -> str:
        return self._get("WU name")

    @property
    def project_url(self) -> str:
        return self._get("project URL")

    @property
    def state(self) -> str:
        """Result state, e.g. ``downloaded``, ``uploaded``, ``aborted``."""
        return self._get("state")

    @property
    def scheduler_state(self) -> str:
        """``uninitialized``, ``preempted`` or ``scheduled``."""
        return self._get("scheduler state")

    @property
    def active_task_state(self) -> str:
        """``EXECUTING``, ``SUSPENDED``, ``EXITED``... or empty when no task runs."""
        return self._get("active_task_state")

    @property
    def suspended_via_gui(self) -> bool:
        return self._get("suspended via GUI") == "yes"

    @property
    def ready_to_report(self) -> bool:
        return self._get("ready to report") == "yes"

    @property
    def fraction_done(self) -> float:
        return self._float("fraction done")

    @property
    def current_cpu_time(self) -> float:
        return self._float("current CPU time")

    @property
    def checkpoint_cpu_time(self) -> float:
        return self._float("CPU time at last checkpoint")

    @property
    def elapsed_time(self) -> float:
        return self._float("elapsed task time")

    @property
    def pid(self) -> int | None:
        value = self._get("PID")
        return int(value) if value.isdigit() and int(value) > 0 else None

    @property
    def exit_status(self) -> int:
        return int(self._float("exit_status")) if "exit_status" in self.fields else 0


def parse_get_tasks(text: str) -> list[TaskInfo]:
    """Split ``--get_tasks`` output into tasks; raises ValueError on foreign text."""
    tasks: list[dict[str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("======"):
            continue
        if _BLOCK_START.match(line):
            tasks.append({})
            continue
        key, sep, value = line.strip().partition(":")
        if not sep or not tasks:
            raise ValueError(f"--get_tasks line {number} is not 'key: value' in a task: {line!r}")
        tasks[-1][key.strip()] = value.strip()
    return [TaskInfo(fields) for fields in tasks]

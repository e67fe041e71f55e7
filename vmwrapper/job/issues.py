"""Errors and warnings about a job description, each naming where and how to fix it.

An admin who ships a broken ``job.xml`` sees it only in a volunteer's
``stderr.txt``, so every problem says which file and line, which element or
command-line flag, what is wrong, and what to write instead. Problems are
collected rather than raised one by one, so a single check shows all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]

#: ``JobIssue.source`` for problems in the application's command-line flags.
COMMAND_LINE = "command line"


@dataclass(frozen=True)
class JobIssue:
    """One problem: an error stops the job, a warning is logged and the job runs."""

    source: str
    line: int | None
    element: str
    message: str
    fix: str = ""
    severity: Severity = "error"

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        text = f"{where}: {self.severity}: {self.element}: {self.message}"
        return f"{text} Fix: {self.fix}" if self.fix else text

    def as_dict(self) -> dict[str, object]:
        """The issue as JSON-ready data (``check-job --json``)."""
        return {
            "severity": self.severity,
            "source": self.source,
            "line": self.line,
            "element": self.element,
            "message": self.message,
            "fix": self.fix,
        }


class JobFileError(Exception):
    """The job description (file or flags) is unusable; ``errors`` lists every reason."""

    def __init__(self, errors: list[JobIssue], warnings: list[JobIssue] | None = None) -> None:
        super().__init__("\n".join(str(issue) for issue in errors))
        self.errors = list(errors)
        self.warnings = list(warnings or [])

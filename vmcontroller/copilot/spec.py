"""What a job is, what an agent offers, and the checks on both.

A physicist describes a job in a JSON job file or with ``copilot submit``
flags; both end up as a :class:`JobSpec`.  Pilots describe themselves with
:class:`Capabilities`; :func:`fits` decides whether a job may go to them.
Every check raises :class:`SpecError` naming the bad field and the fix.
"""

# -*- test-case-name: tests.unit.copilot.test_spec -*-

from __future__ import annotations

import enum
import re
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Capabilities",
    "JobSpec",
    "JobState",
    "SpecError",
    "check_file_name",
    "fits",
]

#: Largest max_run_time a job may ask for (seconds): a volunteer's time
#: slice is hours, not days.
MAX_RUN_TIME_LIMIT = 7 * 24 * 3600
#: Most retries a job may ask for.
MAX_RETRIES = 20
#: Output/input names: one plain file name, no directories.
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
#: Output patterns: a file name with shell wildcards, no directories.
_PATTERN = re.compile(r"[A-Za-z0-9_*?\[\]][A-Za-z0-9_.+*?\[\]-]{0,127}")


class SpecError(ValueError):
    """A job file, a flag or an agent's capabilities are invalid."""


class JobState(enum.StrEnum):
    """Where a job stands.  DONE, FAILED and CANCELLED are final."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


def check_file_name(name: object, what: str = "file name") -> str:
    """Return ``name`` if it is one plain file name, else raise SpecError.

    No ``/``, no ``..``, no leading dot: names become paths on the server and
    in the guest, so nothing may climb out of a job's directory.
    """
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or ".." in name:
        raise SpecError(
            f"invalid {what} {name!r}: use 1-128 letters, digits, '_', '.', '+' or '-', "
            "not starting with '.', no '/' and no '..'"
        )
    return name


def _number(data: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise SpecError(f"{key} must be a number between {low} and {high}, got {value!r}")
    return value


@dataclass(frozen=True)
class JobSpec:
    """One job as submitted.

    :param argv: the command as an argument vector (or ``shell``, not both).
    :param inputs: input file names; the files are uploaded with the job and
        placed in the job's work directory before it starts.
    :param outputs: file name patterns (``*.root``) collected after the run.
    :param cores, memory_mb: what the job needs from the agent.
    :param max_run_time: seconds; the agent kills the job after this.
    :param retries: how many more times a failed or lost attempt is rerun.
    """

    argv: tuple[str, ...] = ()
    shell: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    cores: int = 1
    memory_mb: int = 256
    max_run_time: float = 3600.0
    retries: int = 2

    def __post_init__(self) -> None:
        if bool(self.argv) == bool(self.shell):
            raise SpecError("give exactly one of 'argv' (a list of strings) and 'shell' (a string)")
        if any(not isinstance(a, str) or "\x00" in a for a in self.argv):
            raise SpecError(f"argv must be a list of strings without NUL, got {list(self.argv)!r}")
        if self.shell is not None and (not isinstance(self.shell, str) or "\x00" in self.shell):
            raise SpecError("shell must be a string without NUL")
        if not isinstance(self.env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k
            for k, v in self.env.items()
        ):
            raise SpecError("env must map variable names (no '=') to strings")
        for name in self.inputs:
            check_file_name(name, "input name")
        if len(set(self.inputs)) != len(self.inputs):
            raise SpecError(f"input names must be unique: {list(self.inputs)}")
        for pattern in self.outputs:
            if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern) or ".." in pattern:
                raise SpecError(
                    f"invalid output pattern {pattern!r}: a file name with wildcards "
                    "(*, ?, [..]), no '/' and no '..'"
                )

    @classmethod
    def from_dict(cls, data: object, source: str = "job") -> JobSpec:
        """Build from a decoded job file; unknown keys are an error (typos must not pass)."""
        if not isinstance(data, dict):
            raise SpecError(f"{source}: a job must be a JSON object")
        known = {
            "argv", "shell", "env", "inputs", "outputs", "cores", "memory_mb",
            "max_run_time", "retries",
        }  # fmt: skip
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(
                f"{source}: unknown key(s) {', '.join(unknown)}; known: {sorted(known)}"
            )
        try:
            argv = data.get("argv") or ()
            if not isinstance(argv, (list, tuple)):
                raise SpecError("argv must be a list of strings")
            for key in ("inputs", "outputs"):
                if not isinstance(data.get(key, []), list):
                    raise SpecError(f"{key} must be a list of names")
            return cls(
                argv=tuple(argv),
                shell=data.get("shell"),
                env=dict(data.get("env") or {}) if isinstance(data.get("env", {}), dict) else None,
                inputs=tuple(data.get("inputs", [])),
                outputs=tuple(data.get("outputs", [])),
                cores=int(_number(data, "cores", 1, 1, 1024)),
                memory_mb=int(_number(data, "memory_mb", 256, 1, 1024 * 1024)),
                max_run_time=float(_number(data, "max_run_time", 3600, 1, MAX_RUN_TIME_LIMIT)),
                retries=int(_number(data, "retries", 2, 0, MAX_RETRIES)),
            )
        except SpecError as error:
            raise SpecError(f"{source}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """The job-file form.  Written out, not ``asdict``: every offer sends one,
        and the generic deep copy cost more than the rest of building the offer."""
        return {
            "argv": list(self.argv), "shell": self.shell, "env": dict(self.env),
            "inputs": list(self.inputs), "outputs": list(self.outputs), "cores": self.cores,
            "memory_mb": self.memory_mb, "max_run_time": self.max_run_time,
            "retries": self.retries,
        }  # fmt: skip


@dataclass(frozen=True)
class Capabilities:
    """What a pilot can run now.

    ``max_run_time`` is what is left of the volunteer's time slice: a pilot
    near the end of its slice asks only for short jobs.
    """

    cores: int = 1
    memory_mb: int = 256
    max_run_time: float = 3600.0
    platform: str = "x86_64-pc-linux-gnu"

    @classmethod
    def from_dict(cls, data: object) -> Capabilities:
        if not isinstance(data, dict):
            raise SpecError("capabilities must be an object")
        platform = data.get("platform", "x86_64-pc-linux-gnu")
        if not isinstance(platform, str):
            raise SpecError("capabilities.platform must be a string")
        return cls(
            cores=int(_number(data, "cores", 1, 1, 1024)),
            memory_mb=int(_number(data, "memory_mb", 256, 1, 1024 * 1024)),
            max_run_time=float(_number(data, "max_run_time", 3600, 0, MAX_RUN_TIME_LIMIT)),
            platform=platform,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fits(spec: JobSpec, caps: Capabilities) -> bool:
    """May a job with ``spec`` be offered to a pilot with ``caps``?"""
    return (
        spec.cores <= caps.cores
        and spec.memory_mb <= caps.memory_mb
        and spec.max_run_time <= caps.max_run_time
    )

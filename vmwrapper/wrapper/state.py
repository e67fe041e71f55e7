"""The wrapper's own checkpoint state: what a restarted wrapper needs to continue.

The hypervisor keeps the VM's checkpoint (memory, devices, disk); this small
JSON file in the slot says what that checkpoint means to the wrapper: which
task was running under which request id, the cumulative CPU time of the VM
across restarts, and the broker port and logins the restored guest still
remembers. It is written atomically (temporary file, fsync, rename, fsync of
the directory), so a power cut leaves either the old or the new file, never a
torn one; an unreadable file is reported and treated as "no state".
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any

#: Bump when the layout changes incompatibly; other versions are ignored (fresh start).
STATE_VERSION = 1


class StateFileError(Exception):
    """The state file exists but cannot be used; the message says why."""


@dataclass
class WrapperState:
    """Everything the wrapper persists between runs of the same task.

    :param cpu_time: cumulative VM CPU seconds up to the last save (all runs).
    :param resumable: True when the VM's checkpoint matches this file: the
        next start restores the VM instead of booting it afresh.
    :param task_index: index (in ``job.task``) of the first work task not yet finished.
    :param inputs_copied: the input files are in the guest already.
    :param run_seq: request id of the running task's command (to adopt it after a restore).
    :param daemon_seqs: request ids of the guest daemons started.
    :param broker_port: port of the embedded broker the guest was told about (0 = none yet).
    :param logins: broker logins as ``{"host": [login, passcode], "vm": [...]}``.
    :param episodes: how many times the wrapper has started for this task.
    :param boot_failures: episodes that ended because the guest never said hello.
    :param crash_restarts: VM crashes or hangs since the last checkpoint that ended in a
        temporary exit to restart from it; a second one ends the task with an error.
    """

    cpu_time: float = 0.0
    resumable: bool = False
    task_index: int = 0
    inputs_copied: bool = False
    run_seq: int | None = None
    daemon_seqs: list[int] = field(default_factory=list)
    broker_port: int = 0
    logins: dict[str, list[str]] = field(default_factory=dict)
    episodes: int = 0
    boot_failures: int = 0
    crash_restarts: int = 0

    def to_json(self) -> str:
        data = {"version": STATE_VERSION, **dataclasses.asdict(self)}
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "state") -> WrapperState:
        """Parse the file's text.

        :raises StateFileError: not JSON, another version, or wrong field types.
        """
        try:
            data: Any = json.loads(text)
        except ValueError as exc:
            raise StateFileError(f"{source} is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise StateFileError(f"{source} holds {type(data).__name__}, not an object")
        version = data.pop("version", None)
        if version != STATE_VERSION:
            raise StateFileError(f"{source} has layout version {version!r}, expected {STATE_VERSION}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise StateFileError(f"{source} has unknown field(s) {', '.join(unknown)}")
        state = cls(**data)
        _check_types(state, source)
        return state


def _check_types(state: WrapperState, source: str) -> None:
    numbers = ("cpu_time",)
    integers = ("task_index", "broker_port", "episodes", "boot_failures", "crash_restarts")
    for name in numbers:
        value = getattr(state, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise StateFileError(f"{source}: {name}={value!r} is not a number >= 0")
    for name in integers:
        value = getattr(state, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise StateFileError(f"{source}: {name}={value!r} is not an integer >= 0")
    if not isinstance(state.resumable, bool) or not isinstance(state.inputs_copied, bool):
        raise StateFileError(f"{source}: resumable/inputs_copied must be true or false")
    if state.run_seq is not None and (isinstance(state.run_seq, bool)
                                      or not isinstance(state.run_seq, int)):
        raise StateFileError(f"{source}: run_seq={state.run_seq!r} is not an integer")
    if not isinstance(state.daemon_seqs, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in state.daemon_seqs):
        raise StateFileError(f"{source}: daemon_seqs must be a list of integers")
    if not isinstance(state.logins, dict) or not all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
            for v in state.logins.values()):
        raise StateFileError(f"{source}: logins must map roles to [login, passcode]")


class StateFile:
    """The state file at *path*: :meth:`load` and atomic :meth:`save`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path)

    def load(self) -> WrapperState | None:
        """The saved state, or None when there is no file.

        :raises StateFileError: the file exists but is unusable.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateFileError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        return WrapperState.from_json(text, str(self.path))

    def save(self, state: WrapperState) -> None:
        """Replace the file with *state*: the new content is on disk before the old goes.

        :raises OSError: the file could not be written (the old one is intact).
        """
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        data = state.to_json().encode("utf-8")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(temporary, self.path)
        except OSError:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)

    def remove(self) -> None:
        """Delete the file and any half-written temporary (no error when absent)."""
        self.path.unlink(missing_ok=True)
        self.path.with_name(f".{self.path.name}.tmp").unlink(missing_ok=True)


def _fsync_dir(directory: pathlib.Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""How a run of the wrapper ends, and which ending each failure gets.

Four endings (``boinc_protocol.md`` section 5, ``exitcodes.py``):

* ``FINISH``: the task is over, successfully (status 0) or for good (a
  status from :class:`~vmwrapper.boinc.exitcodes.ExitStatus`); VM and files
  are removed, the last trickle goes out, ``boinc_finish_called`` is written;
* ``TEMPORARY``: something that may clear up (busy host, hypervisor hiccup):
  the VM is saved or stopped, the client restarts the task after ``delay``;
* ``SAVE``: the client asked us to go (``<quit/>``, lost heartbeat, dead
  client): the VM is checkpointed and stopped, exit 0, the next start resumes;
* ``ABORT``: ``<abort/>``: VM and files removed, exit 194.

:func:`outcome_for_error` is the one table from exceptions to endings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet import error as net_error

from vmwrapper.boinc.errors import BoincApiError
from vmwrapper.boinc.exitcodes import RESTART_DELAY, ExitStatus
from vmwrapper.hypervisor import errors as hv


class Ending(enum.Enum):
    FINISH = "finish"
    TEMPORARY = "temporary exit"
    SAVE = "save and exit"
    ABORT = "abort"


@dataclass(frozen=True)
class Outcome:
    """One ending with its status (FINISH), delay (TEMPORARY) and a message for the volunteer;
    *notice*: the client shows the message as a notice (a guest's trigger file asks for it)."""

    ending: Ending
    status: int = 0
    message: str = ""
    delay: float = 0.0
    notice: bool = False

    @classmethod
    def success(cls, message: str = "") -> Outcome:
        return cls(Ending.FINISH, int(ExitStatus.SUCCESS), message)

    @classmethod
    def failure(cls, status: ExitStatus, message: str) -> Outcome:
        return cls(Ending.FINISH, int(status), message)

    @classmethod
    def temporary(cls, message: str, delay: float = RESTART_DELAY) -> Outcome:
        return cls(Ending.TEMPORARY, 0, message, delay)

    @classmethod
    def save(cls, message: str) -> Outcome:
        return cls(Ending.SAVE, 0, message)

    @classmethod
    def abort(cls, message: str = "aborted by the BOINC client") -> Outcome:
        return cls(Ending.ABORT, int(ExitStatus.ABORTED_BY_CLIENT), message)

    def describe(self) -> str:
        """One line for stderr.txt."""
        if self.ending is Ending.FINISH:
            name = _status_name(self.status)
            return f"finishing with status {self.status} ({name}): {self.message or 'done'}"
        if self.ending is Ending.TEMPORARY:
            return f"temporary exit, restart in {self.delay:.0f} s: {self.message}"
        return f"{self.ending.value}: {self.message}"


class WrapperError(Exception):
    """A failure the wrapper itself diagnosed; carries its ending."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


#: Driver errors that are this host's or this work unit's problem for good.
_INIT_FAILURES = (hv.ImageMissing, hv.ImageCorrupt, hv.InvalidSpec)
_HOST_CANNOT = (hv.HypervisorNotInstalled, hv.NoVirtualization)


def outcome_for_error(error: BaseException) -> Outcome:
    """The ending for an unexpected or typed error raised while running the job."""
    if isinstance(error, WrapperError):
        return error.outcome
    if isinstance(error, _INIT_FAILURES):
        return Outcome.failure(ExitStatus.INIT_FAILURE, str(error))
    if isinstance(error, hv.NoVirtualization):
        return Outcome.failure(ExitStatus.ERR_EXEC,
                               f"{error} (ERR_CPU_VM_EXTENSIONS_DISABLED)")
    if isinstance(error, _HOST_CANNOT):
        return Outcome.failure(ExitStatus.ERR_EXEC, str(error))
    if isinstance(error, hv.HypervisorError):
        if error.transient:
            return Outcome.temporary(f"{type(error).__name__}: {error}")
        return Outcome.failure(ExitStatus.CHILD_FAILED, f"{type(error).__name__}: {error}")
    if isinstance(error, BoincApiError):
        return Outcome.temporary(f"the BOINC slot is not usable yet: {error}")
    if isinstance(error, defer.CancelledError):
        return Outcome.temporary("an operation was cancelled")
    if isinstance(error, (defer.TimeoutError, net_error.ConnectError, net_error.ConnectionLost)):
        return Outcome.temporary(f"cannot reach the message broker: {type(error).__name__}: {error}")
    if isinstance(error, OSError):
        return Outcome.temporary(f"{type(error).__name__}: {error}")
    return Outcome.failure(ExitStatus.CHILD_FAILED,
                           f"internal error: {type(error).__name__}: {error}")


def _status_name(status: int) -> str:
    try:
        return ExitStatus(status).name
    except ValueError:
        return "guest status"

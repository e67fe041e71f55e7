"""What a host check found, and what the wrapper does about it.

Each check gives one :class:`Finding`: a :class:`Reason` (a stable code admins
grep for in ``stderr.txt``), a one-line detail for admins, advice the
volunteer can act on (BOINC Manager shows it with the temporary exit), and a
:class:`Verdict`:

* ``OK``: nothing to say;
* ``COST``: the job runs, with a stated cost (software emulation instead of
  KVM); the detail says what the cost is;
* ``WAIT``: the job cannot run here *now*; the wrapper makes a temporary exit
  with ``delay`` instead of failing the task, which would waste it: the
  volunteer can fix the host and the task continues (vboxwrapper's users lost
  whole tasks to "VM extensions disabled" and missing installs,
  ``vboxwrapper.md`` section 4).

:class:`Diagnosis` combines the findings of one start-up and applies them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vmwrapper.boinc.exitcodes import MAX_TEMPORARY_EXIT_DELAY, RESTART_DELAY
from vmwrapper.boinc.log import log as default_log

#: The text BOINC's client looks for in stderr.txt to learn that this host has
#: no usable VT-x/AMD-V (``vboxwrapper.md`` section 1.12); it then stops
#: asking for jobs that require it until the client restarts.
VM_EXTENSIONS_DISABLED = "ERR_CPU_VM_EXTENSIONS_DISABLED"

#: Delay of a temporary exit the volunteer must act on (install, firmware setting).
HOST_FIX_DELAY = 3600.0


class Verdict(enum.IntEnum):
    """How bad a finding is; the worst one decides (higher is worse)."""

    OK = 0
    COST = 1
    WAIT = 2


class Reason(enum.Enum):
    """Stable reason codes (never rename one: admins count them in stderr.txt)."""

    OK = "ok"
    #: /dev/kvm is missing or not writable though the CPU may support it.
    KVM_UNUSABLE = "kvm_unusable"
    #: No hardware virtualization at all (flag absent or disabled in firmware).
    VM_EXTENSIONS_DISABLED = "vm_extensions_disabled"
    #: The hypervisor's program is not on PATH.
    HYPERVISOR_MISSING = "hypervisor_missing"
    #: The program exists but ``--version`` fails or hangs.
    HYPERVISOR_BROKEN = "hypervisor_broken"
    #: Older than the job needs.
    HYPERVISOR_TOO_OLD = "hypervisor_too_old"
    #: Not enough free disk in the slot for the overlay and checkpoints.
    DISK_LOW = "disk_low"
    #: Not enough available memory for the VM now.
    MEMORY_LOW = "memory_low"

    @property
    def code(self) -> str:
        return self.value


@dataclass(frozen=True)
class Finding:
    """One check's result.

    :param check: what was checked (``virtualization``, ``hypervisor``, ``disk``, ``memory``).
    :param verdict: OK, COST or WAIT.
    :param reason: the stable reason code (``Reason.OK`` when fine).
    :param detail: one line for admins: what was measured against what.
    :param advice: what the volunteer can do (empty when nothing is needed).
    :param delay: seconds before the client restarts the task (``WAIT`` only).
    """

    check: str
    verdict: Verdict
    reason: Reason
    detail: str
    advice: str = ""
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.verdict is Verdict.WAIT and not 0 < self.delay <= MAX_TEMPORARY_EXIT_DELAY:
            raise ValueError(f"{self.check}: a WAIT finding needs a delay of 1 to "
                             f"{MAX_TEMPORARY_EXIT_DELAY} s, not {self.delay}")
        if self.verdict is Verdict.WAIT and not self.advice.strip():
            raise ValueError(f"{self.check}: a WAIT finding needs advice for the volunteer")
        if self.verdict is not Verdict.OK and self.reason is Reason.OK:
            raise ValueError(f"{self.check}: a {self.verdict.name} finding needs a reason code")

    @classmethod
    def ok(cls, check: str, detail: str) -> Finding:
        return cls(check, Verdict.OK, Reason.OK, detail)

    @classmethod
    def cost(cls, check: str, reason: Reason, detail: str, advice: str = "") -> Finding:
        return cls(check, Verdict.COST, reason, detail, advice)

    @classmethod
    def wait(cls, check: str, reason: Reason, detail: str, advice: str,
             delay: float = HOST_FIX_DELAY) -> Finding:
        return cls(check, Verdict.WAIT, reason, detail, advice, delay)

    def line(self) -> str:
        """The admin's one line: ``diagnostics: CODE (check, verdict): detail``."""
        verdict = {Verdict.OK: "ok", Verdict.COST: "proceeding at a cost",
                   Verdict.WAIT: f"temporary exit {self.delay:.0f} s"}[self.verdict]
        return f"diagnostics: {self.reason.code} ({self.check}, {verdict}): {self.detail}"


@dataclass(frozen=True)
class Diagnosis:
    """The findings of one start-up, and the decision they add up to."""

    findings: tuple[Finding, ...]

    @classmethod
    def of(cls, findings: Iterable[Finding]) -> Diagnosis:
        return cls(tuple(findings))

    @property
    def verdict(self) -> Verdict:
        return max((f.verdict for f in self.findings), default=Verdict.OK)

    @property
    def delay(self) -> float:
        """The temporary exit's delay: the longest any WAIT finding asks for."""
        return max((f.delay for f in self.findings if f.verdict is Verdict.WAIT), default=0.0)

    @property
    def problems(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.verdict is not Verdict.OK)

    def volunteer_message(self) -> str:
        """The text BOINC Manager shows with the temporary exit: every WAIT finding's advice."""
        waits = [f for f in self.findings if f.verdict is Verdict.WAIT]
        return " ".join(f.advice for f in waits if f.advice)

    def report(self, log: Callable[[str], None] = default_log) -> None:
        """One stderr.txt line per problem, and one line with everything that was fine."""
        fine = [f"{f.check}: {f.detail}" for f in self.findings if f.verdict is Verdict.OK]
        if fine:
            log("diagnostics: ok: " + "; ".join(fine))
        for finding in self.problems:
            log(finding.line())

    def act(self, runtime: Any, log: Callable[[str], None] = default_log) -> bool:
        """Report, then make the temporary exit if a finding says WAIT.

        :param runtime: has ``temporary_exit(delay, reason, notice)`` (``BoincRuntime``).
        :returns: True when the job may boot (OK or COST). After False the
            runtime has exited the process (or, in tests, recorded the exit).
        """
        self.report(log)
        if self.verdict is not Verdict.WAIT:
            return True
        runtime.temporary_exit(self.delay, self.volunteer_message(), notice=True)
        return False


__all__ = ["HOST_FIX_DELAY", "RESTART_DELAY", "VM_EXTENSIONS_DISABLED", "Diagnosis", "Finding",
           "Reason", "Verdict"]

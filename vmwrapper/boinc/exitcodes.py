"""The one table of exit statuses the BOINC application uses.

Values are BOINC's (``lib/error_numbers.h``, the ``EXIT_*`` process exit codes,
and the function error codes vboxwrapper passes to ``boinc_finish``). Unix keeps
only the low 8 bits of an exit status, so a negative BOINC error code such as
``ERR_EXEC`` (-148) reaches the client as ``-148 & 0xff`` = 108; we list the
value the client actually sees.

How an exit is judged by the client (``boinc_protocol.md`` section 5):

* ``boinc_finish_called`` written + exit 0: success, outputs are uploaded.
* exit != 0: the task errors out with that status; it is never retried on
  this host, so use these only for conditions that will not clear up.
* ``boinc_temporary_exit`` written + exit 0: the task is restarted later in the
  same slot. Use a temporary exit, not a status from this table, for conditions
  that may clear up by themselves:

  - the slot or the client looks damaged at start (unreadable ``init_data.xml``,
    missing ``boinc_mmap_file``, a :class:`~vmwrapper.boinc.errors.BoincApiError`);
  - ``<quit/>``, a missing heartbeat or a dead client (the VM is saved first);
  - the hypervisor is busy, missing memory, or another hypervisor holds VT-x;
  - the VM failed to come online, pause, resume or snapshot
    (:data:`RESTART_DELAY`, five minutes, rather than vboxwrapper's day).

* exit 0 without either file: "premature exit", restarted at once; more than 100
  in a row without a checkpoint aborts the task. Never do this on purpose.
"""

from __future__ import annotations

from enum import IntEnum

#: Seconds before the client restarts a task after a temporary exit for a
#: condition that usually clears up soon (hypervisor hiccup, snapshot failure).
RESTART_DELAY = 300

#: The longest delay the client accepts for a temporary exit; larger (or
#: negative) values make it use 300 s.
MAX_TEMPORARY_EXIT_DELAY = 86400


class ExitStatus(IntEnum):
    """Exit statuses, each with a ``description`` saying when we use it."""

    description: str

    def __new__(cls, value: int, description: str) -> ExitStatus:
        member = int.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    SUCCESS = (
        0,
        "The job finished and its outputs are complete; written with boinc_finish_called.",
    )
    ERR_EXEC = (
        108,
        "BOINC's ERR_EXEC (-148) as Unix passes it: the hypervisor cannot run this VM on this "
        "host at all (64-bit guest without hardware virtualisation, VT-x/AMD-V disabled in the "
        "BIOS: then the message also names ERR_CPU_VM_EXTENSIONS_DISABLED).",
    )
    SIGNAL = (193, "EXIT_SIGNAL: set by the client when the app died of a signal; we never use it.")
    ABORTED_BY_CLIENT = (
        194,
        "EXIT_ABORTED_BY_CLIENT: our answer to <abort/> (after destroying the VM), and a VM "
        "that could not be polled for a long time.",
    )
    CHILD_FAILED = (
        195,
        "EXIT_CHILD_FAILED: the hypervisor process or the job in the guest failed for good.",
    )
    DISK_LIMIT = (
        196,
        "EXIT_DISK_LIMIT_EXCEEDED: set by the client when the slot exceeds rsc_disk_bound; we use "
        "it when the VM's disk would grow past rsc_disk_bound.",
    )
    TIME_LIMIT = (
        197,
        "EXIT_TIME_LIMIT_EXCEEDED: set by the client past rsc_fpops_bound; we use it when the job "
        "exceeds its own configured maximum run time.",
    )
    MEM_LIMIT = (
        198,
        "EXIT_MEM_LIMIT_EXCEEDED: set by the client over the RAM limit; we use it when the VM "
        "needs more memory than rsc_memory_bound allows.",
    )
    CLIENT_EXITING = (
        199,
        "EXIT_CLIENT_EXITING: set by the client when it shuts down; we never use it.",
    )
    ABORTED_BY_PROJECT = (
        202,
        "EXIT_ABORTED_BY_PROJECT: set by the client when the server cancels the job; we use it "
        "when a trickle-down from the project asks us to abort.",
    )
    ABORTED_VIA_GUI = (
        203,
        "EXIT_ABORTED_VIA_GUI: set by the client when the volunteer aborts the task; never ours.",
    )
    OUT_OF_MEMORY = (
        205,
        "EXIT_OUT_OF_MEMORY: the guest reported running out of memory (the job needs more RAM "
        "than the VM was given; retrying on this host will not help).",
    )
    INIT_FAILURE = (
        206,
        "EXIT_INIT_FAILURE: the work unit is unusable (bad job.xml, bad command line, missing "
        "or corrupt input files): a project-side error no retry can fix.",
    )
    NO_SUB_TASKS = (
        207,
        "EXIT_NO_SUB_TASKS: the guest found no work to do (vboxwrapper's completion file "
        "convention from LHC@home).",
    )
    SUB_TASK_FAILURE = (
        208,
        "EXIT_SUB_TASK_FAILURE: the job inside the guest ran and failed.",
    )


def exit_status_for(value: int) -> ExitStatus | int:
    """The table entry for *value* if there is one, else *value* unchanged.

    Lets log lines name a status (``exit_status_for(194).name``) without failing
    on a code the table does not know (a guest's own exit code).
    """
    try:
        return ExitStatus(value)
    except ValueError:
        return value

"""Guest tasks as shell commands, and the job's fraction done.

A ``<task>`` with ``<where>guest</where>`` runs through the guest agent as one
``/bin/sh -c`` command in the agent's work directory: the application with
its command line split into arguments as BOINC's wrapper does (quotes group
words; nothing is expanded, so ``$i`` reaches the program as written),
stdin/stdout/stderr
redirected to the named guest files, ``setenv`` as the environment, and
``time_limit`` as the agent's timeout (reaching it counts as success, as in
BOINC's wrapper).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from vmwrapper.job.macros import expand_task, macro_values
from vmwrapper.job.model import JobDescription, Task
from vmwrapper.job.progress import overall_fraction_done


@dataclass(frozen=True)
class GuestCommand:
    """What the guest agent is asked to run for one task."""

    shell: str
    env: dict[str, str] | None
    cwd: str | None
    timeout: float | None


def guest_command(task: Task, job: JobDescription) -> GuestCommand:
    """The command for guest *task* with its macros (``$NTHREADS``, ``$GPU_DEVICE_NUM``) expanded.

    Host paths (``$PROJECT_DIR``, ``$PWD``) mean nothing in the guest and are
    left for the guest's shell.
    """
    values = {name: value for name, value in macro_values(job, "", "").items()
              if name not in ("PROJECT_DIR", "PWD")}
    task = expand_task(task, values)
    try:
        arguments = shlex.split(task.command_line)
    except ValueError as exc:
        raise ValueError(f"<task> {task.application}: <command_line> cannot be split into "
                         f"arguments ({exc}); check its quotes") from None
    if task.append_cmdline_args:
        arguments += job.flags.passthrough_args
    words = ["exec", shlex.join([task.application, *arguments])]
    for operator, name in (("<", task.stdin_filename), (">", task.stdout_filename),
                           ("2>", task.stderr_filename)):
        if name:
            words.append(f"{operator} {shlex.quote(name)}")
    return GuestCommand(
        shell=" ".join(words),
        env=dict(task.setenv) or None,
        cwd=task.exec_dir or None,
        timeout=task.time_limit or None,
    )


def work_tasks(job: JobDescription) -> list[tuple[int, Task]]:
    """(index in ``job.task``, task) of the tasks that run one after another."""
    return [(i, t) for i, t in enumerate(job.task) if not t.daemon]


def daemon_tasks(job: JobDescription) -> list[tuple[int, Task]]:
    """(index, task) of the daemons: started first, killed at the end."""
    return [(i, t) for i, t in enumerate(job.task) if t.daemon]


def job_fraction_done(job: JobDescription, completed: int, task_fraction: float | None,
                      running_seconds: float, expected_seconds: float) -> float:
    """The job's progress: the task's progress file if it gave one, else time-based.

    :param completed: work tasks finished so far.
    :param task_fraction: the current task's progress file value, or None.
    :param expected_seconds: expected running time of the whole job (0 = unknown).
    """
    tasks = [t for _, t in work_tasks(job)]
    if task_fraction is not None and not job.task:  # the job's own fraction_done_filename
        return task_fraction
    if task_fraction is not None and tasks:
        return overall_fraction_done(tasks, completed, task_fraction)
    if expected_seconds > 0:
        by_time = min(running_seconds / expected_seconds, 0.99)
        if tasks:
            return max(overall_fraction_done(tasks, completed, 0.0), by_time)
        return by_time
    if tasks:
        return overall_fraction_done(tasks, completed, 0.0)
    return 0.0

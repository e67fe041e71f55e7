"""BOINC wrapper macros in task command lines, environment settings and exec dirs.

``$PROJECT_DIR`` (the project directory), ``$NTHREADS`` (CPUs, from
``--nthreads``, else 1), ``$PWD`` (the slot directory) and ``$GPU_DEVICE_NUM``
(from ``--device`` or ``init_data.xml``; left alone when unknown), as in
``samples/wrapper/wrapper.cpp``. Any other ``$NAME`` is left for the shell of
the guest or host to see.
"""

from __future__ import annotations

import dataclasses

from vmwrapper.job.flags import vm_cpus
from vmwrapper.job.model import JobDescription, Task


def substitute_macros(text: str, values: dict[str, str]) -> str:
    """Replace each ``$NAME`` of *values* in *text* (longest names first)."""
    for name in sorted(values, key=len, reverse=True):
        text = text.replace(f"${name}", values[name])
    return text


def macro_values(job: JobDescription, project_dir: str, pwd: str,
                 gpu_device_num: int | None = None) -> dict[str, str]:
    """The macro table for *job*: ``--device`` wins over *gpu_device_num* from the client."""
    values = {
        "PROJECT_DIR": project_dir,
        "NTHREADS": str(vm_cpus(job.flags)),
        "PWD": pwd,
    }
    device = job.flags.device if job.flags.device is not None else gpu_device_num
    if device is not None:
        values["GPU_DEVICE_NUM"] = str(device)
    return values


def expand_task(task: Task, values: dict[str, str]) -> Task:
    """*task* with macros substituted in ``command_line``, ``setenv`` values and ``exec_dir``."""
    return dataclasses.replace(
        task,
        command_line=substitute_macros(task.command_line, values),
        exec_dir=substitute_macros(task.exec_dir, values),
        setenv=tuple((name, substitute_macros(value, values)) for name, value in task.setenv),
    )


def expand_macros(job: JobDescription, project_dir: str, pwd: str,
                  gpu_device_num: int | None = None) -> JobDescription:
    """*job* with every task's macros substituted."""
    values = macro_values(job, project_dir, pwd, gpu_device_num)
    return dataclasses.replace(job, task=tuple(expand_task(t, values) for t in job.task))

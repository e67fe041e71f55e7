"""The effective settings of a job, for people (``check-job``) and for programs (``--json``).

Every setting is shown with where its value comes from (a line of the file, a
command-line flag, or the default), so an admin can trace a surprising value.
Passwords in broker URLs are masked.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vmwrapper.job.broker import Broker
from vmwrapper.job.flags import OVERRIDES, vm_cpus
from vmwrapper.job.issues import JobIssue
from vmwrapper.job.model import JobDescription, Task, xml_fields


def origin(job: JobDescription, name: str) -> str:
    """Where *name*'s value comes from: ``--flag``, ``line N`` or ``default``."""
    for flag, target in OVERRIDES.items():
        value = getattr(job.flags, flag)
        if target == name and value is not None and (flag != "vmimage" or value):
            return f"--{flag}"
    if name in job.lines:
        return f"line {job.lines[name]}"
    return "default"


def jsonable(value: Any) -> Any:
    """*value* as JSON-ready data (dataclasses become dicts, the broker its masked URL)."""
    if isinstance(value, Broker):
        return value.display()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name != "lines"}
    if isinstance(value, tuple | list):
        return [jsonable(item) for item in value]
    return value


def settings_dict(job: JobDescription, warnings: list[JobIssue],
                  drivers: tuple[str, ...]) -> dict[str, Any]:
    """The whole effective job as one JSON-ready object."""
    names = [f.name for f in xml_fields(JobDescription)]
    return {
        "ok": True,
        "source": job.source,
        "root": job.root,
        "needs_vm": job.needs_vm,
        "drivers_checked": list(drivers),
        "settings": {name: jsonable(getattr(job, name)) for name in names},
        "origins": {name: origin(job, name) for name in names},
        "flags": jsonable(job.flags),
        "vm": {"memory_mb": job.vm_memory_mb, "cpus": vm_cpus(job.flags)} if job.needs_vm else None,
        "warnings": [issue.as_dict() for issue in warnings],
        "errors": [],
    }


def format_settings(job: JobDescription, drivers: tuple[str, ...]) -> str:
    """The effective settings as aligned text."""
    guest = sum(task.where == "guest" for task in job.task)
    host = len(job.task) - guest
    lines = [f"{job.source}: a valid <{job.root}> job description"]
    if job.needs_vm:
        what = (f"{guest} guest task(s), {host} host task(s)" if job.task
                else "no tasks: the appliance runs its own payload")
        cpus = (f"{vm_cpus(job.flags)} CPU(s) (--nthreads)" if job.flags.nthreads is not None
                else "the client's CPU count")
        lines.append(f"runs a VM under {' or '.join(drivers)}: {what}")
        lines.append(f"VM: {job.vm_memory_mb:g} MB, {cpus}, image {job.image}, "
                     f"broker {job.broker.display()}")
    else:
        lines.append(f"runs {host} host task(s) only: no VM, no broker")
    lines.append("")
    lines.append("settings (value, then where it comes from):")
    for field in xml_fields(JobDescription):
        if field.name == "task":
            continue
        value = getattr(job, field.name)
        lines.append(f"  {field.name:<30} {_short(value):<32} {origin(job, field.name)}")
        if "block" in field.metadata:
            lines.extend(f"      line {item.line}: {_describe_block(item)}" for item in value)
    if job.task:
        lines.append("")
        lines.append("tasks, run in order:")
        for number, task in enumerate(job.task, 1):
            lines.append(f"  {number}. line {task.line}, {_task_summary(task)}")
            details = _task_details(task)
            if details:
                lines.append(f"       {details}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, Broker):
        return value.display()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        if value and dataclasses.is_dataclass(value[0]):
            return f"{len(value)} block(s)"
        return ", ".join(map(str, value)) if value else "(none)"
    return repr(value) if value == "" else str(value)


def _describe_block(item: Any) -> str:
    values = [f"{f.name}={_short(getattr(item, f.name))}" for f in xml_fields(type(item))]
    return ", ".join(values)


def _task_summary(task: Task) -> str:
    where = "daemon " if task.daemon else ""
    place = "in the guest" if task.where == "guest" else "on the host"
    return f"{where}{place}: {task.application} {task.command_line}".rstrip()


def _task_details(task: Task) -> str:
    default = Task()
    parts = []
    for field in xml_fields(Task):
        if field.name in ("application", "where", "command_line", "daemon"):
            continue
        value = getattr(task, field.name)
        if value == getattr(default, field.name):
            continue
        if field.name == "setenv":
            parts.extend(f"setenv {name}={val}" for name, val in value)
        else:
            parts.append(f"{field.name} {_short(value)}")
    return ", ".join(parts)

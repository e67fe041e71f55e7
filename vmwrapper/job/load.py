"""One call for the wrapper and ``check-job``: job file + flags + driver -> checked settings."""

from __future__ import annotations

import pathlib

from vmwrapper.job.drivers import DRIVER_NAMES, driver_warnings
from vmwrapper.job.flags import apply_flags, parse_app_flags
from vmwrapper.job.issues import JobFileError, JobIssue
from vmwrapper.job.model import AppFlags, JobDescription
from vmwrapper.job.parser import LoadedJob, read_job_file, sort_issues


def candidate_drivers(job: JobDescription, driver: str | None = None) -> tuple[str, ...]:
    """The drivers the job may run under: *driver* if chosen, else its preference list.

    A job whose tasks all run on the host needs none.
    """
    if not job.needs_vm:
        return ()
    if driver is not None:
        return (driver,)
    return DRIVER_NAMES if job.hypervisor == ("auto",) else job.hypervisor


def load_job(path: str | pathlib.Path, app_args: list[str] | tuple[str, ...] = (),
             driver: str | None = None) -> LoadedJob:
    """Read the job file, apply the application's flags, and collect every warning.

    :param driver: the driver the job will run under; when None, warnings cover
        every driver the job's ``<hypervisor>`` allows.
    :raises JobFileError: with the errors of the file and of the flags together.
    """
    if driver is not None and driver not in DRIVER_NAMES:
        raise ValueError(f"unknown driver {driver!r}; valid drivers: {', '.join(DRIVER_NAMES)}")
    errors: list[JobIssue] = []
    warnings: list[JobIssue] = []
    loaded = None
    flags = AppFlags()
    try:
        loaded = read_job_file(path)
        warnings += loaded.warnings
    except JobFileError as exc:
        errors += exc.errors
        warnings += exc.warnings
    try:
        flags = parse_app_flags(app_args)
    except JobFileError as exc:
        errors += exc.errors
    if errors or loaded is None:
        raise JobFileError(errors, warnings)
    job = apply_flags(loaded.job, flags)
    for name in candidate_drivers(job, driver):
        warnings += driver_warnings(job, name)
    return LoadedJob(job, sort_issues(warnings))

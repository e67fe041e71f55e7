"""The job description: ``job.xml`` parsed into typed, checked settings.

Use :func:`load_job` (file + the application's flags + the chosen driver); it
returns the :class:`JobDescription` and the warnings to log, or raises
:class:`JobFileError` listing every error with its line and fix. The accepted
root elements and vocabulary are described in :mod:`vmwrapper.job.model`;
``vmwrapper check-job FILE`` prints the effective settings.
"""

from vmwrapper.job.issues import JobFileError, JobIssue
from vmwrapper.job.load import candidate_drivers, load_job
from vmwrapper.job.model import AppFlags, GuestFile, JobDescription, PortForward, Task
from vmwrapper.job.parser import LoadedJob, parse_job, read_job_file

__all__ = [
    "AppFlags",
    "GuestFile",
    "JobDescription",
    "JobFileError",
    "JobIssue",
    "LoadedJob",
    "PortForward",
    "Task",
    "candidate_drivers",
    "load_job",
    "parse_job",
    "read_job_file",
]

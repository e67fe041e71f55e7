"""``vmwrapper check-job FILE [--driver D] [--json] [--project-dir DIR] [app flags...]``.

Validates a job file together with the application flags the app version or
work unit would pass, and prints the effective settings (exit 0) or every
error with its line and fix (exit 2). Warnings are printed either way.
"""

from __future__ import annotations

import json
import os
import sys

from vmwrapper.job.drivers import DRIVER_NAMES
from vmwrapper.job.issues import JobFileError
from vmwrapper.job.load import candidate_drivers, load_job
from vmwrapper.job.macros import expand_macros
from vmwrapper.job.report import format_settings, settings_dict

#: Exit status for a valid job, and for an invalid job or a usage error.
EXIT_OK = 0
EXIT_INVALID = 2

USAGE = """\
usage: vmwrapper check-job FILE [--driver qemu|virtualbox] [--json] [--project-dir DIR]
                           [application flags: --nthreads N --trickle S --memory_size_mb M
                            --vmimage N --register_only --sporadic --device N --use_tstp
                            --passthrough_child ARGS...]
Validate a job description and print the effective settings."""

_OWN_OPTIONS = {"--driver": True, "--json": False, "--project-dir": True}


class _UsageError(Exception):
    pass


def _split_args(argv: list[str]) -> tuple[dict[str, str | bool], str, list[str]]:
    """Our own options, the job file, and the remaining application flags."""
    own: dict[str, str | bool] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--passthrough_child":
            rest.extend(argv[i - 1:])
            break
        if arg not in _OWN_OPTIONS:
            rest.append(arg)
            continue
        if not _OWN_OPTIONS[arg]:
            own[arg] = True
            continue
        if i >= len(argv):
            raise _UsageError(f"{arg} needs a value")
        own[arg] = argv[i]
        i += 1
    if not rest or rest[0].startswith("-"):
        raise _UsageError("give the job file first")
    driver = own.get("--driver")
    if driver is not None and driver not in DRIVER_NAMES:
        raise _UsageError(f"unknown driver {driver!r}; valid drivers: {', '.join(DRIVER_NAMES)}")
    return own, rest[0], rest[1:]


def main(argv: list[str]) -> int:
    """Check the job file named in *argv*; return the exit status."""
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return EXIT_OK
    try:
        own, path, app_args = _split_args(argv)
    except _UsageError as exc:
        print(f"vmwrapper check-job: {exc}\n{USAGE}", file=sys.stderr)
        return EXIT_INVALID
    driver = own.get("--driver")
    as_json = bool(own.get("--json"))
    try:
        loaded = load_job(path, app_args, driver if isinstance(driver, str) else None)
    except JobFileError as exc:
        if as_json:
            print(json.dumps({
                "ok": False, "source": path,
                "errors": [issue.as_dict() for issue in exc.errors],
                "warnings": [issue.as_dict() for issue in exc.warnings],
            }, indent=2))
        else:
            for issue in [*exc.errors, *exc.warnings]:
                print(issue, file=sys.stderr)
            print(f"{path}: {len(exc.errors)} error(s); the job would not run.", file=sys.stderr)
        return EXIT_INVALID
    job = loaded.job
    project_dir = own.get("--project-dir")
    if isinstance(project_dir, str):
        job = expand_macros(job, project_dir, os.getcwd())
    drivers = candidate_drivers(job, driver if isinstance(driver, str) else None)
    if as_json:
        print(json.dumps(settings_dict(job, loaded.warnings, drivers), indent=2))
    else:
        for issue in loaded.warnings:
            print(issue, file=sys.stderr)
        print(format_settings(job, drivers))
    return EXIT_OK

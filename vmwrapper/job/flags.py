"""The application's command-line flags, as vboxwrapper and BOINC's wrapper take them.

The app version's ``<cmdline>`` and the work unit's command line reach the
wrapper as arguments; vboxwrapper and the BOINC wrapper each accept a few
(``vboxwrapper.md`` sections 1.1 and 2). We accept the union and turn them into
overrides of the job file: the flag wins, as in both programs. Unlike them, an
unknown flag or a bad value is an error naming it, not a silent default.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from dataclasses import dataclass

from vmwrapper.job.issues import COMMAND_LINE, JobFileError, JobIssue
from vmwrapper.job.model import AppFlags, JobDescription
from vmwrapper.job.values import BadValue, Integer, Kind, Number

#: Everything after this flag is passed to tasks with ``<append_cmdline_args/>``.
PASSTHROUGH = "--passthrough_child"


@dataclass(frozen=True)
class FlagSpec:
    """One flag: the :class:`AppFlags` field it sets, its value kind (None: a switch)."""

    field: str
    kind: Kind | None
    doc: str


FLAGS: dict[str, FlagSpec] = {
    "--trickle": FlagSpec("trickle", Number("seconds", example="3600"),
                          "seconds between CPU-time trickles (overrides <trickle_period>)"),
    "--nthreads": FlagSpec("nthreads", Number("CPUs", minimum=None, above=0.0, example="2"),
                           "CPUs for the VM (and $NTHREADS)"),
    "--memory_size_mb": FlagSpec("memory_size_mb",
                                 Number("megabytes", minimum=None, above=0.0, example="2048"),
                                 "VM memory (overrides <memory_size_mb>)"),
    "--vmimage": FlagSpec("vmimage", Integer("an image number", 0, example="2"),
                          "use image NAME_N.EXT instead of <image> NAME.EXT"),
    "--register_only": FlagSpec("register_only", None, "create the VM but do not run it"),
    "--sporadic": FlagSpec("sporadic", None, "sporadic app: negotiate with the client"),
    "--device": FlagSpec("device", Integer("a GPU device number", 0, example="0"),
                         "value of $GPU_DEVICE_NUM"),
    "--use_tstp": FlagSpec("use_tstp", None, "suspend host tasks with SIGTSTP, not SIGSTOP"),
}

#: AppFlags field -> the JobDescription field it overrides.
OVERRIDES = {"trickle": "trickle_period", "memory_size_mb": "memory_size_mb", "vmimage": "image"}


def parse_app_flags(argv: list[str] | tuple[str, ...]) -> AppFlags:
    """Read the application's arguments.

    :raises JobFileError: listing every unknown flag, missing or bad value.
    """
    values: dict[str, object] = {}
    errors: list[JobIssue] = []

    def error(flag: str, message: str, fix: str) -> None:
        errors.append(JobIssue(COMMAND_LINE, None, flag, message, fix))

    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == PASSTHROUGH:
            values["passthrough_args"] = tuple(args[i:])
            break
        name = arg.split("=", 1)[0]
        spec = FLAGS.get(arg)
        if spec is None:
            if name in FLAGS:
                error(arg, "joins the flag and its value with '='.",
                      f"write '{name} {arg.split('=', 1)[1]}'")
            else:
                error(arg, "is not a known option.",
                      f"use one of {', '.join(sorted([*FLAGS, PASSTHROUGH]))}")
            continue
        if spec.kind is None:
            values[spec.field] = True
            continue
        if i >= len(args) or (args[i].startswith("--") and args[i] in FLAGS):
            error(arg, "needs a value.", f"write {arg} followed by {spec.kind.describe()}")
            continue
        text = args[i]
        i += 1
        try:
            values[spec.field] = spec.kind.parse(text)
        except BadValue as exc:
            error(arg, f"{exc}.", f"write {arg} followed by {spec.kind.describe()}")
    if errors:
        raise JobFileError(errors)
    return AppFlags(**values)  # type: ignore[arg-type]


def apply_flags(job: JobDescription, flags: AppFlags) -> JobDescription:
    """The job with the flags' overrides applied and the flags recorded."""
    changes: dict[str, object] = {"flags": flags}
    if flags.trickle is not None:
        changes["trickle_period"] = flags.trickle
    if flags.memory_size_mb is not None:
        changes["memory_size_mb"] = flags.memory_size_mb
    if flags.vmimage:
        changes["image"] = numbered_image(job.image, flags.vmimage)
    return dataclasses.replace(job, **changes)


def numbered_image(image: str, number: int) -> str:
    """vboxwrapper's ``--vmimage N``: ``vm_image.vdi`` becomes ``vm_image_N.vdi``."""
    path = pathlib.PurePosixPath(image)
    return f"{path.stem}_{number}{path.suffix}"


def vm_cpus(flags: AppFlags, client_ncpus: float = 1.0) -> int:
    """CPUs for the VM: ``--nthreads`` if given, else the client's ``ncpus``, rounded up."""
    wanted = flags.nthreads if flags.nthreads is not None else client_ncpus
    return max(1, math.ceil(wanted))

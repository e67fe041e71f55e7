"""The ``vmwrapper`` command: the BOINC application, plus a few admin tools.

The BOINC client starts the main program with only the app version's and the
work unit's arguments (``--nthreads 2 --trickle 3600`` and the like), so a
first argument that is not one of the subcommands below means "run as the BOINC
application". Admin tools are subcommands; each lives in its own module and is
imported only when it is asked for, so the BOINC application starts fast.
"""

from __future__ import annotations

import importlib
import sys

from vmwrapper import __version__

#: subcommand name -> ("module", "function", "one-line help").
#: The function takes the remaining argv (list of str) and returns an exit status.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "appliance": ("vmwrapper.appliance.cli", "main", "build the guest appliance (appliance build)"),
    "check-job": ("vmwrapper.job.check", "main", "validate a job file and print the effective settings"),
    "diagnose": ("vmwrapper.diagnostics.cli", "main", "check this computer for VM jobs (the pre-boot checks)"),
    "deploy": ("vmwrapper.deploy.cli", "main", "write a BOINC app version directory (version.xml)"),
    "build-exe": ("vmwrapper.deploy.executable", "main", "build the standalone executable (PyInstaller)"),
}

#: The module and function that run the BOINC application (the wrapper issue fills it in).
APP_ENTRY: tuple[str, str] = ("vmwrapper.app", "main")


def _usage() -> str:
    lines = [
        "usage: vmwrapper [BOINC app arguments...]   run as the BOINC application",
        "       vmwrapper SUBCOMMAND [args...]        admin tools:",
    ]
    for name, (_, _, text) in sorted(SUBCOMMANDS.items()):
        lines.append(f"         {name:<14} {text}")
    lines.append("       vmwrapper --version")
    return "\n".join(lines)


def _call(module: str, function: str, argv: list[str]) -> int:
    func = getattr(importlib.import_module(module), function)
    return int(func(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand, or run the BOINC application."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"], ["help"]):
        print(_usage())
        return 0
    if args[:1] == ["--version"]:
        from vmwrapper.boinc import API_VERSION  # noqa: PLC0415 - keep startup lazy

        print(f"vmwrapper {__version__} (BOINC API {API_VERSION})")
        return 0
    if args and args[0] in SUBCOMMANDS:
        module, function, _ = SUBCOMMANDS[args[0]]
        return _call(module, function, args[1:])
    return _call(*APP_ENTRY, args)


if __name__ == "__main__":
    sys.exit(main())

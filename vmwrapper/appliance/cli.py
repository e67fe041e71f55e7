"""``vmwrapper appliance build [--output DIR] [--force]``: build or refresh the appliance."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmwrapper.appliance.builder import (
    FORMATS,
    KERNELS,
    BuildError,
    BuildOptions,
    build,
    default_output,
)
from vmwrapper.progress_bar import StepProgress


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmwrapper appliance",
                                     description="Build the boinc-vm guest appliance (needs root).")
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="build the appliance, or reuse the cached one")
    b.add_argument("--output", type=str, default=None,
                   help=f"cache directory (default {default_output()})")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    b.add_argument("--kernel", choices=sorted(KERNELS), default="cloud",
                   help="cloud: boots faster, virtio only; generic: also AHCI/e1000/floppy")
    b.add_argument("--formats", default=",".join(FORMATS),
                   help="comma-separated disk formats (qcow2 is always written)")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of the ``appliance`` subcommand; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        opts = BuildOptions(output=Path(args.output).resolve() if args.output else default_output(), kernel=args.kernel,
            formats=tuple(f for f in args.formats.split(",") if f), force=args.force)
        appliance = build(opts, log=StepProgress("appliance", expected=5))
    except BuildError as error:
        print(f"vmwrapper appliance: {error}", file=sys.stderr)
        return 1
    for fmt, path in sorted(appliance.disks.items()):
        print(f"{fmt}\t{path}")
    return 0

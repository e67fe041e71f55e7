"""``vmwrapper deploy``: write a BOINC app version of vmwrapper for a project.

Example::

    vmwrapper deploy --app cernvm --version 1.02 --platform x86_64-pc-linux-gnu \\
        --plan-class vbox64 --job job.xml --image vm_image.qcow2 --project-dir ~/projects/test

writes ``apps/cernvm/1.02/x86_64-pc-linux-gnu__vbox64/`` for BOINC's
``bin/update_versions`` and prints the ``config.xml`` ``<daemon>`` entry for
``trickle_handler``. Without ``--executable`` the standalone executable is
built (or taken from the build cache) first; run from the standalone
executable itself, that executable is deployed.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from vmwrapper.deploy.builder import DeployRequest, deploy
from vmwrapper.deploy.spec import AppVersionId, DeployError

#: Exit statuses: done, refused (bad input or existing version), usage error (argparse).
EXIT_OK = 0
EXIT_REFUSED = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmwrapper deploy",
        allow_abbrev=False,
        description="Write the app version directory a BOINC project expects "
                    "(apps/NAME/VERSION/PLATFORM__PLANCLASS/ with version.xml).",
    )
    p.add_argument("--app", required=True, metavar="NAME", help="the BOINC app's short name")
    p.add_argument("--version", required=True, metavar="X.YY", help="app version, e.g. 1.02")
    p.add_argument("--platform", default="x86_64-pc-linux-gnu",
                   help="BOINC platform (default x86_64-pc-linux-gnu)")
    p.add_argument("--plan-class", default="", metavar="CLASS",
                   help="plan class, e.g. vbox64 (default: none)")
    p.add_argument("--job", required=True, type=pathlib.Path, metavar="FILE",
                   help="the job description (job.xml); checked before anything is written")
    p.add_argument("--image", required=True, type=pathlib.Path, metavar="FILE",
                   help="the appliance image; its logical name is the job's <image>")
    p.add_argument("--executable", type=pathlib.Path, metavar="PATH",
                   help="the standalone vmwrapper (default: build it, cached)")
    p.add_argument("--compress", action="store_true",
                   help="mark the image <gzip/>: update_versions also serves it gzip-compressed")
    p.add_argument("--project-dir", type=pathlib.Path, default=pathlib.Path("."), metavar="DIR",
                   help="the BOINC project directory (default: the current directory)")
    p.add_argument("--anonymous-platform", type=pathlib.Path, metavar="OUTDIR",
                   help="also write an app_info.xml bundle to drop into a client's project dir")
    p.add_argument("--probe-dir", type=pathlib.Path, metavar="DIR",
                   help="where the appliance's probe-vmlinuz and probe-initrd are, shipped for "
                        "QEMU's KVM probe (default: beside the image, when they are there)")
    return p


def main(argv: Sequence[str]) -> int:
    """Run ``vmwrapper deploy``; a refused request prints why and writes nothing."""
    args = build_parser().parse_args(list(argv))
    try:
        version = AppVersionId.checked(args.app, args.version, args.platform, args.plan_class)
        executable = args.executable or _built_executable()
        result = deploy(DeployRequest(
            version=version, job=args.job, image=args.image, executable=executable,
            project_dir=args.project_dir, compress=args.compress,
            anonymous_platform=args.anonymous_platform, probe_dir=args.probe_dir,
        ))
    except DeployError as exc:
        print(f"vmwrapper deploy: {exc}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return EXIT_REFUSED
    for note in result.notes:
        print(f"vmwrapper deploy: note: {note}", file=sys.stderr)
    print(f"wrote {result.version_dir}:")
    for f in result.files:
        role = "main program" if f.main_program else f"logical name {f.logical_name}"
        extras = [word for word, on in (("sticky", f.sticky), ("gzip", f.gzip)) if on]
        print(f"  {f.physical_name:<60} {role}{' (' + ', '.join(extras) + ')' if extras else ''}")
    print("  version.xml")
    if result.bundle_dir is not None:
        print(f"anonymous-platform bundle: {result.bundle_dir} (copy its files into a client's "
              "projects/<project>/ directory before the client starts)")
    print("\nNext: sign the files (or keep the code-signing key on the server), run "
          "bin/update_versions in the project directory, and add to config.xml <daemons>:\n")
    print(result.daemon_entry, end="")
    return EXIT_OK


def _built_executable() -> pathlib.Path:
    """The standalone executable: this one when frozen, else the cached build."""
    if getattr(sys, "frozen", False):  # running as the PyInstaller executable: ship ourselves
        return pathlib.Path(sys.executable)
    from vmwrapper.deploy.executable import BuildError, build_executable  # noqa: PLC0415

    try:
        return build_executable(log=lambda text: print(text, file=sys.stderr))
    except BuildError as exc:
        raise DeployError(f"no --executable given and it could not be built: {exc}") from None

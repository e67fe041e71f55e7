"""``vmwrapper diagnose``: run the pre-boot host checks by hand and print what they find.

For volunteers and admins asking "can this computer run the VM jobs?": the
same checks the wrapper makes before booting (:func:`.host.check_host`), with
the reason code, the admin's detail and the volunteer's advice of each.
Exit status 0 when a job would boot (maybe at a stated cost), 1 when it would
make a temporary exit, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vmwrapper.diagnostics.findings import Verdict
from vmwrapper.diagnostics.host import HYPERVISOR_PROGRAMS, check_host

_MARK = {Verdict.OK: "ok  ", Verdict.COST: "COST", Verdict.WAIT: "WAIT"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmwrapper diagnose",
                                description="Check this computer for the VM jobs.")
    p.add_argument("--hypervisor", action="append", choices=sorted(HYPERVISOR_PROGRAMS),
                   help="hypervisor to look for, in order of preference (default: qemu, "
                        "then virtualbox); repeat for several")
    p.add_argument("--memory", type=int, default=512, metavar="MB",
                   help="the VM's memory in MiB (default 512)")
    p.add_argument("--dir", type=Path, default=Path("."),
                   help="where the VM's files would go (default: here)")
    p.add_argument("--require-acceleration", action="store_true",
                   help="count software emulation as a failure")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.memory < 64:
        _parser().error(f"--memory {args.memory}: a VM needs at least 64 MiB")
    hypervisors = tuple(args.hypervisor or ("qemu", "virtualbox"))
    diagnosis = check_host(hypervisors, args.memory, args.dir,
                           accel_required=args.require_acceleration)
    for finding in diagnosis.findings:
        print(f"[{_MARK[finding.verdict]}] {finding.check}: {finding.detail}")
        if finding.verdict is not Verdict.OK:
            print(f"       reason code {finding.reason.code}; {finding.advice}")
    if diagnosis.verdict is Verdict.WAIT:
        print(f"A job would wait {diagnosis.delay:.0f} s (temporary exit): "
              f"{diagnosis.volunteer_message()}")
        return 1
    print("A job would boot" + (" (at the cost noted above)."
                                if diagnosis.verdict is Verdict.COST else "."))
    return 0

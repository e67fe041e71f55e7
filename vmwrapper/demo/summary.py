"""The demo's closing summary: what ran, what it used, what it earned, where the logs are."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from vmwrapper.progress_bar import format_clock
from vmwrapper.testing.chain import Credit

#: Lines of the job output shown; the rest is in the output file.
OUTPUT_LINES = 15


@dataclass(frozen=True)
class DemoReport:
    """Everything the summary shows, gathered by :func:`vmwrapper.demo.steps.run_demo`."""

    result_name: str
    output: bytes
    output_file: pathlib.Path
    output_matches: bool
    cpu_time: float
    elapsed_time: float
    trickle_cpu_times: tuple[float, ...]  # cumulative, in the order the client sent them
    hostid: int
    userid: int
    teamid: int
    p_fpops: float
    credit: Credit
    database: str
    logs: dict[str, pathlib.Path]
    total_seconds: float


def render(report: DemoReport) -> str:
    """The summary as printed at the end of ``make demo``."""
    lines = [f"boinc-vm demo: {report.result_name} succeeded in "
             f"{format_clock(report.total_seconds)}", ""]
    check = ("matches the counts computed on this host" if report.output_matches
             else "DIFFERS from the counts computed on this host")
    lines.append(f"Job output ({report.output_file}, uploaded by the client; {check}):")
    text = report.output.decode(errors="replace").splitlines()
    lines += [f"  {line}" for line in text[:OUTPUT_LINES]]
    if len(text) > OUTPUT_LINES:
        lines.append(f"  ... {len(text) - OUTPUT_LINES} more lines")
    lines.append(f"CPU time:  {report.cpu_time:.1f} s used by the VM "
                 f"({report.elapsed_time:.1f} s elapsed), as the client reported it")
    values = ", ".join(f"{v:.1f}" for v in report.trickle_cpu_times)
    lines.append(f"Trickles:  {len(report.trickle_cpu_times)} sent, cumulative cpu_time "
                 f"{values or '-'} s (in the order they were sent)")
    c = report.credit
    lines.append(f"Credit:    host {report.hostid}: {c.host:.4f}, user {report.userid}: "
                 f"{c.user:.4f}, team {report.teamid}: {c.team:.4f} cobblestones "
                 f"(granted by trickle_handler at {report.p_fpops / 1e9:g} GFLOPS)")
    lines.append(f"Database:  {report.database}")
    lines.append("Logs:")
    width = max((len(name) for name in report.logs), default=0)
    lines += [f"  {name:<{width}}  {path}" for name, path in report.logs.items()]
    return "\n".join(lines) + "\n"

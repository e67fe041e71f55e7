"""The steps of the whole chain on real components, shared by the end-to-end test and the demo.

bundle -> real BOINC client -> wrapper -> guest -> uploaded, reported result
-> ``msg_from_host`` rows -> ``trickle_handler --one_pass`` -> credit. Each
step is a plain function over :class:`~vmwrapper.testing.client.BoincClient`,
:class:`~vmwrapper.testing.project_server.ProjectServer` and
:class:`~vmwrapper.testing.project_db.ProjectDatabase`, so a test asserts on
what they return and ``make demo`` prints it.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from vmwrapper.testing import scheduler_protocol as proto
from vmwrapper.testing.client import BoincClient
from vmwrapper.testing.project_db import ProjectDatabase
from vmwrapper.testing.project_server import ProjectServer, ReceivedTrickle

#: The variety of the wrapper's CPU-time trickles (vmwrapper.wrapper.trickles).
CPU_TIME_VARIETY = "cpu_time"
#: Credit per FLOP: BOINC's cobblestone, 200 per day of a 1 GFLOPS host.
COBBLESTONE_SCALE = 200 / 86400e9
#: Characters of client.log searched for the end of a task (the log grows while it runs).
LOG_WINDOW = 500_000

_CPU_TIME = re.compile(r"<cpu_time>\s*([0-9.eE+-]+)\s*</cpu_time>")
_SENT_AT = re.compile(r"<time>\s*([0-9]+)\s*</time>")


class ChainError(RuntimeError):
    """A step of the chain failed; the message says which and what was seen."""


@dataclass(frozen=True)
class Credit:
    """``total_credit`` of the host, its user and the user's team."""

    host: float
    user: float
    team: float


def install_bundle(bundle_dir: pathlib.Path, client: BoincClient,
                   server: ProjectServer) -> pathlib.Path:
    """Copy an anonymous-platform bundle into the client's dir for ``server``'s project.

    Call before the client starts (it reads ``app_info.xml`` at startup).
    Returns the client's project directory.
    """
    if not (bundle_dir / "app_info.xml").is_file():
        raise ChainError(f"{bundle_dir} has no app_info.xml: not an anonymous-platform bundle "
                         "(vmwrapper deploy --anonymous-platform writes one)")
    target = client.data_dir / "projects" / server.project_dir_name
    shutil.copytree(bundle_dir, target, dirs_exist_ok=True)
    return target


def task_finished(client: BoincClient, result_name: str) -> bool:
    """True once the client has logged the end of ``result_name``'s computation."""
    return f"Computation for task {result_name} finished" in client.log_tail(LOG_WINDOW)


def wait_for_report(client: BoincClient, server: ProjectServer, result_name: str,
                    timeout: float = 240, report_timeout: float = 60,
                    on_poll: Callable[[], None] | None = None) -> proto.ReportedResult:
    """Wait until the task ends, ask for the report at once and return it as the server got it.

    ``on_poll`` is called at each poll while the task runs (the demo prints
    trickles as they come). A client that defers its RPCs (after a task error
    it backs off for minutes) is told to update the project right away.
    """
    def finished() -> bool:
        if on_poll is not None:
            on_poll()
        return task_finished(client, result_name)

    client.wait_until(finished, timeout, f"task {result_name} to end", interval=0.5)
    client.update_project(server.url)
    return server.wait_for_result(result_name, timeout=report_timeout)


def cpu_time_trickles(server: ProjectServer) -> list[ReceivedTrickle]:
    """The CPU-time trickles the server received, in arrival order."""
    return [t for t in server.trickles if t.message.variety == CPU_TIME_VARIETY]


def in_sending_order(trickles: list[ReceivedTrickle]) -> list[ReceivedTrickle]:
    """``trickles`` ordered by the client's ``<time>`` (then CPU time), not by arrival.

    The client sends the trickles pending at an RPC in directory order, so two
    that wait for the same RPC may arrive swapped.
    """
    def key(trickle: ReceivedTrickle) -> tuple[int, float]:
        sent = _SENT_AT.search(trickle.message.xml)
        return (int(sent.group(1)) if sent else 0, claimed_cpu_time(trickle.message.xml))

    return sorted(trickles, key=key)


def claimed_cpu_time(xml: str) -> float:
    """The ``<cpu_time>`` value of a trickle's text (``msg_from_host.xml`` or the message)."""
    match = _CPU_TIME.search(xml)
    if match is None:
        raise ChainError(f"no <cpu_time> in trickle {xml!r}")
    return float(match.group(1))


def run_trickle_handler(db_url: str, log_path: pathlib.Path | None = None,
                        timeout: float = 60, cwd: pathlib.Path | None = None
                        ) -> subprocess.CompletedProcess[str]:
    """Run ``trickle_handler --db URL --one_pass`` in a child process; raise ChainError if it fails.

    Its output goes to ``log_path`` when given (and is in the returned value).
    """
    command = [sys.executable, "-m", "trickle_handler", "--db", db_url, "--one_pass"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ChainError(f"trickle_handler --one_pass did not finish within {timeout:g} s") from None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise ChainError(f"trickle_handler --one_pass exited with status {done.returncode}:\n"
                         f"{(done.stdout + done.stderr)[-2000:]}")
    return done


def credit_of(database: ProjectDatabase, hostid: int) -> Credit:
    """Total credit of ``hostid``, the project's user and its team, read from the database."""
    def total(table: str, key: int) -> float:
        rows = database.rows(f"SELECT total_credit FROM {table} WHERE id = ?", (key,))
        if not rows:
            raise ChainError(f"no {table} row with id {key} in the project database")
        return float(rows[0][0])

    return Credit(host=total("host", hostid), user=total("user", database.userid),
                  team=total("team", database.teamid))


def expected_credit(cpu_seconds: float, p_fpops: float) -> float:
    """Cobblestones for ``cpu_seconds`` on a host of ``p_fpops`` (below every cap)."""
    return cpu_seconds * p_fpops * COBBLESTONE_SCALE

"""The demo's steps, in order: build, deploy, serve, compute, report, credit.

:func:`run_demo` owns every process it starts (the BOINC client and, through
it, the wrapper and QEMU; the project server's thread; ``trickle_handler``)
and stops them on every way out, exceptions and signals included: each is
registered on one :class:`contextlib.ExitStack` as soon as it exists.

The work dir keeps what a newcomer wants to look at afterwards: ``logs/``
(client.log, the task's stderr.txt as reported, trickle_handler.log, the job
output), the project database (SQLite by default), the client's data dir and
the deployed app version. It is emptied at the start of each run; a directory
that was not made by the demo is refused rather than emptied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

from trickle_handler.db import MySQLDatabase, parse_database_url
from vmwrapper.appliance.builder import BuildOptions, build, default_output
from vmwrapper.demo import workload
from vmwrapper.demo.summary import DemoReport
from vmwrapper.deploy.builder import DeployRequest, deploy
from vmwrapper.deploy.executable import ROOT, build_executable
from vmwrapper.deploy.spec import AppVersionId
from vmwrapper.progress_bar import StepProgress
from vmwrapper.testing import scheduler_protocol as proto
from vmwrapper.testing.chain import (
    ChainError,
    claimed_cpu_time,
    cpu_time_trickles,
    credit_of,
    in_sending_order,
    install_bundle,
    run_trickle_handler,
    wait_for_report,
)
from vmwrapper.testing.client import BoincClient
from vmwrapper.testing.project_db import ProjectDatabase
from vmwrapper.testing.project_server import AUTHENTICATOR, ProjectServer, ReceivedTrickle

#: The file that marks a directory as the demo's own (so it may be emptied).
MARKER = ".boinc-vm-demo"
#: Default work dir: outside the source tree, kept after the run.
DEFAULT_WORK_DIR = pathlib.Path("/var/tmp/boinc-vm-demo")
#: MariaDB databases the demo may drop and recreate must start with this.
DB_PREFIX = "boincvm_demo"
APP_NAME = "cernvm"
APP_VERSION = "1.00"
PLATFORM = "x86_64-pc-linux-gnu"
WORKUNIT = "demo"
#: Steps announced through the progress callback (for "n/N").
STEP_COUNT = 8


class DemoFailed(RuntimeError):
    """A step of the demo failed; the message says what was seen and where to look."""


@dataclass(frozen=True)
class DemoOptions:
    """What ``python -m vmwrapper.demo`` was asked to do."""

    work_dir: pathlib.Path = DEFAULT_WORK_DIR
    #: ``mysql://...`` (a database named ``boincvm_demo...``, recreated) or None for SQLite.
    db: str | None = None
    #: Seconds of running time between CPU-time trickles (the work unit's ``--trickle``).
    trickle_period: float = 10
    #: Size of the word list the guest sorts: sets how long the job runs.
    input_bytes: int = 64 * 1024 * 1024
    #: Most seconds from the client's start to the end of the task.
    task_timeout: float = 300


@dataclass(frozen=True)
class WorkDir:
    """The demo's directories and files under one root."""

    root: pathlib.Path

    @property
    def logs(self) -> pathlib.Path:
        return self.root / "logs"

    @property
    def client(self) -> pathlib.Path:
        return self.root / "client"

    @property
    def project(self) -> pathlib.Path:
        return self.root / "project"

    @property
    def bundle(self) -> pathlib.Path:
        return self.root / "bundle"

    @property
    def sqlite(self) -> pathlib.Path:
        return self.root / "project.db"


def prepare_work_dir(root: pathlib.Path) -> WorkDir:
    """Create or empty the demo's work dir; refuse a non-empty one the demo did not make."""
    root = root.resolve()
    if root.exists():
        if not root.is_dir():
            raise DemoFailed(f"work dir {root} is not a directory")
        if any(root.iterdir()) and not (root / MARKER).exists():
            raise DemoFailed(f"work dir {root} is not empty and was not made by the demo: "
                             "choose another --work-dir (everything in it is deleted at each run)")
        for entry in root.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by python -m vmwrapper.demo; emptied at each run\n")
    work = WorkDir(root)
    for path in (work.logs, work.project):
        path.mkdir()
    return work


def prepare_database(url: str | None, work: WorkDir) -> str:
    """The project database's URL, fresh: SQLite in the work dir, or a recreated MariaDB database."""
    if url is None:
        return f"sqlite:///{work.sqlite}"
    parsed = parse_database_url(url)  # BadDatabaseURL names the valid forms
    if parsed.scheme == "sqlite":
        path = pathlib.Path(parsed.database)
        if path.exists():
            raise DemoFailed(f"--db {url}: {path} exists; the demo needs a new database file")
        return url
    if not re.fullmatch(DB_PREFIX + r"\w*", parsed.database, re.ASCII):
        raise DemoFailed(f"--db {url}: the demo drops and recreates its database, so its name "
                         f"must be {DB_PREFIX!r} followed by letters, digits or '_'; "
                         f"{parsed.database!r} is not")
    admin = MySQLDatabase(dataclasses.replace(parsed, database="mysql"))
    admin.connect()  # ConnectionLostError says where it tried
    try:
        admin.execute(f"DROP DATABASE IF EXISTS `{parsed.database}`")
        admin.execute(f"CREATE DATABASE `{parsed.database}`")
    finally:
        admin.close()
    return url


class TrickleWatcher:
    """Reports each CPU-time trickle as the server receives it (called while the task runs)."""

    def __init__(self, server: ProjectServer, note: Callable[[str], None]) -> None:
        self.server = server
        self.note = note
        self.seen = 0

    def __call__(self) -> None:
        for trickle in cpu_time_trickles(self.server)[self.seen:]:
            self.seen += 1
            self.note(f"trickle {self.seen} received: cpu_time "
                      f"{claimed_cpu_time(trickle.message.xml):.1f} s")


def _stop_client(client: BoincClient, work: WorkDir) -> None:
    """Stop the client and every process in its dir, then keep its log."""
    client.stop()
    if client.log_path.exists():
        shutil.copyfile(client.log_path, work.logs / "client.log")


def build_and_deploy(work: WorkDir, step: Callable[[str], None],
                     note: Callable[[str], None]) -> AppVersionId:
    """Steps 1-3: the appliance and the executable (cached), deployed as a bundle in ``work``."""
    step("appliance: vmwrapper appliance build (cached; the first build takes about 65 s)")
    appliance = build(BuildOptions(output=default_output(), formats=("qcow2",)),
                      log=StepProgress("           appliance"))
    note(f"image: {appliance.qcow2}")

    step("executable: vmwrapper build-exe (cached; a build takes 10-30 s)")
    executable = build_executable(log=note)
    note(f"executable: {executable}")

    step("deploy: vmwrapper deploy --anonymous-platform with the top-level job.xml")
    version = AppVersionId.checked(APP_NAME, APP_VERSION, PLATFORM)
    deployed = deploy(DeployRequest(
        version=version, job=ROOT / "job.xml", image=appliance.qcow2, executable=executable,
        project_dir=work.project, anonymous_platform=work.bundle))
    note(f"app version: {deployed.version_dir}, bundle: {deployed.bundle_dir}")
    return version


def check_reported(reported: proto.ReportedResult, server: ProjectServer,
                   work: WorkDir) -> tuple[bytes, list[ReceivedTrickle]]:
    """The uploaded output and the trickles of a task that must have succeeded; keeps its logs."""
    (work.logs / "stderr.txt").write_text(reported.stderr_out)
    if reported.exit_status != 0:
        tail = "\n".join(reported.stderr_out.splitlines()[-15:])
        raise DemoFailed(f"the task ended with exit status {reported.exit_status}; "
                         f"the end of its stderr.txt:\n{tail}")
    output = server.uploads.get(f"{reported.name}_out")
    if output is None:
        raise DemoFailed(f"the client reported {reported.name} but never uploaded its "
                         f"output (uploads: {sorted(server.uploads)})")
    (work.logs / "job_output.txt").write_bytes(output)
    trickles = cpu_time_trickles(server)
    if not trickles:
        raise DemoFailed("the task ended but no CPU-time trickle reached the project")
    return output, trickles


def run_demo(options: DemoOptions, step: Callable[[str], None], note: Callable[[str], None],
             clock: Callable[[], float] = time.monotonic) -> DemoReport:
    """Run the whole chain; ``step`` announces each step, ``note`` prints details.

    :raises DemoFailed, ChainError: a step failed (the message says which and why); so do
        the builders', deploy's and the database's own errors.
    """
    started = clock()
    work = prepare_work_dir(options.work_dir)
    db_url = prepare_database(options.db, work)  # a bad --db is refused before any build
    note(f"work dir: {work.root}, project database {parse_database_url(db_url).redacted()}")
    version = build_and_deploy(work, step, note)

    with contextlib.ExitStack() as stack:
        step("project: the test project server with its database")
        server = stack.enter_context(ProjectServer(project_name="boinc-vm demo"))
        database = ProjectDatabase(db_url).attach(server)
        work_input = workload.make_workload(options.input_bytes)
        (work.root / "job_input.txt").write_bytes(work_input.input)  # to check the output by hand
        wu = server.add_workunit(
            WORKUNIT, app_name=APP_NAME, version_num=version.version_num,
            command_line=f"--trickle {options.trickle_period:g}",
            input_files={"in": work_input.input})
        note(f"project {server.url}; work unit {wu.name}: {len(work_input.input) / 1e6:.0f} MB "
             f"of words to count in the guest, a CPU-time trickle every "
             f"{options.trickle_period:g} s")

        step("client: a real BOINC client attached to the project, with the bundle")
        client = BoincClient(work.client)
        stack.callback(_stop_client, client, work)
        install_bundle(work.bundle, client, server)
        client.start(attach=(server.url, AUTHENTICATOR))
        note(f"client pid {client.pid}, data dir {work.client}")

        step("job: the wrapper boots the appliance under QEMU and runs the job in the guest")
        reported = wait_for_report(client, server, wu.result_name, timeout=options.task_timeout,
                                   on_poll=TrickleWatcher(server, note))
        output, trickles = check_reported(reported, server, work)
        hostid = trickles[0].hostid
        if len(trickles) < 2:
            note(f"only the final trickle was sent: the task ran less than --trickle "
                 f"{options.trickle_period:g} s (a faster VM, e.g. under KVM?); give a larger "
                 "--input-mb or a smaller --trickle to see periodic ones")
        note(f"result {wu.result_name} uploaded and reported: exit status 0, "
             f"{reported.final_cpu_time:.1f} s CPU, {len(trickles)} trickle(s)")

        step("credit: trickle_handler --one_pass on the project database")
        run_trickle_handler(db_url, work.logs / "trickle_handler.log", cwd=ROOT)
        [(p_fpops,)] = database.rows("SELECT p_fpops FROM host WHERE id = ?", (hostid,))
        credit = credit_of(database, hostid)
        [(unhandled,)] = database.rows("SELECT COUNT(*) FROM msg_from_host WHERE handled = 0")
        if unhandled:
            raise ChainError(f"trickle_handler left {unhandled} messages unhandled")

    return DemoReport(
        result_name=wu.result_name, output=output, output_file=work.logs / "job_output.txt",
        output_matches=output == work_input.expected_output,
        cpu_time=reported.final_cpu_time, elapsed_time=reported.final_elapsed_time,
        trickle_cpu_times=tuple(claimed_cpu_time(t.message.xml)
                                for t in in_sending_order(trickles)),
        hostid=hostid, userid=database.userid, teamid=database.teamid, p_fpops=float(p_fpops),
        credit=credit, database=parse_database_url(db_url).redacted(),
        logs={"client log": work.logs / "client.log", "task stderr.txt": work.logs / "stderr.txt",
              "trickle_handler": work.logs / "trickle_handler.log", "work dir": work.root},
        total_seconds=clock() - started,
    )

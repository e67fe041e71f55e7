"""Run one real BOINC client (``/usr/bin/boinc``) in a private data dir.

The client gets its own GUI RPC port, preferences that never suspend it for
other load (boinc_protocol.md 10.1), verbose log flags, no GUI RPC password,
and apps on the anonymous platform written before it starts (section 9). It
is started in its own session; :meth:`BoincClient.stop` kills it, every
process in its session and every process whose cwd is in its slots (its
apps), and an ``atexit`` hook does the same for clients nobody stopped.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from xml.sax.saxutils import escape

from vmwrapper.boinc import API_VERSION
from vmwrapper.testing import processes
from vmwrapper.testing.tasks import TaskInfo, parse_get_tasks

BOINC = "/usr/bin/boinc"
BOINCCMD = "/usr/bin/boinccmd"

#: Log flags for cc_config.xml: enough to debug the harness from client.log.
LOG_FLAGS = (
    "task", "task_debug", "sched_op_debug", "trickle_debug", "file_xfer",
    "app_msg_send", "cpu_sched", "slot_debug",
)

#: Text in boinccmd's output that means the command failed. boinccmd 7.20.5 exits
#: 255 after "Operation failed" and 1 when it cannot connect or authorize, but 0
#: after "Unknown op" or a rejected attach, so both are checked.
_BOINCCMD_FAILURES = (
    "Operation failed", "GUI RPC error", "Authorization failure", "authentication error",
    "can't connect", "Unknown op",
)

_live_clients: set[BoincClient] = set()
_live_lock = threading.Lock()


class BoinccmdError(RuntimeError):
    """boinccmd reported a failure (its exit status is useless: always 0)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def project_dir_name(master_url: str) -> str:
    """The client's ``projects/`` subdirectory for ``master_url`` (lib/url.cpp rule)."""
    rest = master_url.split("://", 1)[-1]
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in rest)
    return name.rstrip("_")


def check_project_url(master_url: str) -> str:
    """Refuse URLs the client rejects (``localhost``) or that leave this machine."""
    if not master_url.startswith(("http://127.0.0.1:", "http://127.0.0.1/")):
        raise ValueError(
            f"project URL {master_url!r}: use http://127.0.0.1[:PORT]/...; the client calls "
            "'localhost' URLs invalid, and the harness talks to this machine only"
        )
    return master_url


def global_prefs_xml(leave_apps_in_memory: bool = False, disk_interval: float = 60) -> str:
    """Preferences that let tasks run whatever else the machine is doing.

    ``disk_interval`` is the checkpoint period the app sees in init_data.xml.
    """
    prefs = {
        "run_on_batteries": 1, "run_if_user_active": 1, "run_gpu_if_user_active": 1,
        "suspend_cpu_usage": 0, "cpu_usage_limit": 100, "max_ncpus_pct": 100,
        "work_buf_min_days": 0.01, "work_buf_additional_days": 0,
        "leave_apps_in_memory": int(leave_apps_in_memory), "disk_interval": disk_interval,
    }
    body = "".join(f"    <{k}>{v}</{k}>\n" for k, v in prefs.items())
    return f"<global_preferences>\n{body}</global_preferences>\n"


def cc_config_xml(log_flags: Sequence[str] = LOG_FLAGS, no_priority_change: bool = True) -> str:
    """cc_config.xml: verbose log flags; ``no_priority_change`` runs apps at normal priority."""
    flags = "".join(f"        <{flag}>1</{flag}>\n" for flag in log_flags)
    options = f"    <options>\n        <no_priority_change>{int(no_priority_change)}</no_priority_change>\n    </options>\n"
    return f"<cc_config>\n    <log_flags>\n{flags}    </log_flags>\n{options}</cc_config>\n"


def app_info_xml(app_name: str, main_program: str, other_files: Sequence[str], version_num: int,
                 api_version: str, avg_ncpus: float | None, cmdline: str | None) -> str:
    """An anonymous-platform app_info.xml; ``<api_version>`` gives the app shared memory."""
    lines = [
        "<app_info>",
        f"  <app><name>{escape(app_name)}</name>"
        f"<user_friendly_name>{escape(app_name)}</user_friendly_name></app>",
    ]
    for name in [main_program, *other_files]:
        lines.append(f"  <file_info><name>{escape(name)}</name><executable/></file_info>")
    lines += [
        "  <app_version>",
        f"    <app_name>{escape(app_name)}</app_name>",
        f"    <version_num>{version_num}</version_num>",
        f"    <api_version>{escape(api_version)}</api_version>",
    ]
    if avg_ncpus is not None:
        lines.append(f"    <avg_ncpus>{avg_ncpus:g}</avg_ncpus>")
    if cmdline:
        lines.append(f"    <cmdline>{escape(cmdline)}</cmdline>")
    lines.append(f"    <file_ref><file_name>{escape(main_program)}</file_name><main_program/></file_ref>")
    for name in other_files:
        lines.append(f"    <file_ref><file_name>{escape(name)}</file_name></file_ref>")
    lines += ["  </app_version>", "</app_info>"]
    return "\n".join(lines) + "\n"


class BoincClient:
    """One real BOINC client with its data dir, GUI RPC port and log.

    Configure (``install_app``) before :meth:`start`; stop with :meth:`stop`
    (always safe, also after a crash). ``data_dir`` must not be shared with
    another client.

    ``no_priority_change`` (default on) keeps apps at normal priority instead
    of nice 19 + SCHED_IDLE: on a machine shared with other busy work, idle
    priority can starve the app for seconds and make latency tests flaky.
    Turn it off to run apps exactly as volunteers' clients do.
    """

    def __init__(
        self,
        data_dir: pathlib.Path,
        *,
        gui_rpc_port: int | None = None,
        leave_apps_in_memory: bool = False,
        checkpoint_period: float = 60,
        no_priority_change: bool = True,
        boinc: str = BOINC,
        boinccmd: str = BOINCCMD,
    ) -> None:
        self.data_dir = pathlib.Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.gui_rpc_port = gui_rpc_port or free_port()
        self.leave_apps_in_memory = leave_apps_in_memory
        self.checkpoint_period = checkpoint_period
        self.no_priority_change = no_priority_change
        self.log_path = self.data_dir / "client.log"
        self._boinc = boinc
        self._boinccmd = boinccmd
        self._process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self._write_config()

    # -- configuration (before start) ---------------------------------------
    def _write_config(self) -> None:
        (self.data_dir / "global_prefs_override.xml").write_text(
            global_prefs_xml(self.leave_apps_in_memory, self.checkpoint_period)
        )
        (self.data_dir / "cc_config.xml").write_text(
            cc_config_xml(no_priority_change=self.no_priority_change)
        )
        # An empty password file written before the start turns GUI RPC auth off.
        (self.data_dir / "gui_rpc_auth.cfg").write_text("")

    def install_app(
        self,
        master_url: str,
        app_name: str,
        files: Mapping[str, bytes],
        main_program: str,
        *,
        version_num: int = 100,
        api_version: str = API_VERSION,
        avg_ncpus: float | None = None,
        cmdline: str | None = None,
    ) -> pathlib.Path:
        """Put an anonymous-platform app into ``projects/<dir of master_url>/``.

        ``files`` maps file names to contents; all are made executable.
        Returns the project dir. Call before :meth:`start` (the client reads
        app_info.xml at startup).
        """
        if main_program not in files:
            raise ValueError(f"main program {main_program!r} is not among the files {sorted(files)}")
        check_project_url(master_url)
        project_dir = self.data_dir / "projects" / project_dir_name(master_url)
        project_dir.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            path = project_dir / name
            path.write_bytes(content)
            path.chmod(0o755)
        others = [name for name in files if name != main_program]
        (project_dir / "app_info.xml").write_text(
            app_info_xml(app_name, main_program, others, version_num, api_version, avg_ncpus, cmdline)
        )
        return project_dir

    # -- lifecycle ----------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self, attach: tuple[str, str] | None = None, extra_args: Sequence[str] = (),
              timeout: float = 30) -> None:
        """Start the client (attached to ``(master_url, authenticator)`` if given).

        Returns when GUI RPC answers. The client runs in its own session so a
        terminal's signals do not reach it; its output goes to ``client.log``.
        """
        if self._process is not None:
            raise RuntimeError(f"client in {self.data_dir} already started (pid {self.pid})")
        args = [
            self._boinc, "--dir", str(self.data_dir), "--gui_rpc_port", str(self.gui_rpc_port),
            "--no_gpus", "--skip_cpu_benchmarks", "--no_info_fetch", *extra_args,
        ]
        if attach is not None:
            url, authenticator = attach
            args += ["--attach_project", check_project_url(url), authenticator]
        with open(self.log_path, "ab") as log:
            try:
                self._process = subprocess.Popen(
                    args, cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as exc:
                raise RuntimeError(
                    f"cannot run the BOINC client {self._boinc}: {exc.strerror or exc} "
                    "(scripts/bootstrap.sh installs Debian's boinc-client)"
                ) from None
        self.started_at = time.time()
        with _live_lock:
            _live_clients.add(self)
        self.wait_until(lambda: self._rpc_answers(), timeout, "GUI RPC to answer")

    def _rpc_answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(
                f"boinc exited with status {self._process.returncode}; log:\n{self.log_tail()}"
            )
        try:
            self.boinccmd("--get_cc_status")
        except BoinccmdError:
            return False
        return True

    def kill_client_only(self) -> None:
        """SIGKILL the client process but leave its apps alone (to test client death)."""
        if self._process is None:
            raise RuntimeError("client not started")
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(10)

    def stop(self, graceful: bool = False, timeout: float = 20) -> list[int]:
        """Stop the client and kill every process in the data dir; idempotent.

        ``graceful`` first asks the client to quit (it tells its apps to quit
        and saves its state); otherwise everything is SIGKILLed at once, which
        is what tests want. Returns the PIDs that had to be killed.
        """
        if graceful and self._process is not None and self._process.poll() is None:
            try:
                self.boinccmd("--quit")
                self._process.wait(timeout)
            except (BoinccmdError, subprocess.TimeoutExpired):
                pass
        killed = []
        if self._process is not None:
            if self._process.poll() is None:
                try:
                    os.killpg(self._process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                killed.append(self._process.pid)
            self._process.wait(timeout)
        killed += processes.kill_all(self.owned_pids, what=f"processes of the client in {self.data_dir}")
        with _live_lock:
            _live_clients.discard(self)
        return killed

    def __enter__(self) -> BoincClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def app_pids(self) -> list[int]:
        """PIDs of processes running in the client's slots (its apps)."""
        return processes.pids_inside(self.data_dir / "slots")

    def owned_pids(self) -> list[int]:
        """The client and everything it started: what :meth:`stop` kills.

        That is every process in ``slots/`` (apps, and whatever they started
        there, even in a new session) plus processes in the data dir that are
        in the client's session. A stranger whose cwd merely happens to be the
        data dir is left alone.
        """
        owned = set(self.app_pids())
        if self._process is not None:
            session = self._process.pid  # started with start_new_session
            owned.update(pid for pid in processes.pids_inside(self.data_dir)
                         if processes.session_of(pid) == session)
        return sorted(owned)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def save_log(self, destination: pathlib.Path) -> pathlib.Path:
        """Copy client.log to ``destination`` (a file path); returns it."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.log_path, destination)
        return destination

    # -- GUI RPC via boinccmd ------------------------------------------------
    def boinccmd(self, *args: str, timeout: float = 30) -> str:
        """Run ``boinccmd`` against this client; raise BoinccmdError on failure.

        boinccmd exits 0 after most failures, so its output is checked too.
        """
        command = [self._boinccmd, "--host", f"127.0.0.1:{self.gui_rpc_port}", *args]
        done = subprocess.run(
            command, cwd=self.data_dir, capture_output=True, text=True, timeout=timeout
        )
        output = done.stdout + done.stderr
        bad = [word for word in _BOINCCMD_FAILURES if word in output]
        if done.returncode != 0 or bad:
            raise BoinccmdError(f"{' '.join(args)}: exit {done.returncode}: {output.strip()!r}")
        return done.stdout

    def get_tasks(self) -> list[TaskInfo]:
        return parse_get_tasks(self.boinccmd("--get_tasks"))

    def task(self, result_name: str) -> TaskInfo | None:
        """The client's view of ``result_name``, or None if it has no such task."""
        return next((t for t in self.get_tasks() if t.name == result_name), None)

    def wait_for_task(self, result_name: str, predicate: Callable[[TaskInfo], bool],
                      timeout: float, what: str = "the expected state") -> TaskInfo:
        """Poll ``--get_tasks`` until ``result_name`` satisfies ``predicate``."""
        found: list[TaskInfo] = []

        def check() -> bool:
            task = self.task(result_name)
            if task is not None and predicate(task):
                found.append(task)
                return True
            return False

        self.wait_until(check, timeout, f"task {result_name} to reach {what}", interval=0.25)
        return found[0]

    def task_op(self, master_url: str, result_name: str, op: str) -> None:
        """``suspend``, ``resume`` or ``abort`` one task."""
        if op not in ("suspend", "resume", "abort"):
            raise ValueError(f"task op {op!r}: use suspend, resume or abort")
        self.boinccmd("--task", master_url, result_name, op)

    def update_project(self, master_url: str) -> None:
        """Ask for a scheduler RPC now (also clears the RPC back-off)."""
        self.boinccmd("--project", master_url, "update")

    def set_run_mode(self, mode: str) -> None:
        if mode not in ("always", "auto", "never"):
            raise ValueError(f"run mode {mode!r}: use always, auto or never")
        self.boinccmd("--set_run_mode", mode)

    def set_leave_apps_in_memory(self, enabled: bool) -> None:
        """Rewrite the preference override and make the running client read it."""
        self.leave_apps_in_memory = enabled
        (self.data_dir / "global_prefs_override.xml").write_text(
            global_prefs_xml(enabled, self.checkpoint_period)
        )
        self.boinccmd("--read_global_prefs_override")

    # -- helpers -------------------------------------------------------------
    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str,
                   interval: float = 0.2) -> None:
        """Poll ``condition`` until true; TimeoutError with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"waited {timeout:g} s for {what}; client log tail:\n{self.log_tail(2000)}"
                )
            time.sleep(interval)


def _kill_forgotten_clients() -> None:
    with _live_lock:
        clients = list(_live_clients)
    for client in clients:
        try:
            client.stop()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


atexit.register(_kill_forgotten_clients)

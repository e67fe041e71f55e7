"""The client manager's files, boinccmd checks and process cleanup, without a real client.

``BoincClient`` takes the boinc and boinccmd programs as arguments; here they
are small shell scripts, so cleanup is tested on real processes in a second.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from vmwrapper.boinc import API_VERSION
from vmwrapper.testing import client as client_module
from vmwrapper.testing import processes
from vmwrapper.testing.client import BoincClient, BoinccmdError, project_dir_name


def script(path: pathlib.Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def test_project_dir_name_follows_the_client_rule():
    assert project_dir_name("http://127.0.0.1:18766/fake/") == "127.0.0.1_18766_fake"
    assert project_dir_name("https://a.b/x?y=1") == "a.b_x_y_1"


def test_configuration_files_written_before_start(tmp_path):
    client = BoincClient(tmp_path / "d", leave_apps_in_memory=True, checkpoint_period=5)
    prefs = (tmp_path / "d" / "global_prefs_override.xml").read_text()
    assert "<leave_apps_in_memory>1</leave_apps_in_memory>" in prefs
    assert "<suspend_cpu_usage>0</suspend_cpu_usage>" in prefs
    assert "<disk_interval>5</disk_interval>" in prefs
    cc_config = (tmp_path / "d" / "cc_config.xml").read_text()
    assert "<trickle_debug>1</trickle_debug>" in cc_config
    assert "<no_priority_change>1</no_priority_change>" in cc_config
    assert (tmp_path / "d" / "gui_rpc_auth.cfg").read_text() == ""
    assert 0 < client.gui_rpc_port < 65536


def test_install_app_writes_anonymous_platform_files(tmp_path):
    client = BoincClient(tmp_path / "d")
    project = client.install_app("http://127.0.0.1:9/fake/", "vmtest",
                                 {"main.py": b"#!/bin/true\n", "lib.so": b""}, "main.py")
    assert project == tmp_path / "d" / "projects" / "127.0.0.1_9_fake"
    assert os.access(project / "main.py", os.X_OK)
    info = (project / "app_info.xml").read_text()
    assert f"<api_version>{API_VERSION}</api_version>" in info
    assert "<file_ref><file_name>main.py</file_name><main_program/></file_ref>" in info
    assert "<file_ref><file_name>lib.so</file_name></file_ref>" in info


@pytest.mark.parametrize("url, files, main, complaint", [
    ("http://localhost/fake/", {"m": b""}, "m", "use http://127.0.0.1"),
    ("http://example.org/fake/", {"m": b""}, "m", "this machine only"),
    ("http://127.0.0.1:9/fake/", {"m": b""}, "x", "main program 'x' is not among"),
])
def test_install_app_rejects_bad_input(tmp_path, url, files, main, complaint):
    with pytest.raises(ValueError, match=complaint):
        BoincClient(tmp_path / "d").install_app(url, "vmtest", files, main)


def test_real_boinccmd_failure_is_an_error_despite_its_exit_status(tmp_path):
    client = BoincClient(tmp_path / "d", gui_rpc_port=client_module.free_port())
    with pytest.raises(BoinccmdError, match="can't connect"):
        client.boinccmd("--get_tasks")


def test_boinccmd_error_text_with_exit_zero_is_an_error(tmp_path):
    fake = script(tmp_path / "boinccmd", 'echo "Operation failed: authentication error"\n')
    client = BoincClient(tmp_path / "d", boinccmd=fake)
    with pytest.raises(BoinccmdError, match="authentication error"):
        client.boinccmd("--task", "u", "r", "suspend")
    with pytest.raises(ValueError, match="task op 'pause'"):
        client.task_op("u", "r", "pause")


def fake_client(tmp_path: pathlib.Path) -> BoincClient:
    """A 'client' that starts an 'app' in slots/0 which leaves the client's session."""
    boinc = script(tmp_path / "boinc", """\
        mkdir -p slots/0
        (cd slots/0 && exec setsid sleep 300) &
        exec sleep 300
    """)
    boinccmd = script(tmp_path / "boinccmd", "exit 0\n")
    return BoincClient(tmp_path / "d", boinc=boinc, boinccmd=boinccmd)


def started_app(client: BoincClient) -> int:
    """The fake app's PID, once it is ``sleep`` (the shell forks and execs on the way)."""

    def command_name(pid: int) -> str:
        try:
            return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
        except FileNotFoundError:  # the shell on the way exited between listing and reading
            return ""

    def sleepers() -> list[int]:
        return [pid for pid in client.app_pids() if command_name(pid) == "sleep"]

    client.wait_until(lambda: len(sleepers()) == 1, 5, "the fake app")
    return sleepers()[0]


def test_stop_kills_the_client_and_apps_that_left_its_session(tmp_path):
    client = fake_client(tmp_path)
    client.start()
    app = started_app(client)
    assert client.pid in processes.pids_inside(client.data_dir)
    killed = client.stop()
    assert client.pid in killed and app in killed
    assert processes.pids_inside(client.data_dir) == []
    assert client.stop() == []  # idempotent
    assert client not in client_module._live_clients


def test_kill_client_only_leaves_the_app(tmp_path):
    client = fake_client(tmp_path)
    client.start()
    try:
        app = started_app(client)
        client.kill_client_only()
        assert not processes.is_running(client.pid)
        assert processes.is_running(app) and client.app_pids() == [app]
    finally:
        client.stop()
    assert client.app_pids() == []


def test_client_that_exits_at_once_is_reported_with_its_log(tmp_path):
    boinc = script(tmp_path / "boinc", 'echo "cannot open data dir"; exit 3\n')
    boinccmd = script(tmp_path / "boinccmd", 'echo "can\'t connect to 127.0.0.1"\n')
    client = BoincClient(tmp_path / "d", boinc=boinc, boinccmd=boinccmd)
    try:
        with pytest.raises(RuntimeError, match=r"(?s)exited with status 3.*cannot open data dir"):
            client.start(timeout=10)
    finally:
        client.stop()


def test_pids_inside_sees_only_that_directory(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    inside = subprocess.Popen(["sleep", "30"], cwd=tmp_path / "in")
    outside = subprocess.Popen(["sleep", "30"], cwd=tmp_path / "out")
    try:
        assert processes.pids_inside(tmp_path / "in") == [inside.pid]
        assert processes.kill_all_inside(tmp_path / "in") == [inside.pid]
        inside.wait(5)
        assert processes.is_running(outside.pid)
    finally:
        for process in (inside, outside):
            process.kill()
            process.wait()
    assert not processes.is_running(outside.pid)


def test_missing_client_program_says_how_to_install_it(tmp_path):
    client = BoincClient(tmp_path / "d", boinc=str(tmp_path / "no-boinc"))
    with pytest.raises(RuntimeError, match="bootstrap.sh installs Debian's boinc-client"):
        client.start()


def test_atexit_safety_net_kills_a_client_nobody_stopped(tmp_path):
    fake_client(tmp_path)  # writes the fake programs
    forgetful = textwrap.dedent(f"""\
        from tests.unit.testing.test_client import started_app
        from vmwrapper.testing.client import BoincClient
        client = BoincClient({str(tmp_path / "d")!r}, boinc={str(tmp_path / "boinc")!r},
                             boinccmd={str(tmp_path / "boinccmd")!r})
        client.start()
        print(client.pid, started_app(client))
    """)
    done = subprocess.run([sys.executable, "-c", forgetful], capture_output=True, text=True,
                          timeout=30, check=True, cwd=pathlib.Path(__file__).parents[3])
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2
    assert not [pid for pid in pids if processes.is_running(pid)]
    assert processes.pids_inside(tmp_path / "d") == []


def test_stop_spares_a_stranger_in_the_data_dir(tmp_path):
    client = fake_client(tmp_path)
    stranger = subprocess.Popen(["setsid", "sleep", "30"], cwd=client.data_dir)
    try:
        client.start()
        started_app(client)
        assert stranger.pid not in client.owned_pids()
        client.stop()
        assert processes.is_running(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


def test_start_refuses_to_attach_elsewhere(tmp_path):
    client = fake_client(tmp_path)
    with pytest.raises(ValueError, match="use http://127.0.0.1"):
        client.start(attach=("http://localhost:80/fake/", "auth"))
    assert client.pid is None

"""``python -m vmwrapper.demo`` (what ``make demo`` runs), end to end on real components.

The full run builds (cached) the appliance and the executable, runs the real
BOINC client, QEMU and trickle_handler, and the test checks the summary
against the files and the database the demo leaves behind. A second run is
interrupted with SIGINT while the VM runs: exit 130 and no process left.
The quick tests check refusals that must happen before anything is built.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from vmwrapper.testing.chain import COBBLESTONE_SCALE
from vmwrapper.testing.parentdeath import die_with_parent
from vmwrapper.testing.processes import kill_all_inside, pids_inside

DEMO = [sys.executable, "-m", "vmwrapper.demo"]


def _require_chain() -> None:
    """Skip, naming what is missing, when the whole chain cannot run here."""
    from tests.integration.hypervisor.harness_qemu import require_qemu
    from vmwrapper.testing.client import BOINC

    require_qemu()
    if os.geteuid() != 0:
        pytest.skip("the demo builds the appliance: it needs root")
    if not os.path.exists(BOINC):
        pytest.skip(f"the BOINC client {BOINC} is missing (scripts/bootstrap.sh installs it)")


@pytest.fixture
def demo_process(request, tmp_path):
    """Start the demo in ``tmp_path/work``; kill it and everything in its work dir at the end.

    Should pytest itself be killed (no finalizer runs then), the demo gets SIGTERM
    from the kernel and stops everything it started, as on Ctrl-C.
    """
    started: list[subprocess.Popen[str]] = []
    work = tmp_path / "work"

    def start(*args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [*DEMO, "--work-dir", str(work), *args], cwd=ROOT, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
        started.append(process)
        return process

    def stop() -> None:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        if work.exists():
            kill_all_inside(work)

    request.addfinalizer(stop)
    start.work = work  # type: ignore[attr-defined]
    return start


def _summary_value(summary: str, label: str) -> str:
    match = re.search(rf"^{label}:\s+(.*)$", summary, re.MULTILINE)
    assert match, f"no {label!r} line in the summary:\n{summary}"
    return match.group(1)


@pytest.mark.qemu
@pytest.mark.boinc_client
def test_demo_runs_the_whole_chain_and_summarises_it(demo_process):
    _require_chain()
    process = demo_process()
    out, err = process.communicate(timeout=300)
    work = demo_process.work
    assert process.returncode == 0, err[-4000:]

    # progress: a line per step, numbered, with the elapsed time
    for n in range(1, 9):
        assert re.search(rf"^demo \[{n}/8 \d+:\d\d\] ", err, re.MULTILINE), err
    assert re.search(r"^ +\d+:\d\d  trickle 1 received: cpu_time [0-9.]+ s$", err, re.MULTILINE)

    # job output: the uploaded file, shown and kept, equal to the host's own count
    assert "matches the counts computed on this host" in out, out
    output = (work / "logs" / "job_output.txt").read_text()
    with open(work / "job_input.txt") as words:  # the work unit's input, kept by the demo
        expected = subprocess.run(["sh", "-c", "sort | uniq -c"], env={"LC_ALL": "C"}, text=True,
                                  stdin=words, capture_output=True, check=True).stdout
    assert output == expected
    assert all(line in out for line in output.splitlines())

    # trickles: at least a periodic one and the final one, cumulative
    trickles = [float(v) for v in re.findall(
        r"[0-9.]+", _summary_value(out, "Trickles").split("cpu_time", 1)[1])]
    assert len(trickles) >= 2 and trickles == sorted(trickles), out
    assert f"Trickles:  {len(trickles)} sent" in out
    cpu = float(re.match(r"([0-9.]+) s", _summary_value(out, "CPU time")).group(1))
    assert 20 < cpu and trickles[-1] <= cpu + 0.1

    # credit: as printed, as stored, and as the CPU time at 1 GFLOPS gives it
    with sqlite3.connect(work / "project.db") as db:
        [(hostid, host_credit)] = db.execute("SELECT id, total_credit FROM host").fetchall()
        [(user_credit,)] = db.execute("SELECT total_credit FROM user").fetchall()
        [(team_credit,)] = db.execute("SELECT total_credit FROM team").fetchall()
        messages = db.execute("SELECT id, handled, create_time FROM msg_from_host "
                              "ORDER BY id").fetchall()
        reasons = dict(db.execute("SELECT msgid, reason FROM trickle_reason").fetchall())
        [(credited_cpu,)] = db.execute("SELECT credited_cpu FROM trickle_result_state").fetchall()
        [(outcome, reported_cpu)] = db.execute("SELECT outcome, cpu_time FROM result").fetchall()
    assert len(messages) == len(trickles) and all(h in (1, 2) for _, h, _ in messages)
    # A trickle that reached the project in the same scheduler request as an earlier one of the
    # result has no server wall time of its own (credit_rules.md section 8.3), or, when the
    # client sent the two out of order, a smaller cumulative value than the one credited: it is
    # handled without credit, on record with that reason; every other one is credited.
    credited_times = [t for _, h, t in messages if h == 1]
    for msgid, h, create_time in messages:
        if h == 2:
            assert reasons[msgid] in ("no_wall_time", "cpu_time_regression"), messages
            assert create_time in credited_times, messages
    assert outcome == 1 and reported_cpu == pytest.approx(cpu, abs=0.05)
    assert host_credit == user_credit == team_credit
    # The credit is the CPU time credited at 1 GFLOPS; that is all the CPU time trickled unless
    # a cap or a same-request trickle left a remainder, which is then on record with its reason.
    assert host_credit == pytest.approx(credited_cpu * 1e9 * COBBLESTONE_SCALE, rel=1e-9)
    assert 0 < credited_cpu <= max(trickles) + 0.05
    if not set(reasons.values()) & {"capped_wall_time", "capped_max_runtime", "no_wall_time"}:
        assert credited_cpu == pytest.approx(max(trickles), abs=0.05)  # printed to 0.1 s
    assert re.search(rf"host {hostid}: {host_credit:.4f}, user 7: {user_credit:.4f}, "
                     rf"team 1: {team_credit:.4f} cobblestones", out), out

    # logs: where the summary says, with what they should hold
    logs = work / "logs"
    for name in ("client.log", "stderr.txt", "trickle_handler.log"):
        assert str(logs / name) in out
    assert "Starting task demo_0" in (logs / "client.log").read_text()
    assert "finishing with status 0 (SUCCESS)" in (logs / "stderr.txt").read_text()
    n_credited = len(credited_times)
    assert f"{n_credited} credited" in (logs / "trickle_handler.log").read_text()
    assert pids_inside(work) == []  # the client, the wrapper and QEMU are gone


def _qemu_inside(work) -> bool:
    for pid in pids_inside(work):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"qemu-system" in f.read():
                    return True
        except OSError:
            continue
    return False


@pytest.mark.qemu
@pytest.mark.boinc_client
def test_ctrl_c_while_the_vm_runs_stops_every_process_the_demo_started(demo_process):
    _require_chain()
    process = demo_process()
    work = demo_process.work
    deadline = time.monotonic() + 200
    while not _qemu_inside(work):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "QEMU never started under the demo's client"
        time.sleep(0.5)

    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-3000:]
    assert "demo stopped: interrupted by SIGINT" in err
    assert out == ""
    assert pids_inside(work) == []
    assert (work / "logs" / "client.log").exists()  # kept for a look at what happened


@pytest.mark.qemu
@pytest.mark.boinc_client
def test_a_task_that_overruns_the_timeout_fails_the_demo_and_stops_everything(demo_process):
    _require_chain()
    process = demo_process("--timeout", "8")
    out, err = process.communicate(timeout=200)
    assert process.returncode == 1, err[-3000:]
    assert "demo FAILED at step 6/8: TimeoutError: waited 8 s for task demo_0 to end" in err
    assert "Traceback" not in err
    assert out == ""
    assert pids_inside(demo_process.work) == []


def _run_demo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DEMO, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL,
                          preexec_fn=die_with_parent(signal.SIGTERM))


def test_a_work_dir_the_demo_did_not_make_is_refused_and_left_alone(tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me\n")
    done = _run_demo("--work-dir", str(tmp_path))
    assert done.returncode == 1
    assert f"work dir {tmp_path} is not empty and was not made by the demo" in done.stderr
    assert "demo FAILED at step 0/8" in done.stderr
    assert mine.read_text() == "keep me\n"


@pytest.mark.parametrize("db, message", [
    ("mysql://root@127.0.0.1:3306/production",
     "its name must be 'boincvm_demo' followed by letters, digits or '_'; 'production' is not"),
    ("postgres://x/y", "unknown scheme 'postgres'"),
])
def test_a_database_the_demo_may_not_recreate_is_refused_before_any_build(tmp_path, db, message):
    done = _run_demo("--work-dir", str(tmp_path / "work"), "--db", db)
    assert done.returncode == 1
    assert message in done.stderr
    assert "appliance" not in done.stderr  # nothing was built


@pytest.mark.parametrize("args, message", [
    (["--trickle", "0"], "--trickle 0: give a positive number of seconds"),
    (["--input-mb", "1000"], "--input-mb 1000: give a size above 0 and at most 512"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_options_are_refused_with_usage(args, message):
    done = _run_demo(*args)
    assert done.returncode == 2
    assert message in done.stderr

"""Host controller and guest agent as separate processes, over real brokers.

Each test runs twice: through the embedded broker and through RabbitMQ.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.polling import wait_until
from vmcontroller.protocol import ErrorCode, RemoteError
from vmcontroller.transfer import TransferError


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0): look at its state
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_hello_and_ping(harness):
    agent = harness.ready_agent()
    status = {s.vm_id: s for s in harness.host.connected_vms()}[agent.vm_id]
    assert status.hello.agent_id == agent.vm_id
    assert status.hello.capabilities["protocol"] == 1
    assert "run" in status.hello.capabilities["commands"]
    assert harness.call(harness.host.ping, agent.vm_id) >= 0


def test_run_streams_output_and_reports_exit_code_and_rusage(harness):
    agent = harness.ready_agent()
    chunks = []
    script = (
        "for i in 1 2 3; do echo line$i; sleep 0.2; done; echo oops >&2; "
        "python3 -c 'sum(range(3000000))'; exit 7"
    )
    result = harness.call(
        harness.host.run, agent.vm_id, shell=script,
        on_output=lambda stream, data: chunks.append((time.monotonic(), stream, data)),
    )  # fmt: skip
    stdout = b"".join(data for _, stream, data in chunks if stream == "stdout")
    stderr = b"".join(data for _, stream, data in chunks if stream == "stderr")
    assert stdout == b"line1\nline2\nline3\n"
    assert stderr == b"oops\n"
    out_times = [t for t, stream, _ in chunks if stream == "stdout"]
    # 0.2 s between lines, 50 ms batching: several batches, spread over time
    # (not exactly 3: a loaded machine may merge two lines into one batch).
    assert len(out_times) >= 2 and out_times[-1] - out_times[0] >= 0.2, "output was not streamed"
    assert result.code == 7 and result.signal is None and not result.timed_out
    assert result.rusage["ru_utime"] + result.rusage["ru_stime"] > 0.01
    assert result.rusage["ru_maxrss"] > 0
    assert result.wall_time >= 0.6


def test_run_argv_env_cwd_and_stdin(harness):
    agent = harness.ready_agent()
    os.makedirs(agent.work_dir / "sub", exist_ok=True)
    out = []
    result = harness.call(
        harness.host.run, agent.vm_id,
        argv=["sh", "-c", 'pwd; echo "$GREETING"; cat'], env={"GREETING": "hi there"},
        cwd="sub", stdin="from stdin\n", on_output=lambda s, d: out.append(d),
    )  # fmt: skip
    assert result.code == 0
    assert b"".join(out) == f"{agent.work_dir.resolve()}/sub\nhi there\nfrom stdin\n".encode()


def test_spawn_failure_is_an_error_reply(harness):
    agent = harness.ready_agent()
    with pytest.raises(RemoteError) as info:
        harness.call(harness.host.run, agent.vm_id, argv=["/no/such/program"])
    assert info.value.code == ErrorCode.SPAWN_FAILED


@pytest.mark.parametrize("how", ["timeout", "kill"])
def test_timeout_and_kill_end_the_whole_process_tree(harness, how):
    agent = harness.ready_agent()
    pids = []
    script = "sleep 60 & echo $!; (sleep 60; echo never) & echo $!; echo $$; wait"

    def collect(stream, data):
        pids.extend(int(word) for word in data.split())

    def start():
        return harness.host.run(
            agent.vm_id, shell=script, on_output=collect,
            timeout=1.0 if how == "timeout" else None,
        )  # fmt: skip

    command = harness.call(lambda: _fired(start()))
    wait_until(lambda: len(pids) == 3, 10, "the tree's pids")
    assert not any(_gone(pid) for pid in pids)
    if how == "kill":
        ok = harness.call(harness.host.kill, agent.vm_id, command.seq)
        assert ok.detail["target"] == command.seq
    result = harness.call(lambda: command.deferred, timeout=20)
    if how == "timeout":
        assert result.timed_out and not result.killed
    else:
        assert result.killed and not result.timed_out
    assert result.signal == signal.SIGTERM and result.code is None
    wait_until(lambda: all(_gone(pid) for pid in pids), 5, "every process of the tree to end")


class _fired:
    """Hand a CommandDeferred back through HostReactor.call without waiting on it."""

    def __init__(self, deferred):
        self.deferred = deferred
        self.seq = deferred.seq


def test_twenty_concurrent_commands(harness):
    agent = harness.ready_agent()
    spans = {}

    def start_all():
        from twisted.internet import defer

        runs = []
        for n in range(20):
            out = []
            spans[n] = out
            runs.append(harness.host.run(
                agent.vm_id, shell=f"date +%s.%N; sleep 2; echo {n}; date +%s.%N",
                on_output=lambda s, d, out=out: out.append(d),
            ))  # fmt: skip
        return defer.gatherResults(runs)

    results = harness.call(start_all, timeout=60)
    assert [r.code for r in results] == [0] * 20
    starts, ends = [], []
    for n, out in spans.items():
        first, number, last = b"".join(out).split()
        assert int(number) == n
        starts.append(float(first))
        ends.append(float(last))
    assert max(starts) < min(ends), "the commands did not run concurrently"


def _make_file(path, size):
    block = os.urandom(1 << 20)
    with open(path, "wb") as handle:
        for n in range(size >> 20):
            handle.write(block[n % 251 :] + block[: n % 251])
        handle.write(block[: size & ((1 << 20) - 1)])


def _sha256(path):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def test_200_mib_file_both_ways_with_checksum(harness, tmp_path):
    agent = harness.ready_agent()
    source = tmp_path / "source.bin"
    _make_file(source, 200 * 1024 * 1024)
    expected = _sha256(source)
    put = harness.call(harness.host.put_file, agent.vm_id, str(source), "in/data.bin", timeout=120)
    assert put.size == 200 * 1024 * 1024 and put.sha256 == expected
    assert _sha256(agent.work_dir / "in/data.bin") == expected
    back = tmp_path / "back.bin"
    got = harness.call(harness.host.get_file, agent.vm_id, "in/data.bin", str(back), timeout=120)
    assert got.sha256 == expected and _sha256(back) == expected
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


@pytest.mark.parametrize(
    "path", ["../outside.txt", "/etc/hostname", "sub/../../x", "escape/target.txt"]
)
def test_paths_outside_the_work_dir_are_refused(harness, tmp_path, path):
    agent = harness.ready_agent()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.txt").write_text("keep me")
    os.makedirs(agent.work_dir, exist_ok=True)
    (agent.work_dir / "escape").symlink_to(outside)
    local = tmp_path / "local.txt"
    local.write_text("payload")
    with pytest.raises(TransferError) as put:
        harness.call(harness.host.put_file, agent.vm_id, str(local), path)
    with pytest.raises(TransferError) as got:
        harness.call(harness.host.get_file, agent.vm_id, path, str(tmp_path / "got"))
    with pytest.raises(RemoteError) as run:
        harness.call(harness.host.run, agent.vm_id, argv=["true"], cwd=path)
    for error in (put.value, got.value, run.value):
        assert error.code == ErrorCode.PATH_REFUSED
    assert (outside / "target.txt").read_text() == "keep me"
    assert not (tmp_path / "got").exists()


def test_heartbeat_loss_is_detected_within_three_intervals(harness):
    interval = 1.0
    agent = harness.ready_agent(heartbeat=interval)
    lost = []
    harness.call(harness.host.add_listener, on_lost=lambda vm: lost.append(time.monotonic()))
    harness.call(harness.host.ping, agent.vm_id)
    os.kill(agent.process.pid, signal.SIGSTOP)  # hung guest: TCP stays up, nothing is said
    stopped = time.monotonic()
    try:
        wait_until(lambda: lost, 6 * interval, "the VM to be declared lost")
        status = {s.vm_id: s for s in harness.host.vms.values()}[agent.vm_id]
        assert status.lost
        # measured on the host's clock from the last message it got
        assert lost[0] - stopped <= 3 * interval + 0.25
    finally:
        os.kill(agent.process.pid, signal.SIGCONT)
    wait_until(lambda: not harness.host.vms[agent.vm_id].lost, 10, "the VM to come back")


DEBIAN_PYTHON = "/usr/bin/python3"


def _debian_twisted() -> str | None:
    import subprocess

    try:
        return subprocess.run(
            [DEBIAN_PYTHON, "-c", "import twisted; print(twisted.__version__)"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None


def test_agent_runs_on_the_appliance_python_and_twisted(harness, tmp_path):
    """The appliance has Debian's python3 and python3-twisted (22.4), nothing else."""
    version = _debian_twisted()
    if version is None:
        pytest.skip(
            f"{DEBIAN_PYTHON} has no Twisted (scripts/bootstrap.sh installs python3-twisted)"
        )
    agent = harness.ready_agent(python=DEBIAN_PYTHON)
    hello = harness.host.vms[agent.vm_id].hello
    assert hello.host_info["python"].startswith("3.")
    out = []
    script = "import sys, twisted; print(twisted.__version__, 'simplejson' in sys.modules)"
    result = harness.call(
        harness.host.run, agent.vm_id, argv=[DEBIAN_PYTHON, "-c", script],
        on_output=lambda s, d: out.append(d),
    )  # fmt: skip
    assert result.code == 0 and b"".join(out).split()[0].decode() == version
    local = tmp_path / "f.bin"
    _make_file(local, 3 * 1024 * 1024 + 17)
    harness.call(harness.host.put_file, agent.vm_id, str(local), "f.bin")
    got = harness.call(harness.host.get_file, agent.vm_id, "f.bin", str(tmp_path / "g.bin"))
    assert got.sha256 == _sha256(local) == _sha256(tmp_path / "g.bin")


def test_another_vm_cannot_command_this_agent(harness):
    """VM A's login tries to make VM B's agent run a command.

    The embedded broker refuses the SEND outright.  RabbitMQ lets a login
    publish through ``/amq/queue/...`` to any queue (it checks the exchange,
    not the queue), so there the agent's ``trusted_senders`` must refuse it.
    """
    import stomp

    intruder_vm, intruder_login, intruder_pass = harness.broker.new_vm()
    victim = harness.ready_agent(trusted_senders=[harness.broker.host_login()[0]])
    host, port = harness.broker.address
    rabbit = harness.broker.kind == "rabbitmq"
    queue = f"vmc.{victim.vm_id}.to_guest"
    destination = f"/amq/queue/{queue}" if rabbit else f"/queue/{queue}"
    body = '{"type":"run","v":1,"seq":1,"shell":"touch pwned"}'
    conn = stomp.Connection12([(host, port)], vhost=harness.broker.vhost, auto_decode=False)
    conn.connect(intruder_login, intruder_pass, wait=True)
    try:
        conn.send(destination, body, content_type="application/json")
        time.sleep(0.1)  # stomp.py sends from its own thread
    finally:
        try:
            conn.disconnect()
        except Exception:
            pass
    if rabbit:
        wait_until(lambda: "untrusted login" in victim.log(), 10, "the agent to refuse it")
    assert harness.call(harness.host.ping, victim.vm_id) >= 0  # still obeys the host
    result = harness.call(harness.host.run, victim.vm_id, argv=["ls", "-a"])
    assert result.code == 0
    assert not (victim.work_dir / "pwned").exists()

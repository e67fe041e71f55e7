"""The ``vmcontroller`` admin commands as a user runs them, against a real agent."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from tests.integration.vmcontroller.conftest import ROOT, AgentProcess


@pytest.fixture
def agent(embedded_broker, tmp_path):
    process = AgentProcess(embedded_broker, tmp_path, heartbeat=1.0)
    yield process
    process.stop()


def vmc(broker, subcommand, *args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "vmcontroller.cli", subcommand, "--broker",
         f"127.0.0.1:{broker.port}", "--credentials", str(broker.credentials_path), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def test_run_streams_output_and_exits_with_the_command_status(embedded_broker, agent):
    done = vmc(
        embedded_broker, "run", agent.vm_id, "--", "sh", "-c", "echo out; echo err >&2; exit 3"
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == "out\n" and done.stderr == "err\n"
    shell = vmc(embedded_broker, "run", agent.vm_id, "--shell", "echo $((6*7))", "--timeout", "5")
    assert shell.returncode == 0 and shell.stdout == "42\n"


def test_put_get_and_ls(embedded_broker, agent, tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(bytes(range(256)) * 4096)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    put = vmc(embedded_broker, "put", agent.vm_id, str(source), "dir/in.bin")
    assert put.returncode == 0 and digest in put.stdout, put.stderr
    get = vmc(embedded_broker, "get", agent.vm_id, "dir/in.bin", str(tmp_path / "out.bin"))
    assert get.returncode == 0, get.stderr
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    refused = vmc(embedded_broker, "get", agent.vm_id, "../in.bin", str(tmp_path / "x"))
    assert refused.returncode == 1 and "refused" in refused.stderr
    listing = vmc(embedded_broker, "ls", "--wait", "1.5")
    assert listing.returncode == 0 and agent.vm_id in listing.stdout


def test_usage_errors_exit_2_with_a_message(embedded_broker):
    nothing = subprocess.run([sys.executable, "-m", "vmcontroller.cli", "run", "vm1"],
                             capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert nothing.returncode == 2 and "-- CMD" in nothing.stderr
    unknown = subprocess.run([sys.executable, "-m", "vmcontroller.cli", "frobnicate"],
                             capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert unknown.returncode == 2 and "valid: broker, agent, run" in unknown.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "vmcontroller.cli", "put", "vm1", "a", "b", "--broker", "nonsense",
         "--credentials", str(embedded_broker.credentials_path)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr

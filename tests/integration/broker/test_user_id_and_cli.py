"""Sender identity stamping, the credentials file, and the broker as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from vmcontroller import destinations
from vmcontroller.broker import CredentialsError, generate_credentials, load_credentials
from vmcontroller.broker.blocking_client import BlockingClient, BrokerRefused
from vmcontroller.broker.cli import parse_listen


def test_messages_carry_the_senders_login(raw, credentials):
    host_login, vm_login = credentials.host_login(), credentials.vm_login("b2")
    host = raw()
    host.connect(host_login.login, host_login.passcode)
    host.subscribe(destinations.to_host("b2"), "uid")
    agent = raw()
    agent.connect(vm_login.login, vm_login.passcode)
    agent.send(destinations.to_host("b2"), b"who am i", {"user-id": vm_login.login})
    agent.send(destinations.to_host("b2"), b"unsigned")
    messages = [host.receive(timeout=5), host.receive(timeout=5)]
    assert [m.headers["user-id"] for m in messages] == [vm_login.login] * 2
    agent.send(destinations.to_host("b2"), b"forged", {"user-id": host_login.login})
    with pytest.raises(BrokerRefused, match="does not match"):
        agent.receive(timeout=5)


def test_credentials_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "creds.json"
    made = generate_credentials(["vm1", "vm2"], path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = load_credentials(path)
    assert dict(loaded) == dict(made)
    assert loaded.vm_login("vm2").login == "vm-vm2"
    assert loaded.host_login().role == "host"
    bad = {
        "not json": "{",
        "unknown role": json.dumps({"logins": {"x": {"passcode": "p", "role": "admin"}}}),
        "vm without id": json.dumps({"logins": {"x": {"passcode": "p", "role": "vm"}}}),
        "bad vm id": json.dumps(
            {"logins": {"x": {"passcode": "p", "role": "vm", "vm_id": "../x"}}}
        ),
        "unknown key": json.dumps({"logins": {"x": {"passcode": "p", "role": "host", "y": 1}}}),
        "wrong version": json.dumps({"version": 9, "logins": {}}),
    }
    for case, text in bad.items():
        path.write_text(text)
        with pytest.raises(CredentialsError):
            load_credentials(path)
        assert case
    with pytest.raises(CredentialsError, match="cannot read"):
        load_credentials(tmp_path / "missing.json")


def test_parse_listen():
    assert parse_listen("127.0.0.1:61613") == ("127.0.0.1", 61613)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("61613")


def test_broker_runs_as_a_process(tmp_path):
    creds_path = tmp_path / "creds.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    generated = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmcontroller.broker",
            "--credentials",
            str(creds_path),
            "--generate",
            "vm9",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    assert "wrote" in generated.stdout
    creds = load_credentials(creds_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmcontroller.broker",
            "--listen",
            "127.0.0.1:0",
            "--credentials",
            str(creds_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), proc.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        with BlockingClient(("127.0.0.1", port)) as agent:
            login = creds.vm_login("vm9")
            agent.connect(login.login, login.passcode)
            agent.send(destinations.PRESENCE, b"hello", {"receipt": "r1"})
            assert agent.receive(timeout=5).headers["receipt-id"] == "r1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_broker_process_rejects_bad_credentials_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmcontroller.broker",
            "--listen",
            "127.0.0.1:0",
            "--credentials",
            str(bad),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 1
    assert "logins" in done.stderr


def test_listen_backlog_lets_many_guests_connect_at_once(broker):
    """The kernel's accept queue (ss's Send-Q of a listening socket) is 128, not socketserver's 5."""
    port = broker.address[1]
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(out[2]) == 128, out

"""Co-Pilot end to end: a real manager process, real pilot processes, real brokers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import uuid
from functools import partial

import pytest

from tests.integration.copilot.conftest import backend_url, stop_process, wait_for
from vmcontroller.copilot.client import ApiError
from vmcontroller.copilot.store import StoreError, open_store


def test_submit_pull_run_store_fetch(broker, deployment_factory, tmp_path):
    """submit -> an agent pulls it -> runs -> outputs stored with checksums -> done -> fetch."""
    d = deployment_factory(broker)
    d.start_manager()
    (tmp_path / "events.txt").write_text("muon\nelectron\n")
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({
        "shell": "sort events.txt > sorted.out && wc -l < events.txt > count.out && echo sorted",
        "inputs": ["events.txt"], "outputs": ["*.out"], "max_run_time": 60, "retries": 0,
    }))  # fmt: skip
    submitted = d.cli("alice", "submit", str(job_file))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert d.client().job(job_id)["state"] == "queued"
    d.start_pilot(0, "--exit-when-idle", "30")
    waited = d.cli("alice", "wait", job_id, "--timeout", "60")
    assert (waited.returncode, waited.stdout.strip()) == (0, f"{job_id} done"), waited.stderr
    view = d.client().job(job_id)
    assert view["attempts"] == 1 and view["result"]["agent"] == d.agent_id(0)
    names = {info["name"]: info for info in view["outputs"]}
    assert set(names) == {"sorted.out", "count.out", "stdout.log", "stderr.log"}
    stored = d.workdir / "storage" / "jobs" / job_id / "outputs" / "sorted.out"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == names["sorted.out"]["sha256"]
    fetched = d.cli("alice", "fetch", job_id, str(tmp_path / "got"))
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "got" / "sorted.out").read_text() == "electron\nmuon\n"
    assert (tmp_path / "got" / "count.out").read_text().strip() == "2"
    assert d.cli("alice", "logs", job_id).stdout == "sorted\n"
    table = d.cli("alice", "status")
    assert job_id in table.stdout and "1/1 final" in table.stdout
    history = d.cli("alice", "status", job_id).stdout
    assert "offered to" in history and "attempt 1 succeeded" in history


def test_two_agents_never_run_the_same_job(broker, deployment_factory):
    """Jobs of three users through four pilots: each runs once, on one agent, correctly."""
    d = deployment_factory(broker)
    d.start_manager()
    ran = d.shared / "ran.log"
    script = f'echo "$COPILOT_JOB_ID $COPILOT_AGENT_ID" >> {ran}; echo "$COPILOT_JOB_ID" > id.out'
    owners = {}
    for n in range(36):
        user = ("alice", "bob", "carol")[n % 3]
        job = d.client(user).submit({"shell": script, "outputs": ["id.out"], "retries": 0}, {})
        owners[job["id"]] = user
    for index in range(4):
        d.start_pilot(index, "--exit-when-idle", "20")
    def final(job_id: str, user: str) -> bool:
        return d.client(user).job(job_id)["state"] in ("done", "failed")

    for job_id, user in owners.items():
        wait_for(partial(final, job_id, user), 90, f"job {job_id} final")
    runs = [line.split() for line in ran.read_text().splitlines()]
    assert sorted(job for job, _ in runs) == sorted(owners)  # every job ran exactly once
    assert len({agent for _, agent in runs}) >= 2  # and the work was shared
    for job_id, user in owners.items():
        view = d.client(user).job(job_id)
        assert (view["state"], view["attempts"]) == ("done", 1)
        assert d.client(user).output(job_id, "id.out").decode().strip() == job_id
    assert len(d.client("carol").jobs()) == 12


def test_manager_killed_and_restarted_loses_and_duplicates_nothing(embedded_broker,
                                                                   deployment_factory):
    d = deployment_factory(embedded_broker)
    d.start_manager()
    port = int(d.url.rsplit(":", 1)[1])
    ran = d.shared / "ran.log"
    script = f'sleep 1; echo "$COPILOT_JOB_ID" >> {ran}; echo "$COPILOT_JOB_ID" > id.out'
    ids = [d.client().submit({"shell": script, "outputs": ["id.out"], "retries": 3}, {})["id"]
           for _ in range(6)]  # fmt: skip
    d.start_pilot(0, "--exit-when-idle", "15")
    d.start_pilot(1, "--exit-when-idle", "15")
    wait_for(lambda: any(d.client().job(i)["state"] == "running" for i in ids), 30, "a job running")
    d.manager.send_signal(signal.SIGKILL)
    d.manager.wait(10)
    d.start_manager(port=port)  # same URL: the pilots' offers name it
    for job_id in ids:
        view = d.wait_state(job_id, ("done", "failed"), timeout=60)
        assert view["state"] == "done", view
        assert d.client().output(job_id, "id.out").decode().strip() == job_id
        assert d.cli("alice", "status", job_id).stdout.count("succeeded") == 1
    assert set(ran.read_text().split()) == set(ids)


def test_agent_killed_mid_job_the_job_reruns_elsewhere(embedded_broker, deployment_factory):
    d = deployment_factory(embedded_broker)
    d.start_manager()
    first = d.shared / "first"
    script = (f'if [ ! -e {first} ]; then touch {first}; echo $$ > {d.shared}/orphan.pid; '
              f'exec sleep 60; fi; echo "$COPILOT_AGENT_ID" > who.out')  # fmt: skip
    job_id = d.client().submit({"shell": script, "outputs": ["who.out"], "retries": 1}, {})["id"]
    doomed = d.start_pilot(0)
    d.wait_state(job_id, ("running",))
    wait_for(lambda: (d.shared / "orphan.pid").exists(), what="the job started")
    doomed.kill()  # SIGKILL: no goodbye, no more heartbeats
    doomed.wait(5)
    os.killpg(int((d.shared / "orphan.pid").read_text()), signal.SIGKILL)
    requeued = d.wait_state(job_id, ("queued",), timeout=15)
    assert requeued["attempts"] == 1
    d.start_pilot(1, "--exit-when-idle", "10")
    view = d.wait_state(job_id, ("done", "failed"), timeout=30)
    assert (view["state"], view["attempts"]) == ("done", 2)
    assert d.client().output(job_id, "who.out").decode().strip() == d.agent_id(1)
    assert "went silent" in d.cli("alice", "status", job_id).stdout


def test_late_result_from_an_expired_lease_is_rejected(embedded_broker, deployment_factory):
    """A pilot frozen past its lease wakes up with a finished job: its result is refused."""
    d = deployment_factory(embedded_broker)
    d.start_manager()
    first = d.shared / "first"
    script = (f'if [ ! -e {first} ]; then touch {first}; sleep 2; fi; '
              f'echo "$COPILOT_AGENT_ID" > who.out')  # fmt: skip
    job_id = d.client().submit({"shell": script, "outputs": ["who.out"], "retries": 2}, {})["id"]
    slow = d.start_pilot(0)
    d.wait_state(job_id, ("running",))
    slow.send_signal(signal.SIGSTOP)  # the pilot freezes; its job finishes meanwhile
    try:
        d.wait_state(job_id, ("queued",), timeout=15)
        d.start_pilot(1, "--exit-when-idle", "10")
        view = d.wait_state(job_id, ("done", "failed"), timeout=30)
    finally:
        slow.send_signal(signal.SIGCONT)
    assert view["state"] == "done"
    wait_for(lambda: "dropped" in d.pilot_log(0) or "rejected" in d.pilot_log(0),
             timeout=20, what="the late pilot being turned away")
    final = d.client().job(job_id)
    assert final["state"] == "done" and final["result"]["agent"] == d.agent_id(1)
    assert d.client().output(job_id, "who.out").decode().strip() == d.agent_id(1)
    history = d.cli("alice", "status", job_id).stdout
    assert history.count("succeeded") == 1


def test_retries_exhausted_means_failed(embedded_broker, deployment_factory):
    d = deployment_factory(embedded_broker)
    d.start_manager()
    job_id = d.client().submit({"shell": "echo doomed >&2; exit 3", "retries": 1}, {})["id"]
    d.start_pilot(0, "--exit-when-idle", "10")
    waited = d.cli("alice", "wait", job_id, "--timeout", "60")
    assert waited.returncode == 3 and waited.stdout.strip() == f"{job_id} failed"
    view = d.client().job(job_id)
    assert view["attempts"] == 2 and view["result"]["exit_code"] == 3
    assert "doomed" in d.cli("alice", "logs", job_id).stdout
    assert "no retries left" in d.cli("alice", "status", job_id).stdout
    fetched = d.cli("alice", "fetch", job_id, str(d.workdir / "none"))
    assert fetched.returncode == 1 and "only a done job has outputs" in fetched.stderr


def test_cancel_queued_and_running_jobs(embedded_broker, deployment_factory):
    d = deployment_factory(embedded_broker)
    d.start_manager()
    client = d.client()
    queued = client.submit({"argv": ["true"]}, {})["id"]
    cancelled = d.cli("alice", "cancel", queued)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"{queued} cancelled"
    script = f"echo $$ > {d.shared}/victim.pid; exec sleep 60"
    running = client.submit({"shell": script}, {})["id"]
    d.start_pilot(0, "--exit-when-idle", "5")
    d.wait_state(running, ("running",))
    pid = int(wait_for(lambda: (d.shared / "victim.pid").exists()
                       and (d.shared / "victim.pid").read_text().strip()))
    assert client.cancel(running)["state"] == "cancelled"

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
            return stat.read().split()[2] == "Z"

    wait_for(gone, timeout=10, what="the cancelled job's process being killed")
    assert client.job(running)["state"] == "cancelled"
    assert client.job(queued)["attempts"] == 0


def test_users_see_and_cancel_only_their_own_jobs(embedded_broker, deployment_factory):
    d = deployment_factory(embedded_broker)
    d.start_manager()
    job_id = d.client("alice").submit({"argv": ["true"]}, {})["id"]
    for command in (("status", job_id), ("cancel", job_id), ("logs", job_id)):
        result = d.cli("bob", *command)
        assert result.returncode == 1 and "no job" in result.stderr and "404" in result.stderr
    assert d.client("bob").jobs() == []
    assert d.client("alice").job(job_id)["state"] == "queued"  # untouched
    wrong = d.cli("not-a-token", "status")
    assert wrong.returncode == 1 and "unknown token" in wrong.stderr
    with pytest.raises(ApiError) as refused:
        d.client("alice").cancel(uuid.uuid4().hex[:16])
    assert refused.value.status == 404


def test_bad_input_gets_clear_errors_and_loses_nothing(embedded_broker, deployment_factory, tmp_path):
    d = deployment_factory(embedded_broker)
    d.start_manager("--max-output-bytes", "1000")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = d.cli("alice", "submit", str(bad))
    assert result.returncode == 1 and "not valid JSON" in result.stderr
    bad.write_text(json.dumps({"shell": "true", "outputs": ["../../etc/passwd"]}))
    result = d.cli("alice", "submit", str(bad))
    assert result.returncode == 1 and "invalid output pattern" in result.stderr
    with pytest.raises(ApiError) as refused:  # the server checks too, not only the CLI
        d.client().submit({"argv": ["x"], "inputs": ["../x"]}, {"../x": b""})
    assert refused.value.status == 400 and "invalid input name" in str(refused.value)
    assert d.client().jobs() == []
    huge = d.client().submit(
        {"shell": "head -c 5000 /dev/zero > big.out", "outputs": ["*.out"], "retries": 0}, {}
    )["id"]
    d.start_pilot(0, "--exit-when-idle", "5")
    view = d.wait_state(huge, ("done", "failed"))
    assert view["state"] == "failed" and "exceed" in view["result"]["error"]


@pytest.mark.parametrize(
    "backend", [pytest.param("mariadb", marks=pytest.mark.mariadb), "postgresql"]
)
def test_durable_store_survives_a_manager_restart(backend, embedded_broker, deployment_factory,
                                                  tmp_path):
    """The flow with the store on MariaDB or PostgreSQL, across a manager restart."""
    url, drop = backend_url(backend, tmp_path)
    try:
        open_store(url).close()
    except StoreError as error:
        pytest.skip(f"{backend} store unavailable: {error}")
    d = deployment_factory(embedded_broker, url)
    try:
        d.start_manager()
        ids = [d.client().submit({"shell": f"echo {n} > n.out", "outputs": ["n.out"]}, {})["id"]
               for n in range(3)]  # fmt: skip
        d.manager.send_signal(signal.SIGKILL)  # no chance to flush anything
        d.manager.wait(10)
        d.start_manager()  # a new process: everything comes back from the database
        assert {job["id"] for job in d.client().jobs()} == set(ids)
        d.start_pilot(0, "--exit-when-idle", "5")
        for n, job_id in enumerate(ids):
            view = d.wait_state(job_id, ("done", "failed"))
            assert (view["state"], view["attempts"]) == ("done", 1)
            assert d.client().output(job_id, "n.out").decode().strip() == str(n)
    finally:
        for process in d.processes:
            stop_process(process)
        drop()

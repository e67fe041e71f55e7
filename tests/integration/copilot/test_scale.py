"""Co-Pilot at full scale on real RabbitMQ: 500 jobs, 3 users, 20 pilot processes.

While the jobs flow, pilots are SIGKILLed in the middle of a job, one pilot
is frozen (SIGSTOP) past its lease and woken up with a finished job, and the
manager is SIGKILLed and restarted on the same URL.  Afterwards every job
must be done exactly once with the right output: a shared ran-log, appended
by each attempt that completes, shows which attempts ran to their end.

The store is MariaDB when it is running (the backend meant for this scale,
and the one whose calls leave the manager's reactor thread), else SQLite.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.copilot.conftest import SCALE_AGENTS, backend_url, wait_for
from vmcontroller.copilot.store import StoreError, open_store

JOBS = 500
USERS = ("alice", "bob", "carol")
#: The first pilot index of the scale test (0-3 are the small tests').
FIRST = 4
#: Long enough that a job whose `done` is held up by the manager's restart
#: still has its lease when the manager is back; short enough for a quick requeue.
TTLS = ("--offer-ttl", "4", "--lease-ttl", "10", "--heartbeat-interval", "2",
        "--sweep-interval", "0.5", "--retry-after", "1")  # fmt: skip


def _script(shared: os.PathLike, kind: str) -> str:
    """Each job writes ``<job id> <N*N>`` to out.txt, then logs its completion."""
    finish = (f'echo "$COPILOT_JOB_ID $((N * N))" > out.txt; '
              f'echo "$COPILOT_JOB_ID $COPILOT_AGENT_ID" >> {shared}/ran.log')  # fmt: skip
    if kind == "victim":  # first attempt hangs until its pilot is killed
        return (f'if [ ! -e {shared}/$COPILOT_JOB_ID.first ]; then touch {shared}/$COPILOT_JOB_ID.first;'
                f' echo $$ > {shared}/$COPILOT_JOB_ID.pid; exec sleep 300; fi; {finish}')
    if kind == "late":  # first attempt outlives its frozen pilot's lease
        return (f'if [ ! -e {shared}/late.first ]; then touch {shared}/late.first; sleep 3; fi;'
                f' {finish}')
    return finish


def _store_url(tmp_path) -> tuple[str, object]:
    url, drop = backend_url("mariadb", tmp_path)
    try:
        open_store(url).close()
    except StoreError:
        return f"sqlite:///{tmp_path}/scale.db", lambda: None
    return url, drop


def _pilot_of(d, job: dict) -> int:
    agents = {d.agent_id(index): index for index in range(FIRST, FIRST + SCALE_AGENTS)}
    return agents[job["agent"]]


@pytest.mark.rabbitmq
@pytest.mark.timeout(240)
def test_500_jobs_20_pilots_with_kills_a_late_result_and_a_manager_restart(
    rabbitmq_broker, deployment_factory, tmp_path
):
    started = time.monotonic()
    url, drop = _store_url(tmp_path)
    try:
        _run(rabbitmq_broker, deployment_factory, url)
    finally:
        drop()
    print(f"scale test: {time.monotonic() - started:.1f} s wall")


def _phase(text: str, _t0: list[float] = []) -> None:  # noqa: B006 (the start time)
    _t0[:] = _t0 or [time.monotonic()]
    print(f"[{time.monotonic() - _t0[0]:6.1f} s] {text}", flush=True)


def _run(broker, deployment_factory, url: str) -> None:
    _phase(f"store {url.split(':')[0]}")
    d = deployment_factory(broker, url)
    d.start_manager(*TTLS)
    port = int(d.url.rsplit(":", 1)[1])
    kinds = ["victim", "victim", "late"] + ["plain"] * (JOBS - 3)
    clients = {user: d.client(user) for user in USERS}

    def submit(n: int) -> tuple[str, str, int, str]:
        user = USERS[n % 3]
        spec = {"shell": _script(d.shared, kinds[n]), "env": {"N": str(n)},
                "outputs": ["out.txt"], "retries": 2, "max_run_time": 600}  # fmt: skip
        return clients[user].submit(spec, {})["id"], user, n, kinds[n]

    # Oldest first: the victims and the late job are the first ones handed out.
    jobs = [submit(n) for n in range(3)]
    with ThreadPoolExecutor(4) as pool:
        jobs += list(pool.map(submit, range(3, JOBS)))
    _phase(f"{JOBS} jobs submitted")
    by_kind = {kind: [job for job in jobs if job[3] == kind] for kind in ("victim", "late")}
    # A reply slower than the request timeout makes a pilot drop an accepted
    # offer (its lease then expires: an attempt lost); 1 s is too short here.
    pilots = {index: d.start_pilot(index, "--request-timeout", "5")
              for index in range(FIRST, FIRST + SCALE_AGENTS)}  # fmt: skip

    # Two pilots die in the middle of a job: no goodbye, no more heartbeats.
    killed = {}
    for job_id, user, _, _ in by_kind["victim"]:
        pid_file = d.shared / f"{job_id}.pid"
        wait_for(pid_file.exists, 60, f"victim {job_id} running")
        index = _pilot_of(d, clients[user].job(job_id))
        pilots[index].kill()
        pilots[index].wait(10)
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # its orphaned command
        killed[job_id] = d.agent_id(index)

    _phase("2 pilots killed mid-job")
    # One pilot freezes while its job runs: the job finishes, the lease runs out.
    late_id, late_user, _, _ = by_kind["late"][0]
    wait_for((d.shared / "late.first").exists, 60, "the late job running")
    frozen_index = _pilot_of(d, clients[late_user].job(late_id))
    frozen = pilots[frozen_index]
    frozen.send_signal(signal.SIGSTOP)
    seen = len(d.pilot_log(frozen_index))
    try:
        # The manager dies mid-run and comes back on the same URL (offers name it).
        def done_count() -> int:
            return sum(job["state"] == "done" for c in clients.values() for job in c.jobs())

        wait_for(lambda: done_count() >= JOBS // 3, 120, f"{JOBS // 3} jobs done")
        d.manager.send_signal(signal.SIGKILL)
        d.manager.wait(10)
        _phase("manager killed")
        d.start_manager(*TTLS, port=port)
        _phase("manager restarted")
        late = wait_for(lambda: (view := clients[late_user].job(late_id))["state"]
                        in ("done", "failed") and view, 120, "the late job final")  # fmt: skip
        assert late["state"] == "done" and late["result"]["agent"] != d.agent_id(frozen_index)
    finally:
        frozen.send_signal(signal.SIGCONT)
    def turned_away() -> bool:
        news = d.pilot_log(frozen_index)[seen:]
        return late_id in news and ("rejected" in news or "dropped" in news)

    wait_for(turned_away, 60, "the frozen pilot's late result being turned away")

    def all_final() -> bool:
        return all(job["state"] in ("done", "failed", "cancelled")
                   for c in clients.values() for job in c.jobs())  # fmt: skip

    wait_for(all_final, 180, "every job final")
    _phase("every job final")

    # Every job done, once, by the attempts we expect, with the right output.
    ran = Counter()
    ran_agents: dict[str, list[str]] = {}
    for line in (d.shared / "ran.log").read_text().splitlines():
        job_id, agent = line.split()
        ran[job_id] += 1
        ran_agents.setdefault(job_id, []).append(agent)
    assert set(ran) == {job[0] for job in jobs}
    assert sum(len(c.jobs()) for c in clients.values()) == JOBS

    def check(job: tuple[str, str, int, str]) -> None:
        job_id, user, n, kind = job
        view = clients[user].job(job_id)
        assert view["state"] == "done", view
        assert [e["detail"] for e in view["history"]].count(f"attempt {view['attempts']} succeeded") == 1
        assert sum("succeeded" in e["detail"] for e in view["history"]) == 1
        data = clients[user].output(job_id, "out.txt")
        assert data.decode() == f"{job_id} {n * n}\n"
        info = {i["name"]: i for i in view["outputs"]}["out.txt"]
        assert (info["sha256"], info["size"]) == (hashlib.sha256(data).hexdigest(), len(data))
        if kind == "victim":  # killed once, finished elsewhere
            assert view["attempts"] == 2 and ran[job_id] == 1
            assert view["result"]["agent"] != killed[job_id]
            assert any("went silent" in e["detail"] for e in view["history"])
        elif kind == "late":  # the frozen attempt completed too, but its result was refused
            assert view["attempts"] == 2 and ran[job_id] == 2
            assert ran_agents[job_id][0] == d.agent_id(frozen_index)
            assert view["result"]["agent"] == ran_agents[job_id][1]
        else:
            assert view["attempts"] == 1 and ran[job_id] == 1, (view, ran[job_id])
            assert view["result"]["agent"] == ran_agents[job_id][0]

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(check, jobs))
    _phase("every job checked")
    # The work was shared (a pilot that starts late on a loaded box may find none left).
    assert len({agent for agents in ran_agents.values() for agent in agents}) >= SCALE_AGENTS // 2

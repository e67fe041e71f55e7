"""A transfer cut by a broker restart resumes from the last acknowledged chunk.

Embedded broker: the broker process is SIGKILLed (every queued message is
lost, every connection dropped) and started again on the same port.
RabbitMQ is shared with other tests and must not be restarted: a TCP relay in
front of it is killed and restarted instead, which drops every connection the
same way (RabbitMQ keeps its queues, as a restarted durable broker would).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.vmcontroller.conftest import (
    EmbeddedBroker,
    Harness,
    _stop_process,
)
from tests.integration.vmcontroller.test_agent_host import _make_file, _sha256
from tests.polling import wait_until

SIZE = 96 * 1024 * 1024
CUT_AFTER = 24 * 1024 * 1024
#: Resending at most a few windows is resuming; resending everything is not.
SLACK = 32 * 1024 * 1024


class RelayedRabbit:
    """RabbitMQ seen through a relay that can be killed and restarted."""

    kind = "rabbitmq-relay"

    def __init__(self, rabbit, workdir: Path) -> None:
        self.rabbit = rabbit
        self.vhost = rabbit.vhost
        self.port = 0
        self.process = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("tcp_proxy.py")),
             str(self.port), str(self.rabbit.address[1])],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = self.process.stdout.readline()
        assert line.startswith("listening on "), line
        self.port = int(line.rsplit(":", 1)[1])

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(5)

    def stop(self) -> None:
        _stop_process(self.process)

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def host_login(self):
        return self.rabbit.host_login()

    def new_vm(self):
        return self.rabbit.new_vm()


@pytest.fixture(params=["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def restartable(request, tmp_path):
    if request.param == "embedded":
        broker = EmbeddedBroker(tmp_path)
    else:
        broker = RelayedRabbit(request.getfixturevalue("rabbitmq_broker"), tmp_path)
    yield broker
    broker.stop()


@pytest.mark.parametrize("direction", ["put", "get"])
def test_transfer_resumes_after_broker_restart(
    host_reactor, restartable, tmp_path, request, direction
):
    harness = Harness(host_reactor, restartable, tmp_path, request)
    agent = harness.ready_agent()
    source = tmp_path / "source.bin"
    _make_file(source, SIZE)
    expected = _sha256(source)
    if direction == "put":
        start = lambda: harness.host.put_file(agent.vm_id, str(source), "copy.bin")  # noqa: E731
        table, target = harness.host.senders, agent.work_dir / "copy.bin"
        partial_dir = agent.work_dir
    else:
        agent.work_dir.mkdir(parents=True, exist_ok=True)
        (agent.work_dir / "source.bin").write_bytes(source.read_bytes())
        target = tmp_path / "copy.bin"
        start = lambda: harness.host.get_file(agent.vm_id, "source.bin", str(target))  # noqa: E731
        table, partial_dir = harness.host.receivers, tmp_path

    outcome = []
    harness.call(lambda: start().addBoth(outcome.append) and None)
    wait_until(lambda: table, 10, "the transfer to start")
    transfer = next(iter(table.values()))

    def partial_size():
        parts = [p for p in partial_dir.iterdir() if p.name.endswith(".part")]
        return parts[0].stat().st_size if parts else 0

    wait_until(lambda: partial_size() >= CUT_AFTER or outcome, 30, "the first chunks")
    assert not outcome, "the transfer finished before the broker could be killed"
    restartable.kill()
    cut_at = partial_size()
    time.sleep(0.5)
    restartable.start()
    wait_until(lambda: outcome, 60, "the resumed transfer to finish")
    result = outcome[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    assert result.sha256 == expected and _sha256(target) == expected
    assert agent.log().count("connected to the broker") >= 2, "the agent never reconnected"
    moved = transfer.bytes_sent if direction == "put" else transfer.bytes_received
    assert cut_at < SIZE
    assert moved <= SIZE + SLACK, f"{moved} bytes moved for {SIZE}: restarted, not resumed"


def test_agent_detects_a_dead_connection_by_heartbeats_and_reconnects(
    host_reactor, restartable, tmp_path, request
):
    """A frozen peer (as after a VM snapshot restore) is noticed and left behind.

    The broker (or the relay in front of RabbitMQ) is SIGSTOPped: TCP stays
    up but nothing arrives.  The agent must give up on that connection after
    its heart-beat grace and reconnect once the broker answers again.
    """
    import os
    import signal

    harness = Harness(host_reactor, restartable, tmp_path, request)
    agent = harness.ready_agent(heartbeat=0.5)
    os.kill(restartable.process.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: "presumed dead" in agent.log(), 10, "the agent to notice")
    finally:
        os.kill(restartable.process.pid, signal.SIGCONT)
    wait_until(
        lambda: agent.log().count("connected to the broker") >= 2, 20, "the agent to reconnect"
    )
    assert harness.call(harness.host.ping, agent.vm_id, timeout=20) >= 0


def test_output_written_into_a_dead_connection_is_not_lost(
    host_reactor, restartable, tmp_path, request
):
    """A command ends while the broker is frozen (as for a guest restored from a
    snapshot, its connection is dead without knowing it): the agent's output and
    exit status, written into that connection, still reach the host, once."""
    import os
    import signal

    harness = Harness(host_reactor, restartable, tmp_path, request)
    # The short heartbeat makes the agent notice the freeze fast; the host must
    # not declare the VM lost meanwhile (the wrapper holds liveness or adopts
    # the run in that case).
    harness.host = harness.new_host(missed_heartbeats=40)
    agent = harness.ready_agent(heartbeat=0.5)
    out = []
    outcome = []

    def start():
        deferred = harness.host.run(
            agent.vm_id, shell="echo started; sleep 1; echo done; exit 5",
            on_output=lambda stream, data: out.append(data),
        )  # fmt: skip
        deferred.addBoth(outcome.append)

    harness.call(start)
    wait_until(lambda: out, 10, "the command to start")
    os.kill(restartable.process.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: "presumed dead" in agent.log(), 10, "the agent to notice")
    finally:
        os.kill(restartable.process.pid, signal.SIGCONT)
    wait_until(lambda: outcome, 30, "the exit status")
    result = outcome[0]
    assert not hasattr(result, "raiseException"), result
    assert result.code == 5
    assert b"".join(out) == b"started\ndone\n"


def test_replies_lost_with_a_dead_broker_are_resent_and_adopted(
    host_reactor, restartable, tmp_path, request
):
    """The frozen broker is then killed: whatever the agent wrote into the dead
    connection is gone, so only its resend-until-receipt gets the exit status
    through.  The host lost its connection too, so its pending run fails and it
    adopts the run by its id, as the wrapper does."""
    import os
    import signal

    from vmcontroller.protocol import ConnectionLostError

    harness = Harness(host_reactor, restartable, tmp_path, request)
    harness.host = harness.new_host(missed_heartbeats=40)
    agent = harness.ready_agent(heartbeat=0.5)
    out, outcome, failures = [], [], []

    def start():
        deferred = harness.host.run(
            agent.vm_id, shell="echo started; sleep 1; echo done; exit 5",
            on_output=lambda stream, data: out.append(data),
        )  # fmt: skip
        seq = deferred.seq

        def adopt(failure):
            failure.trap(ConnectionLostError)
            failures.append(failure)
            return harness.host.adopt_run(agent.vm_id, seq, lambda s, d: out.append(d))

        deferred.addErrback(adopt).addBoth(outcome.append)

    harness.call(start)
    wait_until(lambda: out, 10, "the command to start")
    os.kill(restartable.process.pid, signal.SIGSTOP)
    wait_until(lambda: "presumed dead" in agent.log(), 10, "the agent to notice")
    time.sleep(0.3)  # the command has ended: its output went into the dead connection
    restartable.kill()
    restartable.start()
    wait_until(lambda: outcome, 30, "the exit status")
    result = outcome[0]
    context = f"outcome {result!r}, output {out!r}, agent log:\n{agent.log()[-3000:]}"
    assert not hasattr(result, "raiseException"), context
    assert failures, "the host's connection should have been lost too: " + context
    assert result.code == 5, context
    assert b"".join(out) == b"started\ndone\n", context

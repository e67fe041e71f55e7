"""The wrapper as the page sees it: public state only, with a real runtime, output and trickles."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock

from vmwrapper.boinc.runtime import BoincRuntime
from vmwrapper.status.wrapper_view import WrapperView, start_status_page
from vmwrapper.wrapper.output import CappedOutput
from vmwrapper.wrapper.state import WrapperState
from vmwrapper.wrapper.trickles import CpuTrickles

PASSCODE = "vm-passcode-7f3a9"


def make(tmp_path, logged):
    cpu = [0.0]
    clock = task.Clock()
    runtime = BoincRuntime(tmp_path, clock=clock, cpu_time=lambda: cpu[0], exit=lambda s: None)
    wrapper = SimpleNamespace(
        phase="booting", suspended=False,
        state=WrapperState(logins={"vm": ["vm-1", PASSCODE]}),
        trickles=CpuTrickles(lambda variety, body: defer.succeed(None), lambda: cpu[0], 3600),
        output=CappedOutput(logged.append, cap=4096),
        cumulative_cpu=lambda: cpu[0])
    return wrapper, runtime, cpu


def test_snapshots_follow_the_wrapper(tmp_path):
    logged: list[str] = []
    wrapper, runtime, cpu = make(tmp_path, logged)
    reactor = MemoryReactorClock()
    view = start_status_page(reactor, runtime, wrapper, hypervisor="qemu 7.2.22, TCG",
                             log=logged.append)
    assert view.server is not None and view.server.url in logged[-1]
    assert wrapper.output.cap == 4096  # the cap is kept when the output is teed
    assert view.snapshot().vm_state == "booting"

    wrapper.phase = "running tasks"
    on_output = wrapper.output.stream("task 1")
    on_output("stdout", f"event 1\nconnecting with passcode={PASSCODE}\n".encode())
    cpu[0] = 125.0
    runtime.checkpoint_completed()
    runtime.fraction_done = 0.3
    wrapper.trickles.send_now()
    shown = view.snapshot()
    assert (shown.vm_state, shown.task, shown.cpu_time, shown.fraction_done) == (
        "running", "running tasks", 125.0, 0.3)
    assert (shown.checkpoints, shown.last_checkpoint_cpu) == (1, 125.0)
    assert (shown.trickles_sent, shown.cpu_reported) == (1, 125.0)
    assert shown.guest_output == ("[task 1 stdout] event 1",
                                  f"[task 1 stdout] connecting with passcode={PASSCODE}")
    assert "[task 1 stdout] event 1" in logged  # still in stderr.txt too
    public = repr(shown.to_public(view.secrets))
    assert PASSCODE not in public and "[hidden]" in public

    wrapper.suspended = True
    assert view.snapshot().vm_state == "paused"
    view.server.stop()


def test_passcodes_learnt_later_are_hidden(tmp_path):
    wrapper, runtime, _ = make(tmp_path, [])
    wrapper.state = WrapperState()
    view = WrapperView(wrapper, runtime)
    view.snapshot()
    wrapper.state = WrapperState(logins={"host": ["host", "late-passcode-123"]})
    view.snapshot()
    assert view.secrets("pc late-passcode-123") == "pc [hidden]"


def test_summary_counts_checkpoints_and_trickles(tmp_path):
    wrapper, runtime, cpu = make(tmp_path, [])
    view = WrapperView(wrapper, runtime)
    for seconds in (600.0, 1200.0):
        cpu[0] = seconds
        runtime.checkpoint_completed()
        view.snapshot()  # the page polls between checkpoints
    wrapper.trickles.send_now()
    cpu[0] = 1300.0
    lines = view.summary("finishing with status 0 (SUCCESS): done").lines()
    assert lines[1:5] == [
        "exit: finishing with status 0 (SUCCESS): done",
        "CPU time: 21 min 40 s (1300.0 s)",
        "checkpoints: 2 (last at 20 min 00 s CPU)",
        "trickles: 1 sent, 1200.0 s of CPU time reported for credit",
    ]


def test_wrapper_count_of_checkpoints_wins(tmp_path):
    wrapper, runtime, _ = make(tmp_path, [])
    wrapper.checkpoints = 7
    assert WrapperView(wrapper, runtime).snapshot().checkpoints == 7


def test_client_receives_the_page_url_through_shared_memory(tmp_path):
    """The real runtime in a slot prepared as the client does: graphics_reply carries the URL."""
    from vmwrapper.boinc.shmem import Channel
    from vmwrapper.testing.fake_slot import make_slot

    client_side = make_slot(tmp_path, "wu_status_0")
    try:
        logged: list[str] = []
        wrapper, _, _ = make(tmp_path, logged)
        runtime = BoincRuntime(tmp_path, clock=task.Clock(), exit=lambda s: None)
        runtime.init()
        view = start_status_page(MemoryReactorClock(), runtime, wrapper, log=logged.append)
        message = client_side.receive(Channel.GRAPHICS_REPLY)
        assert message == f"<web_graphics_url>{view.server.url}</web_graphics_url>\n"
        assert view.server.url.startswith("http://127.0.0.1:")
        view.server.stop()
    finally:
        client_side.close()

"""BoincRuntime: the status loop against a real mmap file, driven by a Clock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from vmwrapper.boinc.errors import InitDataError, SharedMemoryError
from vmwrapper.boinc.exitcodes import ExitStatus
from vmwrapper.boinc.runtime import RuntimeListener, pid_exists
from vmwrapper.boinc.shmem import MMAP_FILE_NAME, Channel
from vmwrapper.boinc.trickle import TRICKLE_UP_FILE

from .conftest import DATA, captured_init_data

CAPTURED = json.loads((DATA / "channel_messages.json").read_text())


def status(client) -> str | None:
    return client.receive(Channel.APP_STATUS)


def heartbeat(client, network_suspended: bool = False) -> None:
    client.force_send(Channel.HEARTBEAT, CAPTURED["heartbeat"][3 if network_suspended else 1])


# -- init --------------------------------------------------------------------


def test_init_reads_the_slot(make_runtime):
    rt = make_runtime()
    init = rt.init()
    assert rt.init_data is init and init.result_name == "wu1_0"
    assert rt.standalone is False and rt.suspended is False


def test_malformed_init_data_is_a_clear_error(make_runtime, slot):
    (slot / "init_data.xml").write_bytes(b"<app_init_data><slot>zero</slot></app_init_data>")
    with pytest.raises(
        InitDataError, match=r"init_data.xml: <slot> is 'zero', expected an integer"
    ):
        make_runtime().init()


def test_missing_mmap_file_is_a_clear_error(make_runtime, slot):
    (slot / MMAP_FILE_NAME).unlink()
    with pytest.raises(
        SharedMemoryError, match="cannot open the shared memory file .*boinc_mmap_file"
    ):
        make_runtime().init()


def test_unmappable_mmap_file_is_a_clear_error(make_runtime, slot):
    (slot / MMAP_FILE_NAME).write_bytes(b"")
    with pytest.raises(SharedMemoryError, match="has 0 bytes, expected 8192"):
        make_runtime().init()


def test_sysv_shared_memory_is_refused_with_the_reason(make_runtime, slot):
    (slot / "init_data.xml").write_bytes(captured_init_data(shm_key=1234))
    with pytest.raises(SharedMemoryError, match="<shm_key> is 1234, expected -1.*<api_version>"):
        make_runtime().init()


# -- standalone ----------------------------------------------------------------


def test_standalone_without_init_data(make_runtime, tmp_path, clock, exits):
    slot = tmp_path / "shell"
    slot.mkdir()
    rt = make_runtime(slot)
    init = rt.init()
    assert rt.standalone is True
    assert init.effective_checkpoint_period == 300
    assert (init.result_name, init.ncpus, init.fraction_done_end) == ("standalone_0", 1.0, 1.0)
    assert init.host_info.p_ncpus == os.cpu_count()
    assert init.host_info.m_nbytes > 0 and init.host_info.d_free > 0
    assert init.project_dir == str(slot.resolve())
    rt.start()
    rt.fraction_done = 0.5
    trickle = rt.send_trickle_up("vmstatus", "<x/>")
    assert trickle.called
    assert not (slot / TRICKLE_UP_FILE).exists()
    clock.advance(299)
    assert not rt.time_to_checkpoint()
    clock.advance(1)
    assert rt.time_to_checkpoint()
    rt.finish(0)
    clock.advance(0)
    assert (slot / "boinc_finish_called").read_text() == "0\n"
    assert exits == [0]
    assert sorted(p.name for p in slot.iterdir()) == ["boinc_finish_called"]


# -- status ------------------------------------------------------------------


def test_status_reports_cpu_checkpoint_and_mapped_fraction(make_runtime, slot, client, clock, cpu):
    (slot / "init_data.xml").write_bytes(
        captured_init_data(
            client_pid=os.getpid(), wu_cpu_time=100, fraction_done_start=0.2, fraction_done_end=0.6
        )
    )
    rt = make_runtime()
    rt.init()
    cpu.seconds = 5.5
    rt.fraction_done = 0.5
    rt.start()
    assert status(client) == (
        "<current_cpu_time>1.055000e+02</current_cpu_time>\n"
        "<checkpoint_cpu_time>1.000000e+02</checkpoint_cpu_time>\n"
        "<fraction_done>4.000000e-01</fraction_done>\n"
    )
    cpu.seconds = 7.0
    rt.checkpoint_completed()
    rt.fraction_done = 1.5  # clamped
    rt.want_network = True
    rt.other_pids = [4242, 4243]
    clock.advance(1)
    assert status(client) == (
        "<current_cpu_time>1.070000e+02</current_cpu_time>\n"
        "<checkpoint_cpu_time>1.070000e+02</checkpoint_cpu_time>\n"
        "<fraction_done>6.000000e-01</fraction_done>\n"
        "<want_network>1</want_network>\n"
        "<other_pid>4242</other_pid>\n<other_pid>4243</other_pid>\n"
    )
    rt.stop()


def test_status_every_second_and_unread_status_not_overwritten(runtime, client, clock, cpu):
    assert status(client) is not None
    cpu.seconds = 1.0
    clock.advance(1)
    cpu.seconds = 2.0
    clock.advance(1)  # the client has not read the previous one: this one is dropped
    assert "<current_cpu_time>1.000000e+00" in status(client)
    clock.advance(1)
    assert "<current_cpu_time>2.000000e+00" in status(client)


def test_suspend_stops_status_and_resume_restarts_it(runtime, client, clock, listener):
    status(client)
    client.send(Channel.PROCESS_CONTROL_REQUEST, "<suspend/>")
    clock.advance(1)
    assert runtime.suspended and listener.names() == ["suspend"]
    for _ in range(5):
        clock.advance(1)
        assert status(client) is None
    client.send(Channel.PROCESS_CONTROL_REQUEST, "<resume/>")
    clock.advance(1)
    assert not runtime.suspended and listener.names() == ["suspend", "resume"]
    assert status(client) is not None


def test_no_status_in_the_tick_that_reads_suspend(runtime, client, clock):
    status(client)
    client.send(Channel.PROCESS_CONTROL_REQUEST, "<suspend/>")
    clock.advance(1)
    assert status(client) is None


@pytest.mark.parametrize("message", CAPTURED["control"] + ["<network_available/>"])
def test_captured_control_messages_reach_the_listener(runtime, client, clock, listener, message):
    if message == "<resume/>":
        client.send(Channel.PROCESS_CONTROL_REQUEST, "<suspend/>")
        clock.advance(1)
        listener.events.clear()
    client.send(Channel.PROCESS_CONTROL_REQUEST, message)
    clock.advance(1)
    assert listener.names() == [message.strip("</>")]
    assert not client.has_message(Channel.PROCESS_CONTROL_REQUEST)


def test_quit_and_abort_never_exit_on_their_own(runtime, client, clock, exits):
    client.send(Channel.PROCESS_CONTROL_REQUEST, "<quit/>")
    clock.advance(1)
    client.send(Channel.PROCESS_CONTROL_REQUEST, "<abort/>")
    clock.advance(60)
    assert exits == []
    assert status(client) is not None  # still reporting


def test_repeated_suspend_is_reported_once(runtime, client, clock, listener):
    for _ in range(3):
        client.send(Channel.PROCESS_CONTROL_REQUEST, "<suspend/>")
        clock.advance(1)
    assert listener.names() == ["suspend"]


def test_reread_app_info_rereads_but_keeps_the_episode_cpu_base(
    runtime, slot, client, clock, listener, cpu
):
    # Older clients rewrite wu_cpu_time with the latest checkpoint's CPU time.
    (slot / "init_data.xml").write_bytes(
        captured_init_data(client_pid=os.getpid(), wu_cpu_time=3, checkpoint_period=0)
    )
    cpu.seconds = 3.0
    client.send(Channel.PROCESS_CONTROL_REQUEST, "<reread_app_info/>")
    status(client)
    clock.advance(1)
    assert listener.names() == ["reread_app_info"]
    assert runtime.init_data.effective_checkpoint_period == 300
    assert "<current_cpu_time>3.000000e+00" in status(client)


def test_reread_of_a_damaged_file_keeps_the_old_settings(
    runtime, slot, client, clock, listener, capsys
):
    (slot / "init_data.xml").write_text("<app_init_data><checkpoint_period>x")
    client.send(Channel.PROCESS_CONTROL_REQUEST, "<reread_app_info/>")
    clock.advance(1)
    assert runtime.init_data.checkpoint_period == 60
    assert listener.names() == ["reread_app_info"]
    assert "keeping the previous settings: init_data.xml: malformed XML" in capsys.readouterr().err


def test_network_suspended_in_the_heartbeat(runtime, client, clock, listener):
    heartbeat(client, network_suspended=True)
    clock.advance(1)
    heartbeat(client, network_suspended=True)
    clock.advance(1)
    assert runtime.network_suspended is True
    heartbeat(client)
    clock.advance(1)
    assert runtime.network_suspended is False
    assert listener.events == [
        ("network_suspended_changed", (True,)),
        ("network_suspended_changed", (False,)),
    ]


# -- heartbeat and client death --------------------------------------------------


def test_missing_heartbeat_is_reported_once_and_rearmed(runtime, client, clock, listener, capsys):
    for _ in range(29):
        heartbeat(client)
        clock.advance(1)
    clock.advance(29)
    assert listener.names() == []
    clock.advance(1)
    assert listener.names() == ["no_heartbeat"]
    clock.advance(120)
    assert listener.names() == ["no_heartbeat"]
    assert "no heartbeat from the BOINC client for 30 s" in capsys.readouterr().err
    heartbeat(client)
    clock.advance(1)
    clock.advance(30)
    assert listener.names() == ["no_heartbeat", "no_heartbeat"]


def test_dead_client_is_reported_once(make_runtime, slot, client, clock, listener, capsys):
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert not pid_exists(gone.pid)
    (slot / "init_data.xml").write_bytes(captured_init_data(client_pid=gone.pid))
    rt = make_runtime()
    rt.init()
    rt.start()
    for _ in range(9):
        heartbeat(client)
        clock.advance(1)
    assert listener.names() == []
    heartbeat(client)
    clock.advance(1)
    assert listener.names() == ["client_died"]
    for _ in range(25):
        heartbeat(client)
        clock.advance(1)
    assert listener.names() == ["client_died"]
    assert f"the BOINC client (PID {gone.pid}) has exited" in capsys.readouterr().err
    rt.stop()


def test_living_client_is_not_reported(runtime, client, clock, listener):
    for _ in range(60):
        heartbeat(client)
        clock.advance(1)
    assert listener.names() == []


# -- checkpoints -------------------------------------------------------------------


def test_time_to_checkpoint_follows_the_period(runtime, clock):
    assert runtime.init_data.checkpoint_period == 60
    clock.advance(59)
    assert not runtime.time_to_checkpoint()
    clock.advance(1)
    assert runtime.time_to_checkpoint()
    runtime.checkpoint_completed()
    assert not runtime.time_to_checkpoint()
    clock.advance(60)
    assert runtime.time_to_checkpoint()


# -- trickles ------------------------------------------------------------------------


def test_trickle_up_queued_until_the_client_takes_each(runtime, slot, client, clock):
    first = runtime.send_trickle_up("vmstatus", "<cpu>1</cpu>\n")
    second = runtime.send_trickle_up("vmstatus", "<cpu>2</cpu>\n")
    assert client.receive(Channel.TRICKLE_UP) == "<have_new_trickle_up/>\n"
    clock.advance(3)
    assert (slot / TRICKLE_UP_FILE).read_text() == "<variety>vmstatus</variety>\n<cpu>1</cpu>\n"
    assert not first.called
    (slot / TRICKLE_UP_FILE).rename(slot / "moved_1")  # what the client does
    clock.advance(1)
    assert first.called and not second.called
    assert not (slot / TRICKLE_UP_FILE).exists()  # one tick between two trickles
    clock.advance(1)
    assert (slot / TRICKLE_UP_FILE).read_text() == "<variety>vmstatus</variety>\n<cpu>2</cpu>\n"
    assert client.receive(Channel.TRICKLE_UP) == "<have_new_trickle_up/>\n"
    (slot / TRICKLE_UP_FILE).unlink()
    clock.advance(1)
    assert second.called


def test_trickle_down_files_reach_the_listener_and_are_deleted(
    make_runtime, slot, client, clock, listener
):
    shutil.copyfile(DATA / "trickle_down_file", slot / "trickle_down_1795610560")
    rt = make_runtime()
    rt.init()
    rt.start()  # scanned once at start
    body = (DATA / "trickle_down_file").read_text()
    assert listener.events == [("trickle_down", (body, slot / "trickle_down_1795610560"))]
    assert not (slot / "trickle_down_1795610560").exists()
    (slot / "trickle_down_1795610600").write_text("\n<cmd>abort</cmd>\n")
    clock.advance(3)
    assert len(listener.events) == 1  # no notice, no scan
    client.send(Channel.TRICKLE_DOWN, CAPTURED["trickle_down"][0])
    clock.advance(1)
    assert listener.events[1] == (
        "trickle_down",
        ("\n<cmd>abort</cmd>\n", slot / "trickle_down_1795610600"),
    )
    assert not (slot / "trickle_down_1795610600").exists()
    rt.stop()


def test_bad_trickle_variety_is_refused(runtime):
    with pytest.raises(ValueError, match="trickle variety 'a b'"):
        runtime.send_trickle_up("a b", "")


# -- graphics ------------------------------------------------------------------------


def test_web_graphics_url_sent_once_when_the_channel_is_free(runtime, client, clock):
    client.force_send(Channel.GRAPHICS_REPLY, "<something_unread/>")
    runtime.set_web_graphics_url("http://127.0.0.1:8080/?a=1&b=2")
    clock.advance(1)
    assert client.receive(Channel.GRAPHICS_REPLY) == "<something_unread/>"
    clock.advance(1)
    assert client.receive(Channel.GRAPHICS_REPLY) == (
        "<web_graphics_url>http://127.0.0.1:8080/?a=1&amp;b=2</web_graphics_url>\n"
    )
    clock.advance(5)
    assert client.receive(Channel.GRAPHICS_REPLY) is None


# -- the end -----------------------------------------------------------------------------


def test_finish_sends_a_last_status_writes_the_file_then_exits(
    runtime, slot, client, clock, exits, cpu
):
    clock.advance(1)  # an unread status is in the channel: the last one replaces it
    cpu.seconds = 9.0
    runtime.fraction_done = 1.0
    done = runtime.finish(0)
    assert (slot / "boinc_finish_called").read_text() == "0\n"
    last = status(client)
    assert "<current_cpu_time>9.000000e+00" in last and "<fraction_done>1.000000e+00" in last
    clock.advance(1.9)
    assert exits == [] and not done.called
    clock.advance(0.1)
    assert exits == [0] and done.called
    clock.advance(10)
    assert status(client) is None  # the loop is stopped


@pytest.mark.parametrize(
    ("args", "content"),
    [
        ((0, None, False), "0\n"),
        (
            (int(ExitStatus.INIT_FAILURE), "bad job.xml: no <memory_mb>", False),
            "206\nbad job.xml: no <memory_mb>\n\n",
        ),
        ((0, "VM finished\nfine", True), "0\nVM finished fine\nnotice\n"),
    ],
)
def test_finish_file_contents(runtime, slot, clock, exits, args, content):
    runtime.finish(*args)
    assert (slot / "boinc_finish_called").read_text() == content
    clock.advance(2)
    assert exits == [args[0]]


def test_temporary_exit_writes_delay_and_reason_then_exits_0(runtime, slot, clock, exits):
    runtime.temporary_exit(300.4, "hypervisor busy")
    assert (slot / "boinc_temporary_exit").read_text() == "300\nhypervisor busy\n"
    assert exits == [0]


def test_temporary_exit_notice(runtime, slot, exits):
    runtime.temporary_exit(86400, "VT-x is in use\nby another hypervisor", notice=True)
    assert (slot / "boinc_temporary_exit").read_text() == (
        "86400\nVT-x is in use by another hypervisor\nnotice\n"
    )


@pytest.mark.parametrize(
    ("delay", "reason", "error"),
    [
        (60, "", "needs a reason"),
        (60, "  \n ", "needs a reason"),
        (-1, "x", "delay -1 s is outside 0..86400"),
        (86401, "x", "delay 86401 s is outside 0..86400"),
    ],
)
def test_bad_temporary_exit_is_refused(runtime, slot, exits, delay, reason, error):
    with pytest.raises(ValueError, match=error):
        runtime.temporary_exit(delay, reason)
    assert not (slot / "boinc_temporary_exit").exists() and exits == []


def test_quit_exit_is_0_without_files(runtime, slot, client, clock, exits):
    runtime.quit_exit()
    assert exits == [0]
    assert not (slot / "boinc_finish_called").exists()
    assert not (slot / "boinc_temporary_exit").exists()
    status(client)
    clock.advance(5)
    assert status(client) is None


def test_abort_exit_is_194(runtime, exits):
    runtime.abort_exit()
    assert exits == [194]


# -- robustness ----------------------------------------------------------------------------


def test_listener_failure_is_logged_and_the_loop_goes_on(make_runtime, client, clock, capsys):
    class Failing(RuntimeListener):
        def suspend(self):
            raise RuntimeError("VM would not pause")

    rt = make_runtime()
    rt.listener = Failing()
    rt.init()
    rt.start()
    client.send(Channel.PROCESS_CONTROL_REQUEST, "<suspend/>")
    clock.advance(1)
    assert "listener suspend() failed: RuntimeError: VM would not pause" in capsys.readouterr().err
    client.send(Channel.PROCESS_CONTROL_REQUEST, "<resume/>")
    clock.advance(1)
    assert status(client) is not None
    rt.stop()


def test_loop_error_is_logged_once_and_the_loop_survives(runtime, client, clock, cpu, capsys):
    cpu.error = OSError("getrusage failed")
    clock.advance(5)
    err = capsys.readouterr().err
    assert err.count("BOINC status loop: OSError: getrusage failed") == 1
    cpu.error = None
    status(client)
    clock.advance(1)
    assert status(client) is not None

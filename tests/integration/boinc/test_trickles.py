"""Trickle messages between the test app and the test project, through the real client."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.boinc_client


def test_trickle_up_arrives_in_msg_from_host_and_trickle_down_reaches_app(
        new_job, boinc_client, boinc_project, timings):
    job = new_job("--hold --trickle vmstatus")
    start = job.dispatch()
    sent = job.wait_event("trickle_up_sent", timeout=15)

    received = boinc_project.wait_for_trickle(
        lambda t: t.message.result_name == job.result_name, timeout=30)
    timings.add("trickle-up taken by client -> at server", received.received_at - sent["t"])
    message = received.message
    assert message.variety == "vmstatus"
    assert f"<pid>{start['pid']}</pid>\n" in message.xml
    assert message.xml.startswith(f"      <result_name>{job.result_name}</result_name>\n")
    assert "<variety>" not in message.xml  # the variety has its own column
    assert message.body == f"<vm_state>running</vm_state>\n<pid>{start['pid']}</pid>\n\n"

    # The reply acknowledged it: the client deletes the sent file and never resends it.
    project_dir = boinc_client.data_dir / "projects" / boinc_project.project_dir_name
    boinc_client.wait_until(lambda: not list(project_dir.glob("trickle_up_*")), 15,
                            "the client to delete the acknowledged trickle file")

    boinc_project.queue_trickle_down(job.result_name, "<cmd>temp_exit</cmd>\n")
    boinc_client.update_project(boinc_project.url)
    delivered = boinc_project.wait_for_trickle_down_sent(job.result_name, timeout=30)
    event = job.wait_event("trickle_down", timeout=15)
    timings.add("trickle-down in reply -> app", event["t"] - delivered.received_at)
    assert "<cmd>temp_exit</cmd>" in event["body"]
    assert event["file_exists"] is False  # the runtime deleted the file
    assert not list(job.slot_dir().glob("trickle_down*"))
    resent = [t for t in boinc_project.trickles if t.message.result_name == job.result_name]
    assert len(resent) == 1

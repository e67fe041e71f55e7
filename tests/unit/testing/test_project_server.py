"""The test project server over real HTTP on 127.0.0.1 (no BOINC client needed)."""

from __future__ import annotations

import pathlib
import threading
import urllib.error
import urllib.request

import pytest

from vmwrapper.testing import scheduler_protocol as proto
from vmwrapper.testing.project_server import FIRST_HOSTID, ProjectServer

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture
def server():
    with ProjectServer() as running:
        yield running


def fetch(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post_request(server: ProjectServer, name: str, **replace: str) -> str:
    text = (DATA / name).read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    status, reply = fetch(server.scheduler_url, text.encode())
    assert status == 200
    return reply.decode()


def test_urls_and_master_page(server):
    assert server.url == f"http://127.0.0.1:{server.port}/fake/"
    assert server.project_dir_name == f"127.0.0.1_{server.port}_fake"
    status, page = fetch(server.url)
    assert status == 200 and server.scheduler_url.encode() in page
    assert fetch(f"http://127.0.0.1:{server.port}/elsewhere")[0] == 404


def test_only_loopback():
    with pytest.raises(ValueError, match="127.0.0.1 only"):
        ProjectServer(host="0.0.0.0")


def test_new_host_gets_hostid_and_queued_work_once(server):
    wu = server.add_workunit("job1", command_line="--secs 5", input_files={"in": b"data"})
    reply = post_request(server, "scheduler_request_first.xml")
    assert f"<hostid>{FIRST_HOSTID}</hostid>" in reply
    assert "<name>job1_0</name>" in reply and "<open_name>in</open_name>" in reply
    assert server.wait_for_sent("job1", timeout=1) == wu
    again = post_request(server, "scheduler_request_trickle.xml")
    assert "<workunit>" not in again and "<hostid>" not in again
    assert fetch(f"{server.download_url}job1_in") == (200, b"data")
    assert fetch(f"{server.download_url}nope")[0] == 404


def test_duplicate_and_bad_workunit_names(server):
    server.add_workunit("a")
    with pytest.raises(ValueError, match="already exists"):
        server.add_workunit("a")
    with pytest.raises(ValueError, match="without spaces"):
        server.add_workunit("a b")


def test_trickle_is_recorded_and_acknowledged(server):
    reply = post_request(server, "scheduler_request_trickle.xml")
    assert "<message_ack/>" in reply
    received = server.wait_for_trickle(lambda t: t.message.variety == "vmstatus", timeout=1)
    assert received.hostid == 42 and received.message.result_name == "wu1_0"
    server.set_acknowledge_trickles(False)
    assert "<message_ack/>" not in post_request(server, "scheduler_request_trickle.xml")
    assert len(server.trickles) == 2


def test_report_is_recorded_and_acknowledged(server):
    reply = post_request(server, "scheduler_request_report.xml")
    assert "<result_ack>\n    <name>wu1_0</name>\n</result_ack>" in reply
    assert server.wait_for_result("wu1_0", timeout=1).state == proto.RESULT_STATE_FILES_UPLOADED


def test_trickle_down_goes_out_in_the_next_reply_only(server):
    server.queue_trickle_down("wu1_0", "<cmd>temp_exit</cmd>\n", when=1795548495)
    first = post_request(server, "scheduler_request_trickle.xml")
    assert "<trickle_down>\n<result_name>wu1_0</result_name>\n<time>1795548495</time>\n" in first
    assert server.wait_for_trickle_down_sent("wu1_0", timeout=1).reply == first
    assert "<trickle_down>" not in post_request(server, "scheduler_request_trickle.xml")


def test_upload_then_size_query(server):
    body = (DATA / "upload_request.bin").read_bytes()
    status, reply = fetch(server.upload_url, body)
    assert (status, reply) == (200, proto.upload_reply(0))
    assert server.uploads == {"wu7_0_out": b"processed:input of wu7\n"}
    query = b"<data_server_request>\n<get_file_size>wu7_0_out</get_file_size>\n</data_server_request>\n"
    assert b"<file_size>23</file_size>" in fetch(server.upload_url, query)[1]
    assert b"<status>1</status>" in fetch(server.upload_url, body[:-4])[1]  # truncated: retry
    assert b"<status>-1</status>" in fetch(server.upload_url, b"garbage")[1]


def test_bad_scheduler_request_is_a_400_with_the_reason(server):
    status, text = fetch(server.scheduler_url, b"<scheduler_request><hostid>x</hostid></scheduler_request>")
    assert status == 400 and b"<hostid> is not a number" in text
    assert server.rpcs == []


def test_waiting_times_out_with_a_summary(server):
    with pytest.raises(TimeoutError, match=r"no report of r9 within 0.1 s; server saw: 0 RPCs"):
        server.wait_for_result("r9", timeout=0.1)


def test_waiter_wakes_when_the_request_arrives(server):
    seen = []
    waiter = threading.Thread(target=lambda: seen.append(server.wait_for_rpc(0, timeout=10)))
    waiter.start()
    post_request(server, "scheduler_request_first.xml")
    waiter.join(10)
    assert seen and seen[0].request.hostid == 0 and seen[0].content.hostid == FIRST_HOSTID

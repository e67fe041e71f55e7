"""Scheduler and data-server wire formats, against requests captured from boinc 7.20.5."""

from __future__ import annotations

import pathlib
import re

import pytest

from vmwrapper.testing import scheduler_protocol as proto

DATA = pathlib.Path(__file__).parent / "data"


def sample(name: str) -> str:
    return (DATA / name).read_text()


def test_first_request_has_no_hostid_and_asks_for_work():
    request = proto.parse_scheduler_request(sample("scheduler_request_first.xml"))
    assert request.hostid == 0
    assert request.platform_name == "anonymous"
    assert request.authenticator == "b0inc0vm0test0authenticator"
    assert request.work_req_seconds > 0
    assert request.results == () and request.trickles == ()


def test_trickle_request_keeps_the_exact_lines_boinc_stores():
    request = proto.parse_scheduler_request(sample("scheduler_request_trickle.xml"))
    assert request.hostid == 42
    assert request.other_results == ("wu1_0",)
    (trickle,) = request.trickles
    assert (trickle.result_name, trickle.time, trickle.variety) == ("wu1_0", 1795610556, "vmstatus")
    # What BOINC's scheduler puts in msg_from_host.xml: all lines but the tags and <variety>.
    assert trickle.xml == (
        "      <result_name>wu1_0</result_name>\n"
        "      <time>1795610556</time>\n"
        "<vm_state>running</vm_state>\n"
        "<pid>13998</pid>\n"
        "\n"
    )
    assert trickle.body == "<vm_state>running</vm_state>\n<pid>13998</pid>\n\n"
    assert trickle.raw.startswith("\n      <result_name>") and "<variety>vmstatus</variety>\n" in trickle.raw


def test_report_request_gives_result_fields_and_stderr_from_cdata():
    request = proto.parse_scheduler_request(sample("scheduler_request_report.xml"))
    (result,) = request.results
    assert result.name == "wu1_0"
    assert (result.exit_status, result.state) == (0, proto.RESULT_STATE_FILES_UPLOADED)
    assert result.final_cpu_time == pytest.approx(0.12)
    assert result.final_elapsed_time == pytest.approx(10.016927)
    assert "<core_client_version>7.20.5</core_client_version>" in result.stderr_out
    assert "<stderr_txt>" in result.stderr_out and "CDATA" not in result.stderr_out
    assert "<upload_url>" in result.raw


def test_stderr_that_looks_like_xml_does_not_cut_the_result():
    text = sample("scheduler_request_report.xml").replace(
        "<stderr_txt>\n", "<stderr_txt>\nboom </result> <state>6</state>\n")
    (result,) = proto.parse_scheduler_request(text).results
    assert result.state == 5
    assert "boom </result> <state>6</state>" in result.stderr_out


@pytest.mark.parametrize("text, complaint", [
    ("", "not a <scheduler_request>"),
    ("<html>oops</html>", "not a <scheduler_request>"),
    ("<scheduler_request><hostid>x1</hostid></scheduler_request>", "<hostid> is not a number"),
    ("<scheduler_request><result><name>r</name></result></scheduler_request>", "<state> missing"),
    ("<scheduler_request><msg_from_host>\n<time>1</time>\n</msg_from_host></scheduler_request>",
     "<result_name> missing"),
])
def test_malformed_requests_get_a_clear_error(text, complaint):
    with pytest.raises(proto.ProtocolError, match=re.escape(complaint)):
        proto.parse_scheduler_request(text)


def test_captured_upload_request():
    upload = proto.parse_upload_request((DATA / "upload_request.bin").read_bytes())
    assert upload.file_name == "wu7_0_out"
    assert (upload.offset, upload.nbytes, upload.size_query) == (0, 23, False)
    assert upload.data == b"processed:input of wu7\n"
    assert upload.complete


def test_truncated_upload_is_incomplete_and_extra_bytes_dropped():
    body = (DATA / "upload_request.bin").read_bytes()
    assert not proto.parse_upload_request(body[:-5]).complete
    assert proto.parse_upload_request(body + b"junk").data == b"processed:input of wu7\n"


def test_size_query_and_bad_upload_requests():
    query = proto.parse_upload_request(
        b"<data_server_request>\n<get_file_size>wu7_0_out</get_file_size>\n</data_server_request>\n")
    assert query == proto.UploadRequest(file_name="wu7_0_out", size_query=True)
    with pytest.raises(proto.ProtocolError, match="neither a size query nor data"):
        proto.parse_upload_request(b"<data_server_request>\n</data_server_request>\n")
    with pytest.raises(proto.ProtocolError, match="not a <data_server_request>"):
        proto.parse_upload_request(b"GET / HTTP/1.0\r\n")


def workunit(**changes) -> proto.Workunit:
    fields = dict(
        name="wu1", app_name="vmtest", version_num=100, command_line="--secs 3 & more",
        input_files=(proto.InputFile("wu1_in", "in", b"hello"),),
        output_files=(proto.OutputFile("wu1_0_out", "out"),), report_deadline=1796215345,
    )
    fields.update(changes)
    return proto.Workunit(**fields)


def reply(content: proto.ReplyContent) -> str:
    return proto.scheduler_reply(
        "Test", "http://127.0.0.1:1/fake/", "http://127.0.0.1:1/download/",
        "http://127.0.0.1:1/fake_cgi/file_upload_handler", content)


def test_reply_sends_work_with_checksums_and_upload_url():
    text = reply(proto.ReplyContent(hostid=42, workunits=[workunit()]))
    lines = text.splitlines()
    assert lines[0] == "<scheduler_reply>" and lines[-1] == "</scheduler_reply>"
    assert "<hostid>42</hostid>" in lines
    assert "    <md5_cksum>5d41402abc4b2a76b9719d911017c592</md5_cksum>" in lines
    assert "    <url>http://127.0.0.1:1/download/wu1_in</url>" in lines
    assert "    <url>http://127.0.0.1:1/fake_cgi/file_upload_handler</url>" in lines
    assert "    <command_line>--secs 3 &amp; more</command_line>" in lines
    assert "    <name>wu1_0</name>" in lines and "    <report_immediately/>" in lines
    assert "<message_ack/>" not in lines


def test_reply_acks_and_trickle_down_one_tag_per_line():
    text = reply(proto.ReplyContent(
        acked_results=["wu1_0"], message_ack=True,
        trickle_downs=[proto.TrickleDown("wu1_0", 1795548495, "<cmd>temp_exit</cmd>\n<why>x</why>\n")],
    ))
    assert "<hostid>" not in text
    assert "<message_ack/>\n" in text
    assert "<result_ack>\n    <name>wu1_0</name>\n</result_ack>\n" in text
    assert (
        "<trickle_down>\n<result_name>wu1_0</result_name>\n<time>1795548495</time>\n"
        "<cmd>temp_exit</cmd>\n<why>x</why>\n</trickle_down>\n"
    ) in text


def test_reply_refuses_an_upload_url_the_client_would_download_from():
    with pytest.raises(ValueError, match="file_upload_handler"):
        proto.scheduler_reply("T", "http://127.0.0.1:1/fake/", "http://127.0.0.1:1/download/",
                              "http://127.0.0.1:1/upload", proto.ReplyContent())


def test_master_page_names_the_scheduler():
    page = proto.master_page("A & B", "http://127.0.0.1:5/fake_cgi/cgi")
    assert '<link rel="boinc_scheduler" href="http://127.0.0.1:5/fake_cgi/cgi">' in page
    assert "<title>A &amp; B</title>" in page


def test_upload_reply_formats():
    assert proto.upload_reply(0) == b"<data_server_reply>\n    <status>0</status>\n</data_server_reply>\n"
    assert b"<file_size>12</file_size>" in proto.upload_reply(0, file_size=12)
    assert b"<message>a &lt;b&gt;</message>" in proto.upload_reply(-1, message="a <b>")

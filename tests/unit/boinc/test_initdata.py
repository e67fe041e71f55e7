"""init_data.xml parsing, against files captured from the real client."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmwrapper.boinc.errors import BoincApiError, InitDataError
from vmwrapper.boinc.initdata import InitData, parse_init_data, read_init_data

from .conftest import DATA, captured_init_data


def test_captured_file_gives_every_field_we_use():
    init = read_init_data(DATA / "init_data.xml")
    assert (init.major_version, init.minor_version, init.release) == (7, 20, 5)
    assert (init.app_name, init.app_version, init.plan_class) == ("vmtest", 100, "")
    assert (init.userid, init.teamid, init.hostid, init.user_name) == (7, 0, 42, "tester")
    assert init.authenticator == "capture_auth"
    assert init.project_dir.endswith("/projects/127.0.0.1_35223_fake")
    assert init.boinc_dir == "/tmp/capA/data"
    assert (init.slot, init.client_pid, init.shm_key) == (0, 13185, -1)
    assert (init.wu_name, init.result_name) == ("wu1", "wu1_0")
    assert (init.wu_cpu_time, init.starting_elapsed_time) == (0.0, 0.0)
    assert init.checkpoint_period == 60.0
    assert (init.fraction_done_start, init.fraction_done_end) == (0.0, 1.0)
    assert init.ncpus == 1.0
    assert init.rsc_fpops_est == 1e10 and init.rsc_fpops_bound == 1e14
    assert init.rsc_memory_bound == 1e8 and init.rsc_disk_bound == 1e9
    assert init.computation_deadline == 1795868882.0
    assert init.vm_extensions_disabled is False
    assert init.app_files == ["capture_app.py"]


def test_captured_host_info_and_preferences():
    init = read_init_data(DATA / "init_data.xml")
    host = init.host_info
    assert (host.p_ncpus, host.p_fpops, host.os_name) == (2, 1e9, "Linux Debian")
    assert host.m_nbytes == 25276502016.0 and host.d_free == 84747165696.0
    assert "avx2" in host.p_features.split()
    assert host.p_vm_extensions_disabled is False
    prefs = init.global_prefs
    assert prefs.leave_apps_in_memory is False
    assert prefs.disk_interval == 60.0
    assert (prefs.ram_max_used_busy_pct, prefs.ram_max_used_idle_pct) == (50.0, 90.0)


def test_captured_restart_carries_the_checkpoint_cpu_time():
    init = read_init_data(DATA / "init_data_restarted.xml")
    assert init.wu_cpu_time == 0.5
    assert init.starting_elapsed_time == pytest.approx(5.010472)


def test_unknown_tags_are_skipped_and_missing_ones_keep_defaults():
    init = parse_init_data(
        b"<app_init_data>\n<future_tag>x</future_tag>\n<hostid>3</hostid>\n"
        b"<nested><hostid>99</hostid></nested>\n</app_init_data>\n"
    )
    assert init.hostid == 3
    assert init == InitData(hostid=3)


def test_checkpoint_period_zero_means_300():
    assert (
        parse_init_data(captured_init_data(checkpoint_period=0)).effective_checkpoint_period == 300
    )
    assert InitData(checkpoint_period=42).effective_checkpoint_period == 42


def test_empty_boolean_tag_means_true():
    init = parse_init_data(b"<app_init_data><vm_extensions_disabled/></app_init_data>")
    assert init.vm_extensions_disabled is True


def test_project_preferences_are_kept_as_xml():
    init = parse_init_data(
        b"<app_init_data><project_preferences><max_vm_mb>2048</max_vm_mb>"
        b"</project_preferences></app_init_data>"
    )
    assert init.project_preferences == (
        "<project_preferences><max_vm_mb>2048</max_vm_mb></project_preferences>"
    )


@pytest.mark.parametrize(
    ("tag", "text", "expected"),
    [
        ("hostid", "forty-two", "<hostid> is 'forty-two', expected an integer"),
        ("client_pid", "1.5", "<client_pid> is '1.5', expected an integer"),
        ("wu_cpu_time", "lots", "<wu_cpu_time> is 'lots', expected a finite number"),
        ("checkpoint_period", "nan", "<checkpoint_period> is 'nan', expected a finite number"),
        ("vm_extensions_disabled", "yes", "<vm_extensions_disabled> is 'yes', expected 0 or 1"),
        ("p_ncpus", "two", "<host_info/p_ncpus> is 'two', expected an integer"),
        (
            "leave_apps_in_memory",
            "2",
            "<global_preferences/leave_apps_in_memory> is '2', expected 0 or 1",
        ),
    ],
)
def test_wrong_type_names_the_field(tag, text, expected):
    with pytest.raises(InitDataError) as caught:
        parse_init_data(captured_init_data(**{tag: text}))
    assert str(caught.value) == f"init_data.xml: {expected}"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "init_data.xml: malformed XML: no element found"),
        (
            b"<app_init_data>\n<hostid>42</hostid>\n",
            "init_data.xml: malformed XML: no element found",
        ),
        (
            b"<app_init_data><hostid>4</slot></app_init_data>",
            "init_data.xml: malformed XML: mismatched tag",
        ),
        (b"\x00\x01garbage", "init_data.xml: malformed XML"),
        (
            b"<scheduler_reply/>",
            "init_data.xml: root element is <scheduler_reply>, expected <app_init_data>",
        ),
        (
            b'<!DOCTYPE a [<!ENTITY e "x">]><app_init_data>&e;</app_init_data>',
            "init_data.xml: document type declarations and entities are not allowed",
        ),
        (
            b'<!DOCTYPE a SYSTEM "http://127.0.0.1:1/x.dtd"><app_init_data/>',
            "init_data.xml: document type declarations and entities are not allowed",
        ),
        (
            b"<app_init_data><fraction_done_start>0.8</fraction_done_start>"
            b"<fraction_done_end>0.2</fraction_done_end></app_init_data>",
            "init_data.xml: fraction_done_start 0.8 and fraction_done_end 0.2 must satisfy",
        ),
    ],
)
def test_malformed_file_gives_a_clear_error(data, expected):
    with pytest.raises(InitDataError) as caught:
        parse_init_data(data)
    assert str(caught.value).startswith(expected)
    assert isinstance(caught.value, BoincApiError)


def test_truncated_capture_is_malformed():
    data = (DATA / "init_data.xml").read_bytes()
    with pytest.raises(InitDataError, match="malformed XML"):
        parse_init_data(data[: len(data) // 2])


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(InitDataError) as caught:
        read_init_data(tmp_path / "init_data.xml")
    assert str(caught.value) == (
        f"init_data.xml: cannot read {tmp_path / 'init_data.xml'}: No such file or directory"
    )


def test_deep_nesting_is_refused():
    depth = 100_000
    data = b"<app_init_data><project_preferences>%s%s</project_preferences></app_init_data>" % (
        b"<a>" * depth,
        b"</a>" * depth,
    )
    with pytest.raises(InitDataError, match="nested deeper than 64 levels"):
        parse_init_data(data)


CAPTURED_TEXT = (DATA / "init_data.xml").read_text()
CAPTURED_TAGS = sorted(set(re.findall(r"<([a-z_]+)>[^<\n]*</\1>", CAPTURED_TEXT)))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_parse_or_give_init_data_error(data):
    try:
        assert isinstance(parse_init_data(data), InitData)
    except InitDataError as error:
        assert str(error).startswith("init_data.xml: ")


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(CAPTURED_TAGS), st.text(max_size=30))
def test_any_text_in_any_captured_field_parses_or_names_the_field(tag, text):
    escaped = text.replace("&", "&amp;").replace("<", "&lt;")
    data = re.sub(rf"<{tag}>[^<]*</{tag}>", lambda _: f"<{tag}>{escaped}</{tag}>", CAPTURED_TEXT)
    try:
        parse_init_data(data.encode("utf-8", errors="surrogatepass"))
    except InitDataError as error:
        message = str(error)
        assert f"{tag}>" in message or "malformed XML" in message or "fraction_done" in message

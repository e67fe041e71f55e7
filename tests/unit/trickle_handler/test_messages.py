"""Parsing msg_from_host.xml as BOINC's scheduler stores it, and refusing everything else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trickle_handler.messages import MAX_MESSAGE_CHARS, Trickle, parse_trickle
from trickle_handler.reasons import Reason, RejectedMessage
from trickle_handler.seed import scheduler_xml

HEAD = "      <result_name>wu1_0</result_name>\n      <time>1795548363</time>\n"


def test_vboxwrapper_trickle_as_stored_by_the_scheduler():
    xml = "      <result_name>wu1_0</result_name>\n      <time>1795548363</time>\n<cpu_time>3600.000000</cpu_time>\n"
    assert parse_trickle(xml) == Trickle("wu1_0", 1795548363.0, "cpu_time", 3600.0)
    assert scheduler_xml("wu1_0", 1795548363, "<cpu_time>3600.000000</cpu_time>\n") == xml


def test_trickle_credit_runtime_tag_and_bytes_column():
    xml = (HEAD + "<runtime>120.5</runtime>\n\n").encode()
    assert parse_trickle(xml) == Trickle("wu1_0", 1795548363.0, "runtime", 120.5)


def test_unknown_tags_and_entities_for_markup_are_fine():
    xml = (
        HEAD
        + "<fraction_done>0.5</fraction_done>\n<cpu_time> 1e3 </cpu_time>\n<note>a &lt; b</note>"
    )
    assert parse_trickle(xml).value == 1000.0


@pytest.mark.parametrize(
    ("xml", "reason"),
    [
        (None, Reason.EMPTY_MESSAGE),
        ("  \n", Reason.EMPTY_MESSAGE),
        (HEAD + "<cpu_time>1</cpu_time>" + " " * MAX_MESSAGE_CHARS, Reason.TOO_LARGE),
        (HEAD + "<cpu_time>1\x00</cpu_time>", Reason.CONTROL_CHARACTERS),
        (HEAD + "<cpu_time>1</cpu_tim>", Reason.MALFORMED_XML),
        (HEAD + "<cpu_time>1", Reason.MALFORMED_XML),
        (b"\xff\xfe" + HEAD.encode(), Reason.MALFORMED_XML),
        ('<!DOCTYPE x [<!ENTITY a "aaaa">]>' + HEAD, Reason.DTD_FORBIDDEN),
        ('<!ENTITY a "aaaa">' + HEAD, Reason.ENTITY_FORBIDDEN),
        (HEAD + "<cpu_time>&big;</cpu_time>", Reason.ENTITY_FORBIDDEN),
        (HEAD + "<cpu_time><v>1</v></cpu_time>", Reason.NESTED_ELEMENT),
        (HEAD + "<cpu_time>1</cpu_time><cpu_time>2</cpu_time>", Reason.DUPLICATE_FIELD),
        (HEAD + "<result_name>wu2_0</result_name><cpu_time>1</cpu_time>", Reason.DUPLICATE_FIELD),
        ("<time>1</time><cpu_time>1</cpu_time>", Reason.MISSING_RESULT_NAME),
        (
            "<result_name> </result_name><time>1</time><cpu_time>1</cpu_time>",
            Reason.EMPTY_RESULT_NAME,
        ),
        (
            "<result_name>a b</result_name><time>1</time><cpu_time>1</cpu_time>",
            Reason.BAD_RESULT_NAME,
        ),
        (
            f"<result_name>{'x' * 255}</result_name><time>1</time><cpu_time>1</cpu_time>",
            Reason.BAD_RESULT_NAME,
        ),
        ("<result_name>wu</result_name><cpu_time>1</cpu_time>", Reason.MISSING_TIME),
        ("<result_name>wu</result_name><time>noon</time><cpu_time>1</cpu_time>", Reason.BAD_TIME),
        (
            "<result_name>wu</result_name><time>-5</time><cpu_time>1</cpu_time>",
            Reason.TIME_OUT_OF_RANGE,
        ),
        (
            "<result_name>wu</result_name><time>inf</time><cpu_time>1</cpu_time>",
            Reason.TIME_OUT_OF_RANGE,
        ),
        (HEAD, Reason.MISSING_VALUE),
        (HEAD + "<cpu_time>1</cpu_time><runtime>1</runtime>", Reason.AMBIGUOUS_VALUE),
        (HEAD + "<cpu_time>lots</cpu_time>", Reason.NON_NUMERIC_VALUE),
        (HEAD + "<cpu_time></cpu_time>", Reason.NON_NUMERIC_VALUE),
        (HEAD + "<cpu_time>1_000</cpu_time>", Reason.NON_NUMERIC_VALUE),  # float() would take it
        (HEAD + "<cpu_time>\uff13\uff16</cpu_time>", Reason.NON_NUMERIC_VALUE),  # full-width digits
        (HEAD + "<cpu_time>0x10</cpu_time>", Reason.NON_NUMERIC_VALUE),
        (HEAD + "<cpu_time>NaN</cpu_time>", Reason.NAN_VALUE),
        (HEAD + "<cpu_time>-inf</cpu_time>", Reason.INFINITE_VALUE),
        (HEAD + "<cpu_time>1e400</cpu_time>", Reason.INFINITE_VALUE),
        (HEAD + "<cpu_time>-3600</cpu_time>", Reason.NEGATIVE_VALUE),
        (HEAD + "<runtime>0</runtime>", Reason.ZERO_RUNTIME),
    ],
)
def test_rejections(xml, reason):
    with pytest.raises(RejectedMessage) as caught:
        parse_trickle(xml)
    assert caught.value.reason is reason


def test_billion_laughs_is_refused_before_expansion():
    laughs = (
        '<!DOCTYPE l [<!ENTITY l0 "ha">'
        + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
        + "]>"
    )
    with pytest.raises(RejectedMessage) as caught:
        parse_trickle(laughs + HEAD + "<cpu_time>&l9;</cpu_time>")
    assert caught.value.reason is Reason.DTD_FORBIDDEN


def test_huge_finite_value_is_accepted_for_the_caps_to_cut():
    assert parse_trickle(HEAD + "<cpu_time>1e300</cpu_time>").value == 1e300


def test_every_rejection_reason_has_a_distinct_stable_code():
    codes = [r.code for r in Reason]
    assert len(codes) == len(set(codes)) >= 30
    assert all(len(c) <= 32 and c == c.lower() for c in codes)
    assert not Reason.CAPPED_WALL_TIME.is_rejection and Reason.FOREIGN_RESULT.is_rejection


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=300),
        st.lists(
            st.sampled_from(
                [
                    "<result_name>",
                    "</result_name>",
                    "<time>",
                    "</time>",
                    "<cpu_time>",
                    "</cpu_time>",
                    "<runtime>",
                    "</runtime>",
                    "wu1_0",
                    "1795548363",
                    "3600.5",
                    "-1",
                    "nan",
                    "1e999",
                    "&amp;",
                    "&x;",
                    "<!DOCTYPE a>",
                    "<![CDATA[1]]>",
                    "<a>",
                    "</a>",
                    "\n",
                    " ",
                    "\x00",
                    "\u00e9",
                    "<?xml version='1.0'?>",
                    "<!-- c -->",
                ]
            ),
            max_size=25,
        ).map("".join),
    )
)
def test_any_text_is_either_a_trickle_or_a_reasoned_rejection(xml):
    try:
        trickle = parse_trickle(xml)
    except RejectedMessage as exc:
        assert isinstance(exc.reason, Reason)
    else:
        assert trickle.value >= 0 and trickle.value < float("inf") and trickle.result_name

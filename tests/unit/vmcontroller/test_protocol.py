"""The typed JSON messages: round trips, validation, error codes, request tracking."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcontroller import protocol as p


@pytest.mark.parametrize(
    "message, payload",
    [
        (p.Hello("vm1", "0.1", {"commands": ["run"]}, {"cpus": 2}, 5.0), b""),
        (p.Run(7, argv=["echo", "hi"], env={"A": "1"}, cwd="sub", timeout=3.5, stdin="x"), b""),
        (p.Run(8, shell="echo $HOME"), b""),
        (p.Output(7, "stdout"), b"line\n\x00binary\xff"),
        (p.Exit(7, None, 9, {"ru_utime": 0.5}, 1.25, timed_out=True), b""),
        (p.Data("t1", 262144), bytes(range(256)) * 4),
        (p.Error(None, p.ErrorCode.MALFORMED, "bad"), b""),
        (p.DataAck("t1", 10, sync=True), b""),
    ],
)
def test_round_trip(message, payload):
    decoded, rest = p.decode(p.encode(message, payload))
    assert decoded == message and rest == payload


def test_every_message_type_is_registered_once():
    assert len(p.MESSAGE_TYPES) == len({cls.__name__ for cls in p.MESSAGE_TYPES.values()})
    assert all(name == cls.TYPE for name, cls in p.MESSAGE_TYPES.items())


def test_payload_only_where_allowed():
    with pytest.raises(ValueError):
        p.encode(p.Ping(1), b"x")
    with pytest.raises(p.ProtocolError) as info:
        p.decode(b'{"type":"ping","v":1,"seq":3}\nextra')
    assert info.value.code == p.ErrorCode.MALFORMED and info.value.seq == 3


@pytest.mark.parametrize(
    "body, code, seq",
    [
        (b"\xff\xfe", p.ErrorCode.MALFORMED, None),
        (b"[1,2]", p.ErrorCode.MALFORMED, None),
        (b'{"type":"ping","seq":1}', p.ErrorCode.MALFORMED, 1),
        (b'{"type":"ping","v":99,"seq":2}', p.ErrorCode.BAD_VERSION, 2),
        (b'{"type":"launch","v":1,"seq":4}', p.ErrorCode.UNKNOWN_TYPE, 4),
        (b'{"type":"run","v":1}', p.ErrorCode.MALFORMED, None),
        (b'{"type":"run","v":1,"seq":true}', p.ErrorCode.MALFORMED, None),
        (b'{"type":"run","v":1,"seq":5,"timeout":"soon"}', p.ErrorCode.MALFORMED, 5),
        (b'{"type":"run","v":1,"seq":6,"env":{"A":1}}', p.ErrorCode.MALFORMED, 6),
        (b'{"type":"run","v":1,"seq":7,"bogus":1}', p.ErrorCode.MALFORMED, 7),
    ],
)
def test_bad_bodies_raise_protocol_errors_with_codes(body, code, seq):
    with pytest.raises(p.ProtocolError) as info:
        p.decode(body)
    assert info.value.code == code and info.value.seq == seq
    assert info.value.message


def test_encoded_header_is_one_json_line():
    body = p.encode(p.Run(1, shell="echo 'a\nb'"))
    assert b"\n" not in body and json.loads(body)["type"] == "run"


def test_tracker_resolves_rejects_and_fails_by_key():
    tracker = p.RequestTracker(first=10)
    seq_a, a = tracker.new("vm-a")
    seq_b, b = tracker.new("vm-b")
    assert (seq_a, seq_b) == (10, 11) and len(tracker) == 2
    results = []
    a.addBoth(results.append)
    b.addErrback(results.append)
    assert tracker.fail_all(p.ConnectionLostError("gone"), key="vm-b") == 1
    assert results[0].check(p.ConnectionLostError)
    assert tracker.resolve(seq_a, "pong") and results[1] == "pong"
    assert not tracker.resolve(seq_a, "again") and len(tracker) == 0
    assert tracker.reserve() == 12


_VALID = [
    p.encode(p.Run(3, argv=["a"], env={"K": "V"}, timeout=1.5)),
    p.encode(p.Data("t", 7), b"\x00\x01payload"),
    p.encode(p.Exit(1, 0, None, {"ru_utime": 0.1}, 0.2)),
    p.encode(p.Put(4, "t", "x/y", 10)),
]


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.tuples(st.sampled_from(_VALID), st.integers(0, 120), st.binary(max_size=8)).map(
            lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]) :]
        ),
        st.dictionaries(
            st.sampled_from(["type", "v", "seq", "argv", "shell", "env", "timeout", "re", "x"]),
            st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers())),
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_decode_never_fails_with_anything_but_protocol_error(body):
    try:
        message, payload = p.decode(body)
    except p.ProtocolError as error:
        assert error.code in vars(p.ErrorCode).values() and error.message
    else:
        assert isinstance(message, p.Message)
        assert p.decode(p.encode(message, bytes(payload)))[0] == message


def test_encode_parts_pass_the_payload_through_and_join_to_encode():
    payload = memoryview(bytes(range(256)) * 4)
    parts = p.encode_parts(p.Data("t1", 0), payload)
    assert parts[-1] is payload
    assert b"".join(parts) == p.encode(p.Data("t1", 0), payload)
    assert p.encode_parts(p.DataAck("t1", 10)) == (p.encode(p.DataAck("t1", 10)),)
    with pytest.raises(ValueError, match="carries no payload"):
        p.encode_parts(p.DataAck("t1", 10), b"x")

"""vmcontroller.stomp.codec: round trips, splits, escaping, heart-beats, limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcontroller.stomp.codec import (
    DIRECT_BODY_SIZE,
    HEARTBEAT,
    Frame,
    FrameError,
    FrameParser,
    FrameTooLarge,
    MalformedFrame,
    encode_frame,
)

VERSIONS = ["1.0", "1.1", "1.2"]

header_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=20,
)
escapable_text = header_text.filter(lambda s: "\r" not in s)
names = st.text(alphabet="abcdefghij-:\\\n", min_size=1, max_size=8)


def feed_all(parser: FrameParser, chunks) -> list[Frame]:
    frames = []
    for chunk in chunks:
        frames.extend(parser.feed(chunk))
    return frames


def without_length(frame: Frame) -> dict[str, str]:
    return {k: v for k, v in frame.headers.items() if k != "content-length"}


@given(
    command=st.sampled_from(["SEND", "MESSAGE", "SUBSCRIBE", "ERROR"]),
    headers=st.dictionaries(names, escapable_text, max_size=5),
    body=st.binary(max_size=300),
    version=st.sampled_from(["1.1", "1.2"]),
)
def test_round_trip_escaped_versions(command, headers, body, version):
    frame = Frame(command, headers, body)
    (parsed,) = FrameParser(version).feed(encode_frame(frame, version))
    assert parsed.command == command
    assert without_length(parsed) == {k: v for k, v in headers.items() if k != "content-length"}
    assert parsed.body == body


@settings(max_examples=60)
@given(
    body=st.binary(max_size=200),
    value=escapable_text,
    data=st.data(),
)
def test_split_at_any_byte_boundaries(body, value, data):
    """The same stream cut into arbitrary chunks always gives the same frames."""
    frames = [
        Frame("SEND", {"destination": "/queue/a", "v": value}, body),
        Frame("MESSAGE", {"k:x": "a:b:c"}, b""),
        Frame("SEND", {}, b"\x00" * 3),
    ]
    stream = b"\n".join(encode_frame(f, "1.2") for f in frames) + b"\r\n"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    parser = FrameParser("1.2")
    parsed = feed_all(parser, chunks)
    assert [(f.command, without_length(f), f.body) for f in parsed] == [
        (f.command, f.headers, f.body) for f in frames
    ]
    assert parser.heartbeats_seen == 3
    assert parser.buffered == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_every_single_cut_and_one_byte_at_a_time(version):
    frame = Frame("SEND", {"destination": "/queue/x", "url": "http://a:1/b"}, b"a\x00b")
    stream = encode_frame(frame, version) + HEARTBEAT + encode_frame(Frame("DISCONNECT"), version)
    expected = [("SEND", frame.body), ("DISCONNECT", b"")]
    for cut in range(len(stream) + 1):
        parsed = feed_all(FrameParser(version), [stream[:cut], stream[cut:]])
        assert [(f.command, f.body) for f in parsed] == expected, cut
    one_by_one = feed_all(FrameParser(version), [bytes([b]) for b in stream])
    assert [(f.command, f.body) for f in one_by_one] == expected


def test_colon_in_header_value_and_first_header_wins():
    data = b"MESSAGE\nurl:http://x:80/y\nfoo:first\nfoo:second\n\nbody\x00"
    (frame,) = FrameParser("1.0").feed(data)
    assert frame.headers == {"url": "http://x:80/y", "foo": "first"}
    assert frame.body == b"body"


@pytest.mark.parametrize(
    "version, encoded",
    [
        ("1.0", None),
        ("1.1", b"a\\cb:x\\ny\\\\z\r"),
        ("1.2", b"a\\cb:x\\ny\\\\z\\r"),
    ],
)
def test_header_escaping_per_version(version, encoded):
    frame = Frame("SEND", {"a:b": "x\ny\\z\r"})
    if encoded is None:
        with pytest.raises(ValueError, match="unescaped"):
            encode_frame(frame, version)
        return
    data = encode_frame(frame, version)
    assert data.split(b"\n", 1)[1].startswith(encoded + b"\n")
    if version == "1.2":
        (parsed,) = FrameParser(version).feed(data)
        assert parsed.headers == {"a:b": "x\ny\\z\r"}


def test_no_escaping_for_connect_and_connected():
    data = encode_frame(Frame("CONNECT", {"login": "a\\b", "passcode": "p:q"}), "1.2")
    assert b"login:a\\b\n" in data and b"passcode:p:q\n" in data
    (frame,) = FrameParser("1.2").feed(data)
    assert frame.headers == {"login": "a\\b", "passcode": "p:q"}
    (frame,) = FrameParser("1.2").feed(b"CONNECTED\nserver:x\\c\n\n\x00")
    assert frame.headers["server"] == "x\\c"


def test_1_0_does_not_unescape():
    (frame,) = FrameParser("1.0").feed(b"MESSAGE\nh:a\\nb\\c\n\n\x00")
    assert frame.headers["h"] == "a\\nb\\c"


def test_undefined_escape_is_fatal():
    with pytest.raises(MalformedFrame) as info:
        FrameParser("1.2").feed(b"MESSAGE\nh:a\\tb\n\n\x00")
    assert info.value.code == "bad-escape"


def test_content_length_always_set_and_body_may_hold_nul():
    data = encode_frame(Frame("SEND", {"content-length": "999"}, b"\x00\x00"))
    assert b"content-length:2\n" in data and b"999" not in data
    assert b"content-length" not in encode_frame(Frame("SEND", {}, b""))
    (frame,) = FrameParser().feed(data)
    assert frame.body == b"\x00\x00"


def test_body_without_content_length_runs_to_nul():
    frames = FrameParser().feed(b"SEND\n\nabc\x00SEND\n\n\x00")
    assert [f.body for f in frames] == [b"abc", b""]


def test_heartbeats_counted_and_reported():
    beats = []
    parser = FrameParser(on_heartbeat=lambda: beats.append(1))
    assert parser.feed(b"\n\r\n\n") == []
    assert parser.feed(b"\r") == []  # half a CRLF: wait
    frames = parser.feed(b"\nSEND\n\n\x00\n")
    assert len(frames) == 1
    assert parser.heartbeats_seen == 5 == len(beats)


def test_version_settable_after_negotiation():
    parser = FrameParser("1.0")
    assert parser.feed(b"MESSAGE\nh:a\\cb\n\n\x00")[0].headers["h"] == "a\\cb"
    parser.version = "1.2"
    assert parser.feed(b"MESSAGE\nh:a\\cb\n\n\x00")[0].headers["h"] == "a:b"
    with pytest.raises(ValueError, match="unsupported STOMP version"):
        parser.version = "2.0"


@pytest.mark.parametrize(
    "data, code",
    [
        (b"SEND\nnocolon\n\n\x00", "bad-header"),
        (b"SE ND\n\n\x00", "bad-command"),
        (b"\x00\n\n\x00", "bad-command"),
        (b"SEND\ncontent-length:x\n\n\x00", "bad-content-length"),
        (b"SEND\ncontent-length:-1\n\n\x00", "bad-content-length"),
        (b"SEND\ncontent-length:2\n\nabc\x00", "missing-nul"),
        (b"SEND\nh:\xff\n\n\x00", "bad-encoding"),
        (b"\rX", "bad-eol"),
    ],
)
def test_malformed_frames(data, code):
    parser = FrameParser()
    with pytest.raises(MalformedFrame) as info:
        parser.feed(data)
    assert info.value.code == code
    with pytest.raises(FrameError):  # the stream stays failed
        parser.feed(b"SEND\n\n\x00")


@pytest.mark.parametrize(
    "data, code",
    [
        (b"SEND\ncontent-length:2000\n\n", "frame-too-large"),  # announced: fails at once
        (b"SEND\n\n" + b"x" * 2000, "frame-too-large"),
        (b"SEND\n" + b"h:" + b"v" * 600, "headers-too-large"),
        (b"SEND\n" + b"h:v\n" * 20 + b"\n\x00", "too-many-headers"),
    ],
)
def test_limits(data, code):
    parser = FrameParser(max_frame_size=1000, max_header_bytes=500, max_headers=10)
    with pytest.raises(FrameTooLarge) as info:
        parser.feed(data)
    assert info.value.code == code
    assert parser.buffered == 0


def test_exactly_at_limit_is_accepted():
    body = b"x" * (1000 - len(b"SEND\ncontent-length:980\n\n") - 1)
    data = encode_frame(Frame("SEND", {}, body))
    assert len(data) == 1000
    assert FrameParser(max_frame_size=1000).feed(data)[0].body == body


def test_buffer_stays_bounded_over_a_long_stream():
    """coilmq kept every byte ever received; we keep at most one partial frame."""
    frame = encode_frame(Frame("SEND", {"destination": "/queue/x"}, b"z" * 65536))
    parser = FrameParser()
    received = 0
    high_water = 0
    for _ in range(400):  # ~26 MB through one parser, fed in odd-sized pieces
        for piece in (frame[:1000], frame[1000:40000], frame[40000:] + HEARTBEAT):
            received += len(parser.feed(piece))
            high_water = max(high_water, parser.buffered)
    assert received == 400
    assert parser.buffered == 0
    assert high_water < len(frame)


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match="unsupported STOMP version"):
        encode_frame(Frame("SEND"), "1.3")
    with pytest.raises(ValueError, match="invalid STOMP command"):
        encode_frame(Frame("SE\nND"))
    with pytest.raises(ValueError, match="positive"):
        FrameParser(max_frame_size=0)


def test_frames_before_an_error_are_handed_over():
    parser = FrameParser()
    with pytest.raises(MalformedFrame) as info:
        parser.feed(b"SEND\n\nok\x00SEND\nbroken\n\n\x00")
    assert [f.body for f in info.value.frames] == [b"ok"]
    with pytest.raises(MalformedFrame) as again:
        parser.feed(b"")
    assert again.value.frames == []  # never handed over twice


def test_pause_after_connect_lets_the_caller_switch_version():
    parser = FrameParser("1.0", pause_after={"CONNECT"})
    stream = b"CONNECT\naccept-version:1.2\n\n\x00\nSEND\nurl:a\\cb\n\n\x00SEND\nurl:c\\cd\n\n\x00"
    (connect,) = parser.feed(stream)
    assert connect.command == "CONNECT"
    assert parser.buffered > 0
    parser.version = "1.2"
    assert [f.headers["url"] for f in parser.feed(b"")] == ["a:b", "c:d"]


# --- large bodies received in place (DIRECT_BODY_SIZE) ------------------------

LARGE = bytes(range(256)) * (DIRECT_BODY_SIZE // 256 + 3)  # NUL bytes inside too


def large_stream() -> bytes:
    """A small frame, a large one, a heart-beat, another large one, a small one."""
    return b"".join(
        [
            encode_frame(Frame("SEND", {"destination": "/queue/a"}, b"before")),
            encode_frame(Frame("SEND", {"destination": "/queue/a"}, LARGE)),
            HEARTBEAT,
            encode_frame(Frame("SEND", {"destination": "/queue/b"}, LARGE[::-1])),
            encode_frame(Frame("SEND", {"destination": "/queue/a"}, b"after")),
        ]
    )


def assert_large_stream(frames: list[Frame]) -> None:
    assert [f.body for f in frames] == [b"before", LARGE, LARGE[::-1], b"after"]
    assert [f.headers["destination"] for f in frames] == [
        "/queue/a",
        "/queue/a",
        "/queue/b",
        "/queue/a",
    ]


@pytest.mark.parametrize("piece", [1, 7, 4096, DIRECT_BODY_SIZE - 1, DIRECT_BODY_SIZE + 17, 10**7])
def test_large_bodies_survive_any_piece_size(piece):
    stream = large_stream()
    parser = FrameParser()
    frames = feed_all(parser, [stream[i : i + piece] for i in range(0, len(stream), piece)])
    assert_large_stream(frames)
    assert parser.buffered == 0
    assert parser.body_sink() is None


@given(st.data())
@settings(max_examples=40, deadline=None)
def test_large_bodies_cut_at_random_places(data):
    stream = large_stream()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert_large_stream(feed_all(FrameParser(), pieces))


def test_body_sink_takes_the_body_straight_from_a_socket_like_reader():
    """The broker's path: recv_into the sink, report the count, frames come out."""
    stream = large_stream()
    parser = FrameParser()
    frames: list[Frame] = []
    pos = 0
    while pos < len(stream):
        sink = parser.body_sink()
        if sink is not None:
            count = min(len(sink), 50_000, len(stream) - pos)
            sink[:count] = stream[pos : pos + count]
            sink.release()
            frames += parser.body_received(count)
        else:
            frames += parser.feed(stream[pos : pos + 1000])
            count = min(1000, len(stream) - pos)
        pos += count
    assert_large_stream(frames)
    assert isinstance(frames[1].body, bytearray)


def test_body_received_rejects_a_count_beyond_the_body():
    parser = FrameParser()
    head = encode_frame(Frame("SEND", {}, LARGE))[:100]
    parser.feed(head)
    sink = parser.body_sink()
    assert sink is not None
    with pytest.raises(ValueError, match="does not match"):
        parser.body_received(len(sink) + 1)
    with pytest.raises(ValueError, match="does not match"):
        FrameParser().body_received(1)


def test_large_body_without_its_nul_is_malformed():
    frame = encode_frame(Frame("SEND", {}, LARGE))
    parser = FrameParser()
    parser.feed(frame[:-1000])
    with pytest.raises(MalformedFrame) as caught:
        parser.feed(frame[-1000:-1] + b"X")
    assert caught.value.code == "missing-nul"
    assert parser.body_sink() is None

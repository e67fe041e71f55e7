"""boinc_mmap_file channels: the captured snapshot and the channel rule."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmwrapper.boinc.errors import SharedMemoryError
from vmwrapper.boinc.shmem import (
    CHANNEL_SIZE,
    MAX_MESSAGE_LENGTH,
    SHMEM_SIZE,
    Channel,
    SharedMemory,
)

from .conftest import DATA


@pytest.fixture
def snapshot(tmp_path):
    path = tmp_path / "boinc_mmap_file"
    shutil.copyfile(DATA / "boinc_mmap_file.snapshot", path)
    shmem = SharedMemory.open(path)
    yield shmem
    shmem.close()


def test_captured_snapshot_has_a_heartbeat_waiting(snapshot):
    assert snapshot.has_message(Channel.HEARTBEAT)
    assert snapshot.receive(Channel.HEARTBEAT) == (
        "<heartbeat/><wss>0.000000e+00</wss><max_wss>2.274885e+10</max_wss>"
    )
    assert not snapshot.has_message(Channel.HEARTBEAT)
    assert snapshot.receive(Channel.HEARTBEAT) is None


def test_captured_snapshot_status_was_read_by_the_client(snapshot):
    # The client clears the flag and leaves the text: nothing to receive, free to send.
    assert not snapshot.has_message(Channel.APP_STATUS)
    assert snapshot.receive(Channel.APP_STATUS) is None
    assert snapshot.send(Channel.APP_STATUS, "<fraction_done>0.5</fraction_done>\n")
    for channel in Channel:
        if channel not in (Channel.HEARTBEAT, Channel.APP_STATUS):
            assert not snapshot.has_message(channel), channel


@pytest.mark.parametrize("channel", ["control", "heartbeat", "trickle_down"])
def test_captured_messages_round_trip(tmp_path, channel):
    shmem = SharedMemory.create(tmp_path / "boinc_mmap_file")
    target = {
        "control": Channel.PROCESS_CONTROL_REQUEST,
        "heartbeat": Channel.HEARTBEAT,
        "trickle_down": Channel.TRICKLE_DOWN,
    }[channel]
    for message in json.loads((DATA / "channel_messages.json").read_text())[channel]:
        assert shmem.send(target, message)
        assert shmem.receive(target) == message


def test_send_waits_for_the_flag_and_force_send_overwrites(tmp_path):
    sender = SharedMemory.create(tmp_path / "m")
    receiver = SharedMemory.open(tmp_path / "m")
    assert sender.send(Channel.APP_STATUS, "first, a long message")
    assert not sender.send(Channel.APP_STATUS, "second")
    assert receiver.receive(Channel.APP_STATUS) == "first, a long message"
    assert sender.send(Channel.APP_STATUS, "third")
    sender.force_send(Channel.APP_STATUS, "fourth")
    # the shorter text is NUL-terminated: nothing of the longer one leaks through
    assert receiver.receive(Channel.APP_STATUS) == "fourth"


def test_channels_are_at_their_offsets(tmp_path):
    shmem = SharedMemory.create(tmp_path / "m")
    shmem.send(Channel.TRICKLE_UP, "<have_new_trickle_up/>\n")
    raw = (tmp_path / "m").read_bytes()
    offset = 6 * CHANNEL_SIZE
    assert raw[offset] == 1
    assert raw[offset + 1 : offset + 25] == b"<have_new_trickle_up/>\n\0"
    assert raw.count(b"\0") == SHMEM_SIZE - 24


def test_longest_message_fits_and_longer_is_refused(tmp_path):
    shmem = SharedMemory.create(tmp_path / "m")
    shmem.force_send(Channel.GRAPHICS_REPLY, "x" * MAX_MESSAGE_LENGTH)
    assert shmem.receive(Channel.GRAPHICS_REPLY) == "x" * MAX_MESSAGE_LENGTH
    with pytest.raises(ValueError, match="1023 bytes for channel GRAPHICS_REPLY exceeds 1022"):
        shmem.force_send(Channel.GRAPHICS_REPLY, "x" * 1023)


def test_unterminated_text_is_cut_at_the_channel_end(tmp_path):
    path = tmp_path / "m"
    raw = bytearray(SHMEM_SIZE)
    raw[0] = 1
    raw[1:CHANNEL_SIZE] = b"q" * (CHANNEL_SIZE - 1)
    raw[CHANNEL_SIZE] = 1  # next channel's flag must not be read as text
    path.write_bytes(bytes(raw))
    assert SharedMemory.open(path).receive(Channel.PROCESS_CONTROL_REQUEST) == "q" * 1023


def test_missing_file(tmp_path):
    with pytest.raises(SharedMemoryError) as caught:
        SharedMemory.open(tmp_path / "boinc_mmap_file")
    assert str(caught.value) == (
        f"cannot open the shared memory file {tmp_path / 'boinc_mmap_file'}: "
        "No such file or directory"
    )


def test_short_file(tmp_path):
    (tmp_path / "boinc_mmap_file").write_bytes(bytes(100))
    with pytest.raises(SharedMemoryError, match="has 100 bytes, expected 8192"):
        SharedMemory.open(tmp_path / "boinc_mmap_file")


def test_unopenable_file(tmp_path):
    (tmp_path / "boinc_mmap_file").mkdir()
    with pytest.raises(
        SharedMemoryError, match="cannot open the shared memory file .*Is a directory"
    ):
        SharedMemory.open(tmp_path / "boinc_mmap_file")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=CHANNEL_SIZE), min_size=8, max_size=8))
def test_any_file_content_is_received_without_error(tmp_path_factory, channels):
    path = tmp_path_factory.mktemp("shm") / "boinc_mmap_file"
    path.write_bytes(b"".join(c.ljust(CHANNEL_SIZE, b"\0") for c in channels))
    shmem = SharedMemory.open(path)
    for channel in Channel:
        text = shmem.receive(channel)
        assert text is None or (isinstance(text, str) and len(text) <= CHANNEL_SIZE - 1)
        assert not shmem.has_message(channel)
    shmem.close()

"""Trickle files: the up queue never overwrites, down files are read and deleted."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil

import pytest

from vmwrapper.boinc.errors import SlotError
from vmwrapper.boinc.shmem import Channel, SharedMemory
from vmwrapper.boinc.trickle import (
    TRICKLE_UP_FILE,
    TrickleUpQueue,
    format_trickle_up,
    take_trickle_down_files,
)

from .conftest import DATA


def test_format_matches_what_the_server_received():
    # The captured scheduler request shows the file's bytes inside <msg_from_host>.
    request = (DATA / "sched_request_with_trickle.xml").read_text()
    content = format_trickle_up("capture", "<vm_state>running</vm_state>\n")
    assert f"      <time>1795610555</time>\n{content}\n  </msg_from_host>" in request


@pytest.mark.parametrize("variety", ["", "two words", "a<b", "x" * 256, None])
def test_bad_variety_is_refused(variety):
    with pytest.raises(ValueError, match="trickle variety"):
        format_trickle_up(variety, "")


def test_captured_trickle_down_is_read_and_deleted(tmp_path):
    shutil.copyfile(DATA / "trickle_down_file", tmp_path / "trickle_down_1795610560")
    shutil.copyfile(DATA / "trickle_down_file", tmp_path / "trickle_down_1795610599")
    (tmp_path / "stderr.txt").write_text("unrelated")
    taken, problems = take_trickle_down_files(tmp_path)
    body = "\n<cmd>temp_exit</cmd>\n<note>captured trickle-down</note>\n"
    assert taken == [
        (tmp_path / "trickle_down_1795610560", body),
        (tmp_path / "trickle_down_1795610599", body),
    ]
    assert problems == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stderr.txt"]


def test_entries_that_are_not_files_are_skipped(tmp_path):
    (tmp_path / "trickle_down_1").mkdir()
    (tmp_path / "trickle_down_2").symlink_to(tmp_path / "missing")
    assert take_trickle_down_files(tmp_path) == ([], [])
    assert (tmp_path / "trickle_down_1").is_dir()


def test_undeletable_trickle_down_is_reported_and_left(tmp_path, monkeypatch):
    # Root may delete anything, so a read-only file system is simulated.
    (tmp_path / "trickle_down_1").write_text("x")

    def read_only(self, missing_ok=False):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(pathlib.Path, "unlink", read_only)
    taken, problems = take_trickle_down_files(tmp_path)
    assert taken == []
    assert problems == [
        f"cannot take the trickle-down file {tmp_path / 'trickle_down_1'}: Read-only file system"
    ]
    assert (tmp_path / "trickle_down_1").exists()


def test_unlistable_slot_is_a_slot_error(tmp_path):
    with pytest.raises(SlotError, match="cannot list the slot directory .*: No such file"):
        take_trickle_down_files(tmp_path / "gone")


class Client:
    """The client's side of trickle-up: read the notice, move the file."""

    def __init__(self, slot, shmem):
        self.slot, self.shmem, self.moved = slot, shmem, []

    def poll(self):
        notice = self.shmem.receive(Channel.TRICKLE_UP)
        if notice == "<have_new_trickle_up/>\n":
            path = self.slot / TRICKLE_UP_FILE
            self.moved.append(path.read_text())
            path.unlink()


@pytest.fixture
def queue_and_client(tmp_path):
    app = SharedMemory.create(tmp_path / "m")
    return TrickleUpQueue(tmp_path, app), Client(tmp_path, SharedMemory.open(tmp_path / "m"))


def test_trickles_go_one_at_a_time_and_none_is_lost(tmp_path, queue_and_client):
    queue, client = queue_and_client
    done = [queue.submit("vmstatus", f"<n>{i}</n>\n") for i in range(3)]
    assert (tmp_path / TRICKLE_UP_FILE).read_text() == "<variety>vmstatus</variety>\n<n>0</n>\n"
    assert queue.pending == 3
    for _ in range(10):
        client.poll()
        queue.pump()
    assert client.moved == [f"<variety>vmstatus</variety>\n<n>{i}</n>\n" for i in range(3)]
    assert all(d.called for d in done)
    assert queue.pending == 0


def test_no_write_while_the_client_has_not_taken_the_file(tmp_path, queue_and_client):
    queue, client = queue_and_client
    first = queue.submit("a", "1")
    second = queue.submit("b", "2")
    # The client reads the notice but has not moved the file yet (its poll is split).
    assert client.shmem.receive(Channel.TRICKLE_UP) is not None
    queue.pump()
    queue.pump()
    assert (tmp_path / TRICKLE_UP_FILE).read_text() == "<variety>a</variety>\n1"
    assert not first.called and not second.called
    (tmp_path / TRICKLE_UP_FILE).unlink()
    queue.pump()
    assert first.called and not second.called
    # the next one is written a tick later, never in the tick the first was taken
    assert not (tmp_path / TRICKLE_UP_FILE).exists()
    queue.pump()
    assert (tmp_path / TRICKLE_UP_FILE).read_text() == "<variety>b</variety>\n2"


def test_notice_is_retried_while_the_channel_is_full(tmp_path, queue_and_client):
    queue, client = queue_and_client
    client.shmem.force_send(Channel.TRICKLE_UP, "<have_new_upload_file/>\n")
    queue.submit("a", "1")
    assert client.shmem.receive(Channel.TRICKLE_UP) == "<have_new_upload_file/>\n"
    queue.pump()
    assert client.shmem.receive(Channel.TRICKLE_UP) == "<have_new_trickle_up/>\n"


def test_file_left_by_an_earlier_episode_is_sent_first(tmp_path, queue_and_client):
    queue, client = queue_and_client
    (tmp_path / TRICKLE_UP_FILE).write_text("<variety>old</variety>\nfrom before a crash\n")
    done = queue.submit("new", "body")
    assert (tmp_path / TRICKLE_UP_FILE).read_text().startswith("<variety>old</variety>")
    for _ in range(4):
        client.poll()
        queue.pump()
    assert client.moved == [
        "<variety>old</variety>\nfrom before a crash\n",
        "<variety>new</variety>\nbody",
    ]
    assert done.called

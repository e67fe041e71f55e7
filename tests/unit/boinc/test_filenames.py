"""Logical file names resolved like the client lays out the slot."""

from __future__ import annotations

import os
import shutil

import pytest

from vmwrapper.boinc.errors import SlotError
from vmwrapper.boinc.filenames import resolve_filename

from .conftest import DATA


@pytest.mark.parametrize(
    ("capture", "logical", "target"),
    [
        ("link_file_in", "in", "../../projects/127.0.0.1_35223_fake/wu1_in"),
        ("link_file_out", "out", "../../projects/127.0.0.1_35223_fake/wu1_0_out"),
    ],
)
def test_captured_link_files(tmp_path, capture, logical, target):
    shutil.copyfile(DATA / capture, tmp_path / logical)
    assert resolve_filename(tmp_path, logical) == tmp_path / target


def test_symlink_is_used_as_is(tmp_path):
    (tmp_path / "real").write_text("data")
    os.symlink("real", tmp_path / "in")
    assert resolve_filename(tmp_path, "in") == tmp_path / "in"


def test_plain_file_and_missing_name_are_the_name_itself(tmp_path):
    (tmp_path / "in").write_bytes(b"\x00binary input, not a link\n<soft_link>x</soft_link>")
    assert resolve_filename(tmp_path, "in") == tmp_path / "in"
    assert resolve_filename(tmp_path, "out") == tmp_path / "out"


def test_absolute_target_stays_absolute(tmp_path):
    (tmp_path / "in").write_text("<soft_link>/var/lib/boinc/projects/p/f</soft_link>\n")
    assert str(resolve_filename(tmp_path, "in")) == "/var/lib/boinc/projects/p/f"


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_empty_or_directory_name_is_refused(tmp_path, name):
    with pytest.raises(SlotError, match="is empty or a directory"):
        resolve_filename(tmp_path, name)

"""Work-directory confinement of every guest path."""

from __future__ import annotations

import os

import pytest

from vmcontroller.guest.paths import PathRefused, confine


@pytest.fixture
def work(tmp_path):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (work / "out").symlink_to(tmp_path / "outside")
    (work / "in").symlink_to(work / "sub")
    (work / "file-out").symlink_to(tmp_path / "outside" / "f")
    return work


@pytest.mark.parametrize(
    "path",
    ["", "..", "../x", "sub/../../x", "sub/..", "a\x00b", "/etc/passwd", "out/f", "out",
     "file-out", "out/new/dir/f", ".", "/"],
)  # fmt: skip
def test_escapes_are_refused(work, path):
    with pytest.raises(PathRefused) as info:
        confine(str(work), path, create_parents=True)
    assert "refused" in str(info.value) or "invalid path" in str(info.value)
    assert not (work.parent / "outside" / "new").exists()


@pytest.mark.parametrize("path, expected", [
    ("a.txt", "a.txt"), ("sub/a.txt", "sub/a.txt"), ("in/a.txt", "in/a.txt"),
    ("./sub//a.txt", "sub/a.txt"),
])  # fmt: skip
def test_paths_inside_are_allowed(work, path, expected):
    assert confine(str(work), path) == os.path.join(os.path.realpath(work), expected)


def test_absolute_path_inside_is_allowed_and_parents_created(work):
    target = os.path.join(os.path.realpath(work), "new", "deep", "f")
    assert confine(str(work), target, create_parents=True) == target
    assert os.path.isdir(os.path.dirname(target))

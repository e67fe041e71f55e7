"""Work-directory confinement of every guest path."""

from __future__ import annotations

import os
import threading

import pytest

from vmcontroller.guest import paths
from vmcontroller.guest.paths import PathRefused, confine, open_confined, open_confined_dir


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
    ("a.txt", "a.txt"), ("sub/a.txt", "sub/a.txt"), ("in/a.txt", "sub/a.txt"),
    ("./sub//a.txt", "sub/a.txt"),
])  # fmt: skip
def test_paths_inside_are_allowed(work, path, expected):
    assert confine(str(work), path) == os.path.join(os.path.realpath(work), expected)


def test_absolute_path_inside_is_allowed_and_parents_created(work):
    target = os.path.join(os.path.realpath(work), "new", "deep", "f")
    assert confine(str(work), target, create_parents=True) == target
    assert os.path.isdir(os.path.dirname(target))


def test_relative_symlinks_are_followed_but_may_not_climb_out(work):
    (work / "rel").symlink_to("sub")
    (work / "sub" / "up").symlink_to("../../outside")
    assert confine(str(work), "rel/a.txt") == os.path.join(os.path.realpath(work), "sub/a.txt")
    with pytest.raises(PathRefused):
        confine(str(work), "sub/up/f")


@pytest.fixture
def swap_world(work):
    """``work/d`` (a directory) and ``work/f`` (a file) that say "inside"; the
    same names outside say "outside"."""
    outside = work.parent / "outside"
    (work / "d").mkdir()
    (work / "d" / "secret").write_text("inside")
    (work / "f").write_text("inside")
    (outside / "secret").write_text("outside")
    (outside / "f").write_text("outside")
    return work, outside


def _read(fd: int) -> str:
    try:
        return os.read(fd, 100).decode()
    finally:
        os.close(fd)


def test_a_directory_swapped_for_a_symlink_after_the_check_is_not_followed(swap_world, monkeypatch):
    work, outside = swap_world
    real_open_in = paths.open_in

    def swap_then_open(confined, flags, mode=0o666):
        # between resolving "d" and opening "secret" in it: d -> outside
        os.rename(work / "d", work / "d-real")
        (work / "d").symlink_to(outside)
        return real_open_in(confined, flags, mode)

    monkeypatch.setattr(paths, "open_in", swap_then_open)
    assert _read(open_confined(str(work), "d/secret")) == "inside"
    # what a check-then-open by name gives after the same swap:
    assert (work / "d" / "secret").read_text() == "outside"


def test_a_file_swapped_for_a_symlink_after_the_check_is_refused(swap_world, monkeypatch):
    work, outside = swap_world
    real_open_in = paths.open_in

    def swap_then_open(confined, flags, mode=0o666):
        (work / "f").unlink()
        (work / "f").symlink_to(outside / "f")
        return real_open_in(confined, flags, mode)

    monkeypatch.setattr(paths, "open_in", swap_then_open)
    with pytest.raises(PathRefused, match="became a symlink"):
        open_confined(str(work), "f")


def test_a_racing_symlink_swap_never_reaches_outside(swap_world):
    """A thread flips ``d`` between the directory and a symlink to outside
    while we open ``d/secret`` over and over: every open that succeeds reads
    the inside file."""
    work, outside = swap_world
    os.rename(work / "d", work / "d-real")
    stop = threading.Event()

    def flip() -> None:
        link, real = work / "d-link", work / "d-real"
        link.symlink_to(outside)
        while not stop.is_set():
            os.rename(real, work / "d")  # d is the directory
            os.rename(work / "d", real)
            os.rename(link, work / "d")  # d is the symlink
            os.rename(work / "d", link)

    flipper = threading.Thread(target=flip)
    flipper.start()
    seen: dict[str, int] = {}
    try:
        for _ in range(3000):
            try:
                content = _read(open_confined(str(work), "d/secret"))
            except (PathRefused, FileNotFoundError):
                content = "refused"
            seen[content] = seen.get(content, 0) + 1
    finally:
        stop.set()
        flipper.join()
    assert "outside" not in seen, seen
    assert seen.get("inside", 0) > 0 and seen.get("refused", 0) > 0, seen


def test_a_directory_opened_for_cwd_stays_the_checked_one(swap_world):
    work, outside = swap_world
    fd = open_confined_dir(str(work), "d")
    try:
        os.rename(work / "d", work / "d-real")
        (work / "d").symlink_to(outside)
        assert sorted(os.listdir(fd)) == ["secret"]
        assert os.readlink(f"/proc/self/fd/{fd}") == str(os.path.realpath(work / "d-real"))
    finally:
        os.close(fd)

"""Progress files read the BOINC-wrapper way, and the weighted fraction over tasks."""

from __future__ import annotations

import pytest

from vmwrapper.job import Task
from vmwrapper.job.progress import overall_fraction_done, parse_fraction_done, read_fraction_done


@pytest.mark.parametrize(("content", "fraction"), [
    (b"0.25\n", 0.25),
    (b"0.1\n0.2\n0.3", 0.3),
    (b"0.1\n0.2\n0.3\n\n", 0.3),
    (b"  0.5 done\n", 0.5),
    (b"progress: 0.7\n0.4\n", 0.4),
    (b"0.4\nprogress: 0.7\n", 0.4),
    (b"1.5\n", 1.0),
    (b"-0.2\n", 0.0),
    (b"5e-1\n", 0.5),
    (b"inf\n", 1.0),
    (b"0.3\nnan\n", 0.3),
    (b"", None),
    (b"not a number\n", None),
])
def test_parse_fraction_done(content, fraction):
    assert parse_fraction_done(content) == fraction


def test_only_the_last_32_bytes_are_read(tmp_path):
    path = tmp_path / "fraction"
    # 0.9 sits before the last 32 bytes; the tail starts inside "12345...", BOINC-style
    path.write_bytes(b"0.9\n" + b"x" * 40 + b"\n" + b"0.125\n" + b"y" * 20 + b"\n")
    assert read_fraction_done(path) == 0.125
    path.write_bytes(b"0.9\n" + b"z" * 40 + b"\n")
    assert read_fraction_done(path) is None


def test_a_short_file_is_read_whole(tmp_path):
    path = tmp_path / "fraction"
    path.write_bytes(b"0.5\n0.6\n")
    assert read_fraction_done(path) == 0.6


def test_a_missing_file_has_no_value(tmp_path):
    assert read_fraction_done(tmp_path / "absent") is None


def test_the_tail_may_start_inside_a_number_as_in_boinc(tmp_path):
    path = tmp_path / "fraction"
    path.write_bytes(b"0.123456789012345678901234567890123\n")  # 36 bytes
    # the tail is "23456789...": BOINC reads a huge number and clamps it; so do we
    assert read_fraction_done(path) == 1.0
    path.write_bytes(b"0.1234567890123456789012345678\n")  # 31 bytes: read whole
    assert read_fraction_done(path) == pytest.approx(0.1234567890123456789012345678)


def test_overall_fraction_is_weighted_and_ignores_daemons():
    tasks = [Task("monitor", daemon=True, weight=100.0), Task("prep", weight=1.0),
             Task("run", weight=8.0), Task("post", weight=1.0)]
    assert overall_fraction_done(tasks, 0) == 0.0
    assert overall_fraction_done(tasks, 0, 0.5) == pytest.approx(0.05)
    assert overall_fraction_done(tasks, 1, 0.5) == pytest.approx(0.5)
    assert overall_fraction_done(tasks, 2, 0.0) == pytest.approx(0.9)
    assert overall_fraction_done(tasks, 3) == 1.0
    assert overall_fraction_done(tasks, 1, 7.0) == pytest.approx(0.9)


def test_overall_fraction_edge_cases():
    assert overall_fraction_done([], 0) == 0.0
    assert overall_fraction_done([Task("a", weight=0.0)], 0, 0.5) == 0.0
    with pytest.raises(ValueError, match="completed=2 but the job has 1 work task"):
        overall_fraction_done([Task("a")], 2)

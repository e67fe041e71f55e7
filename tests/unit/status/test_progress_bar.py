"""Admin progress bars: drawn on a Clock into in-memory streams, and a real file copy."""

from __future__ import annotations

import io

import pytest
from twisted.internet import task

from vmwrapper.progress_bar import (
    ProgressBar,
    StepProgress,
    copy_with_progress,
    format_bytes,
    format_clock,
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_bar_redraws_in_place_at_most_every_interval():
    clock, out = task.Clock(), Terminal()
    bar = ProgressBar("copying image", total=100 * 1024 * 1024, stream=out, clock=clock.seconds,
                      width=10, min_interval=0.5)
    clock.advance(1)
    bar.update(25 * 1024 * 1024)
    bar.update(30 * 1024 * 1024)  # too soon: not drawn
    clock.advance(1)
    bar.update(50 * 1024 * 1024)
    frames = out.getvalue().split("\r")[1:]
    assert frames[0] == ("copying image [##........]  25.0% 25.0 MiB/100.0 MiB 25.0 MiB/s "
                         "0:03 left\x1b[K")
    assert frames[1].startswith("copying image [#####.....]  50.0% 50.0 MiB/100.0 MiB")
    assert len(frames) == 2
    bar.finish()
    assert out.getvalue().endswith("100.0% 100.0 MiB/100.0 MiB 50.0 MiB/s in 0:02: done\x1b[K\n")


def test_log_bar_writes_a_line_per_tenth():
    clock, out = task.Clock(), io.StringIO()
    bar = ProgressBar("deploy", total=1000, unit="files", stream=out, clock=clock.seconds)
    for done in range(0, 1001, 50):
        clock.advance(1)
        bar.update(done)
    bar.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11  # 0 %, 10 % ... 90 %, then done
    assert "\r" not in out.getvalue()
    assert lines[1].startswith("deploy [##") and "10.0% 100 files/1000 files" in lines[1]
    assert lines[-1].endswith(": done")


def test_unknown_total_shows_amount_and_rate():
    clock, out = task.Clock(), Terminal()
    bar = ProgressBar("downloading", stream=out, clock=clock.seconds)
    clock.advance(2)
    bar.update(4096)
    assert out.getvalue() == "\rdownloading: 4.0 KiB (2.0 KiB/s, 0:02)\x1b[K"


def test_negative_total_is_refused():
    with pytest.raises(ValueError, match="total"):
        ProgressBar("x", total=-1)


def test_copy_with_progress_copies_exactly(tmp_path):
    source = tmp_path / "appliance.qcow2"
    data = bytes(range(256)) * 4099  # not a multiple of the chunk
    source.write_bytes(data)
    source.chmod(0o640)
    out = io.StringIO()
    target = tmp_path / "copy.qcow2"
    copied = copy_with_progress(source, target, ProgressBar("copy", total=len(data), stream=out),
                                chunk=4096)
    assert copied == len(data) and target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o640
    assert not (tmp_path / "copy.qcow2.part").exists()
    assert out.getvalue().splitlines()[-1].endswith(": done")


def test_failed_copy_leaves_no_partial_file(tmp_path):
    source = tmp_path / "image"
    source.write_bytes(b"x" * 10000)
    target = tmp_path / "missing-dir" / "image"
    out = io.StringIO()
    with pytest.raises(FileNotFoundError):
        copy_with_progress(source, target, ProgressBar("copy", total=10000, stream=out))
    assert out.getvalue().endswith(": failed\n")


def test_steps_are_numbered_and_timed():
    clock, out = task.Clock(), io.StringIO()
    steps = StepProgress("appliance", expected=3, stream=out, clock=clock.seconds)
    steps("debootstrap")
    clock.advance(65)
    steps("writing the disk")
    clock.advance(5)
    steps("converting")
    clock.advance(1)
    steps("built")
    assert out.getvalue().splitlines() == [
        "appliance [1/3 0:00] debootstrap",
        "appliance [2/3 1:05] writing the disk (previous step 1:05)",
        "appliance [3/3 1:10] converting (previous step 0:05)",
        "appliance [4/4 1:11] built (previous step 0:01)",
    ]


@pytest.mark.parametrize("value, text", [(0, "0 B"), (1536, "1.5 KiB"), (3 * 1024 ** 3, "3.0 GiB")])
def test_format_bytes(value, text):
    assert format_bytes(value) == text


def test_format_clock():
    assert (format_clock(125), format_clock(3725)) == ("2:05", "1:02:05")

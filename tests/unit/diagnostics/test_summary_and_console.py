"""The final summary and the capped guest console kept for failed tasks."""

from __future__ import annotations

import io
import math
import re

import pytest

from vmwrapper.boinc.log import StderrLog
from vmwrapper.diagnostics.console import MAX_LINE, console_tail, keep_console_log
from vmwrapper.diagnostics.summary import FOOTER, HEADER, RunSummary
from vmwrapper.status.secrets import SecretFilter


def test_summary_lines():
    summary = RunSummary("temporary exit, restart in 300 s:\n the VM did not come online",
                         cpu_time=3725.44, checkpoints=3, last_checkpoint_cpu=3600.0,
                         trickles_sent=2, cpu_reported=3600.0)
    assert summary.lines() == [
        HEADER,
        "exit: temporary exit, restart in 300 s: the VM did not come online",
        "CPU time: 1 h 02 min 05 s (3725.4 s)",
        "checkpoints: 3 (last at 1 h 00 min 00 s CPU)",
        "trickles: 2 sent, 3600.0 s of CPU time reported for credit",
        FOOTER,
    ]


def test_summary_goes_through_the_stderr_format():
    stream = io.StringIO()
    RunSummary("finishing with status 0 (SUCCESS): done", cpu_time=5.0).write(
        StderrLog(stream, now=lambda: 0.0, pid=4242))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 6
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(4242\): ", line) for line in lines)
    assert lines[3].endswith("checkpoints: 0")


@pytest.mark.parametrize("changes, message", [
    ({"exit_reason": " "}, "exit reason"),
    ({"cpu_time": -1.0}, "cpu_time"),
    ({"cpu_reported": math.inf}, "cpu_reported"),
    ({"checkpoints": -1}, "checkpoints"),
])
def test_summary_refuses_bad_values(changes, message):
    fields = {"exit_reason": "done", "cpu_time": 1.0, **changes}
    with pytest.raises(ValueError, match=message):
        RunSummary(**fields)


def test_console_tail_keeps_last_whole_lines_within_cap():
    text = "".join(f"line {n:03d}\n" for n in range(100))  # 9 bytes + newline each
    lines, dropped = console_tail(text, cap=35)
    assert lines == ["line 097", "line 098", "line 099"]
    assert dropped == len(text) - 27


def test_console_tail_strips_control_characters_and_cuts_long_lines():
    lines, _ = console_tail("\x1b[2J\x1b[1;1Hboot\r\n\n" + "y" * 5000 + "\n")
    assert lines == ["[2J[1;1Hboot", "y" * MAX_LINE]


def test_console_tail_needs_a_cap():
    with pytest.raises(ValueError, match="cap"):
        console_tail("x", cap=0)


def test_kept_console_is_capped_and_masked():
    logged: list[str] = []
    console = "".join(f"kernel: message {n}\n" for n in range(5000))
    console += "agent: connecting with passcode=Sw0rdf1sh!\nKernel panic - not syncing\n"
    kept = keep_console_log(console, "the VM crashed", logged.append,
                            secrets=SecretFilter(), cap=2000)
    assert kept <= 2000
    assert logged[0].startswith("guest console (the VM crashed): last ")
    assert "earlier bytes not shown" in logged[0]
    assert logged[-2] == "[console] Kernel panic - not syncing"
    assert logged[-1] == "guest console: end"
    assert not any("Sw0rdf1sh" in line for line in logged)


def test_empty_console_says_so():
    logged: list[str] = []
    assert keep_console_log("\n\n", "boot failed", logged.append) == 0
    assert logged == ["guest console (boot failed): empty"]

"""The stderr log line format BOINC's wrappers use."""

from __future__ import annotations

import io
import os
import re
import time

from vmwrapper.boinc.log import StderrLog, log


def test_line_format_with_fixed_time_and_pid(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        out = io.StringIO()
        StderrLog(out, now=lambda: 1795610551.9, pid=4242)("VM started\nsecond line")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert out.getvalue() == (
        "2026-11-25 12:42:31 (4242): VM started\n2026-11-25 12:42:31 (4242): second line\n"
    )


def test_default_log_writes_to_current_stderr_with_own_pid(capsys):
    log("hello")
    err = capsys.readouterr().err
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d \({os.getpid()}\): hello\n", err)

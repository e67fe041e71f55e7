"""The exit-status table matches BOINC's numbers and documents each value."""

from __future__ import annotations

from vmwrapper.boinc.exitcodes import ExitStatus, exit_status_for

# lib/error_numbers.h EXIT_* values, and ERR_EXEC (-148) as Unix passes it on.
BOINC_VALUES = {
    "SUCCESS": 0,
    "ERR_EXEC": -148 & 0xFF,
    "SIGNAL": 193,
    "ABORTED_BY_CLIENT": 194,
    "CHILD_FAILED": 195,
    "DISK_LIMIT": 196,
    "TIME_LIMIT": 197,
    "MEM_LIMIT": 198,
    "CLIENT_EXITING": 199,
    "ABORTED_BY_PROJECT": 202,
    "ABORTED_VIA_GUI": 203,
    "OUT_OF_MEMORY": 205,
    "INIT_FAILURE": 206,
    "NO_SUB_TASKS": 207,
    "SUB_TASK_FAILURE": 208,
}


def test_values_are_boincs():
    assert {status.name: int(status) for status in ExitStatus} == BOINC_VALUES


def test_every_value_says_when_it_is_used():
    for status in ExitStatus:
        assert len(status.description) > 30, status


def test_lookup_keeps_unknown_codes():
    assert exit_status_for(194) is ExitStatus.ABORTED_BY_CLIENT
    assert exit_status_for(42) == 42

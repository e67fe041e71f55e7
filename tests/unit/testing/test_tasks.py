"""``boinccmd --get_tasks`` parsing, against output captured from boinccmd 7.20.5."""

from __future__ import annotations

import pathlib

import pytest

from vmwrapper.testing.tasks import parse_get_tasks

DATA = pathlib.Path(__file__).parent / "data"


def test_running_task():
    (task,) = parse_get_tasks((DATA / "get_tasks_executing.txt").read_text())
    assert (task.name, task.wu_name) == ("wu1_0", "wu1")
    assert task.project_url == "http://127.0.0.1:41849/fake/"
    assert (task.state, task.scheduler_state, task.active_task_state) == (
        "downloaded", "scheduled", "EXECUTING")
    assert task.fraction_done == pytest.approx(0.2375)
    assert task.current_cpu_time == pytest.approx(0.11)
    assert task.checkpoint_cpu_time == 0.0
    assert task.elapsed_time == pytest.approx(3.007777)
    assert task.pid == 13998
    assert not task.ready_to_report and not task.suspended_via_gui
    assert task.fields["received"] == "Wed Nov 25 12:42:32 2026"  # values may hold colons


def test_finished_task():
    (task,) = parse_get_tasks((DATA / "get_tasks_uploaded.txt").read_text())
    assert task.state == "uploaded" and task.ready_to_report
    assert task.pid is None and task.exit_status == 0
    assert task.fraction_done == 0.0  # no such line once finished


def test_several_tasks_and_none():
    one = (DATA / "get_tasks_executing.txt").read_text()
    two = one + one.split("======== Tasks ========\n", 1)[1].replace("1) ---", "2) ---").replace(
        "wu1_0", "wu2_0")
    assert [t.name for t in parse_get_tasks(two)] == ["wu1_0", "wu2_0"]
    assert parse_get_tasks("\n======== Tasks ========\n") == []


def test_foreign_text_is_a_clear_error():
    with pytest.raises(ValueError, match="line 1 is not 'key: value' in a task"):
        parse_get_tasks("can't connect to 127.0.0.1\n")


def test_non_numeric_field_names_the_task():
    text = (DATA / "get_tasks_executing.txt").read_text().replace("0.237500", "n/a")
    (task,) = parse_get_tasks(text)
    with pytest.raises(ValueError, match="task wu1_0: 'fraction done' is not a number"):
        _ = task.fraction_done

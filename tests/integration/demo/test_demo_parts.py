"""The demo's pure parts: the work unit against real coreutils, the summary, the work dir."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from vmwrapper.demo.steps import MARKER, DemoFailed, prepare_work_dir
from vmwrapper.demo.summary import OUTPUT_LINES, DemoReport, render
from vmwrapper.demo.workload import WORDS, make_workload
from vmwrapper.testing.chain import Credit


def test_expected_output_is_what_sort_uniq_c_prints_for_the_input():
    work = make_workload(200_000, seed=3)
    done = subprocess.run(["sh", "-c", "sort | uniq -c"], env={"LC_ALL": "C"},
                          input=work.input, capture_output=True, check=True)
    assert work.expected_output == done.stdout
    assert 190_000 < len(work.input) < 210_000
    assert make_workload(200_000, seed=3) == work != make_workload(200_000, seed=4)
    assert {line.split()[1] for line in work.expected_output.decode().splitlines()} == set(WORDS)


def test_a_workload_of_no_bytes_is_refused():
    with pytest.raises(ValueError, match="input size 0 bytes: must be positive"):
        make_workload(0)


def _report(tmp_path: pathlib.Path, output: bytes, **changes) -> DemoReport:
    values = dict(
        result_name="demo_0", output=output, output_file=tmp_path / "job_output.txt",
        output_matches=True, cpu_time=34.56, elapsed_time=40.1,
        trickle_cpu_times=(8.9, 18.3, 34.56), hostid=42, userid=7, teamid=1, p_fpops=1e9,
        credit=Credit(0.08, 0.08, 0.08), database="sqlite:////w/project.db",
        logs={"client log": tmp_path / "client.log"}, total_seconds=96.4)
    values.update(changes)
    return DemoReport(**values)


def test_the_summary_names_output_cpu_trickles_credit_and_logs(tmp_path):
    text = render(_report(tmp_path, b"      1 a\n      2 b\n"))
    assert text.splitlines()[0] == "boinc-vm demo: demo_0 succeeded in 1:36"
    assert "      1 a\n" in text and "      2 b\n" in text
    assert "matches the counts computed on this host" in text
    assert "CPU time:  34.6 s used by the VM (40.1 s elapsed)" in text
    assert "Trickles:  3 sent, cumulative cpu_time 8.9, 18.3, 34.6 s" in text
    assert ("Credit:    host 42: 0.0800, user 7: 0.0800, team 1: 0.0800 cobblestones "
            "(granted by trickle_handler at 1 GFLOPS)") in text
    assert f"client log  {tmp_path / 'client.log'}" in text


def test_a_long_output_is_cut_and_a_wrong_one_is_flagged(tmp_path):
    output = "".join(f"{n:7d} w{n}\n" for n in range(OUTPUT_LINES + 5)).encode()
    text = render(_report(tmp_path, output, output_matches=False))
    assert f"w{OUTPUT_LINES - 1}\n" in text and f"w{OUTPUT_LINES}\n" not in text
    assert "  ... 5 more lines" in text
    assert "DIFFERS from the counts computed on this host" in text


def test_the_work_dir_is_emptied_only_when_the_demo_made_it(tmp_path):
    work = prepare_work_dir(tmp_path / "w")
    assert (work.root / MARKER).exists() and work.logs.is_dir()
    (work.logs / "old.log").write_text("previous run\n")
    again = prepare_work_dir(tmp_path / "w")
    assert list(again.logs.iterdir()) == []

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious").write_text("x")
    with pytest.raises(DemoFailed, match="not empty and was not made by the demo"):
        prepare_work_dir(tmp_path / "other")
    assert (tmp_path / "other" / "precious").read_text() == "x"


@pytest.mark.mariadb
def test_a_mariadb_demo_database_is_dropped_and_recreated_empty(tmp_path):
    from trickle_handler.db import ConnectionLostError, MySQLDatabase, parse_database_url
    from vmwrapper.demo.steps import prepare_database

    url = f"mysql://root@127.0.0.1:3306/boincvm_demo_test_{os.getpid()}"
    admin = MySQLDatabase(parse_database_url("mysql://root@127.0.0.1:3306/mysql"))
    try:
        admin.connect()
    except ConnectionLostError as exc:
        pytest.skip(f"MariaDB is not running on 127.0.0.1:3306 ({exc})")
    work = prepare_work_dir(tmp_path / "w")
    try:
        assert prepare_database(url, work) == url
        db = MySQLDatabase(parse_database_url(url))
        db.connect()
        db.execute("CREATE TABLE left_over (id INT)")
        db.close()
        prepare_database(url, work)  # the next run starts from an empty database
        db.connect()
        assert not db.table_exists("left_over")
        db.close()
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS boincvm_demo_test_{os.getpid()}")
        admin.close()


def test_trickles_that_arrive_swapped_are_shown_in_the_order_they_were_sent():
    from vmwrapper.testing.chain import claimed_cpu_time, in_sending_order
    from vmwrapper.testing.project_server import ReceivedTrickle
    from vmwrapper.testing.scheduler_protocol import TrickleUp

    def trickle(sent: int, cpu: float, received: float) -> ReceivedTrickle:
        xml = (f"      <result_name>demo_0</result_name>\n      <time>{sent}</time>\n"
               f"<cpu_time>{cpu:.3f}</cpu_time>\n")
        return ReceivedTrickle(42, received, TrickleUp("demo_0", sent, "cpu_time", xml, xml))

    # the client sent the two pending ones in directory order: 23.2 before 15.8
    arrived = [trickle(100, 8.1, 101), trickle(120, 23.2, 122), trickle(110, 15.8, 122)]
    ordered = [claimed_cpu_time(t.message.xml) for t in in_sending_order(arrived)]
    assert ordered == [8.1, 15.8, 23.2]

"""Finding the project and its database like a BOINC daemon; the --db URL; the log format."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from trickle_handler.boinclog import BoincLog, format_line
from trickle_handler.cli import parse_args
from trickle_handler.config import ConfigError, locate, read_config_xml
from trickle_handler.db import BadDatabaseURL, DatabaseURL, parse_database_url

CONFIG = """<?xml version="1.0"?>
<boinc>
  <config>
    <db_name>proj</db_name>
    <db_host>{host}</db_host>
    <db_user>boincadm</db_user>
    <db_passwd>s3cret</db_passwd>
  </config>
  <daemons><daemon><cmd>trickle_handler --variety cpu_time</cmd></daemon></daemons>
</boinc>
"""


def make_project(root: Path, host: str = "localhost") -> Path:
    (root / "cgi-bin").mkdir(parents=True)
    (root / "config.xml").write_text(CONFIG.format(host=host))
    return root


def test_found_from_tmp_host_subdirectory_like_bin_start(tmp_path):
    project = make_project(tmp_path / "proj")
    (project / "tmp_myhost").mkdir()
    where = locate(None, None, env={}, cwd=project / "tmp_myhost")
    assert where.project_dir == project.resolve()
    assert where.db == DatabaseURL("mysql", "proj", "localhost", 3306, "boincadm", "s3cret")
    assert where.db_source.endswith("config.xml")


def test_env_beats_cwd_and_option_beats_env(tmp_path):
    a, b = make_project(tmp_path / "a"), make_project(tmp_path / "b", host="db.example:3307")
    where = locate(None, None, env={"BOINC_PROJECT_DIR": str(b)}, cwd=a)
    assert (where.project_dir, where.db.host, where.db.port) == (b.resolve(), "db.example", 3307)
    assert locate(None, str(a), env={"BOINC_PROJECT_DIR": str(b)}, cwd=b).project_dir == a.resolve()


def test_db_url_wins_over_config_xml(tmp_path):
    project = make_project(tmp_path / "p")
    url = parse_database_url("sqlite:///tmp/x.db")
    where = locate(url, None, env={}, cwd=project)
    assert (where.db, where.db_source, where.project_dir) == (url, "--db", project.resolve())


def test_db_host_equal_to_hostname_means_localhost(tmp_path):
    project = make_project(tmp_path / "p", host="boincserver")
    assert read_config_xml(project, hostname="boincserver").host == "localhost"


def test_missing_project_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="--project_dir DIR or --db URL"):
        locate(None, None, env={}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="needs config.xml and cgi-bin"):
        locate(None, str(tmp_path), env={}, cwd=tmp_path)


def test_broken_config_xml(tmp_path):
    project = make_project(tmp_path / "p")
    (project / "config.xml").write_text("<boinc><config><db_host>x</db_host></config></boinc>")
    with pytest.raises(ConfigError, match="no <db_name>"):
        read_config_xml(project)
    (project / "config.xml").write_text("<boinc>")
    with pytest.raises(ConfigError, match="cannot read"):
        read_config_xml(project)


def test_database_urls():
    url = parse_database_url("mysql://adm:p%40ss@127.0.0.1:3307/proj")
    assert url == DatabaseURL("mysql", "proj", "127.0.0.1", 3307, "adm", "p@ss")
    assert url.redacted() == "mysql://adm@127.0.0.1:3307/proj"
    assert parse_database_url("sqlite:////var/lib/p.db").database == "/var/lib/p.db"
    assert parse_database_url("sqlite:///p.db").database == "p.db"
    assert parse_database_url("sqlite:////var/lib/p.db").redacted() == "sqlite:////var/lib/p.db"
    for bad, text in [
        ("postgres://x/y", "unknown scheme"),
        ("mysql://127.0.0.1/", "names no database"),
        ("sqlite://rel.db", "three slashes"),
        ("mysql://h:99999/db", "bad port"),
    ]:
        with pytest.raises(BadDatabaseURL, match=text):
            parse_database_url(bad)


def test_boinc_style_options():
    args = parse_args(["-variety", "v", "-one_pass", "-mod", "3", "1", "-d", "4", "--sleep", "2"])
    assert (args.variety, args.one_pass, args.mod, args.debug_level, args.sleep) == (
        "v",
        True,
        (3, 1),
        4,
        2.0,
    )
    assert parse_args(["--d", "2"]).debug_level == 2
    for bad in (
        ["--mod", "2", "2"],
        ["--max_runtime", "nan"],
        ["--sleep", "0"],
        ["-d", "0"],
        ["--one"],  # no abbreviations
        ["--batch_size", "0"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_log_line_format():
    assert format_line(1795548363.25, 1, "x") == "2026-11-24 19:26:03.2500 UTC [CRITICAL] x\n"
    assert format_line(1795548363.0, 3, "y") == "2026-11-24 19:26:03.0000 UTC y\n"
    out = io.StringIO()
    log = BoincLog(2, out, clock=lambda: 0.0)
    log.warning("w")
    log.normal("hidden")
    log.debug("hidden")
    assert out.getvalue() == "1970-01-01 00:00:00.0000 UTC [warning] w\n"


def test_driver_errors_are_sorted_into_retry_and_reconnect():
    import pymysql

    from trickle_handler.db import ConnectionLostError, MySQLDatabase, RetryableError

    db = MySQLDatabase(parse_database_url("mysql://root@127.0.0.1/x"))
    err = pymysql.err.OperationalError
    assert db._classify(err(1213, "Deadlock found")) is RetryableError
    assert db._classify(err(1205, "Lock wait timeout exceeded")) is RetryableError
    assert db._classify(err(2013, "Lost connection")) is ConnectionLostError
    assert db._classify(err(2006, "MySQL server has gone away")) is ConnectionLostError
    assert db._classify(pymysql.err.InterfaceError(0, "")) is ConnectionLostError
    assert db._classify(pymysql.err.ProgrammingError(1146, "Table doesn't exist")) is None

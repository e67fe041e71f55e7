"""Where the project is and how to reach its database, found the way BOINC daemons find them.

BOINC's ``bin/start`` runs each daemon in ``<project>/tmp_<host>``, so a daemon looks for the project
directory in ``$BOINC_PROJECT_DIR``, then ``.``, then ``..``; a directory counts when it holds
``config.xml`` and ``cgi-bin/`` (``../shared/credit_rules.md`` section 5.2). The database settings
are ``db_name``, ``db_host`` (maybe ``host:port``), ``db_user`` and ``db_passwd`` under
``<boinc><config>``. ``--db URL`` overrides them.
"""

from __future__ import annotations

import os
import socket
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trickle_handler.db import DatabaseURL

#: The file ``bin/stop`` writes in the project directory to stop every daemon.
STOP_FILE = "stop_daemons"


class ConfigError(Exception):
    """The project or its database settings cannot be found or read; the text says how to fix it."""


def is_project_dir(path: Path) -> bool:
    """True when ``path`` holds ``config.xml`` and ``cgi-bin/``, BOINC's test for a project dir."""
    return (path / "config.xml").is_file() and (path / "cgi-bin").is_dir()


def find_project_dir(
    explicit: str | None, env: Mapping[str, str], cwd: Path
) -> tuple[Path | None, str]:
    """The project directory and where it came from (for the log), or ``(None, reason)``.

    ``--project_dir`` wins and must be a project directory; otherwise ``$BOINC_PROJECT_DIR``,
    ``.`` and ``..`` are tried in that order.
    """
    if explicit is not None:
        path = Path(explicit).resolve()
        if not is_project_dir(path):
            raise ConfigError(
                f"--project_dir {explicit}: not a BOINC project directory"
                " (it needs config.xml and cgi-bin/)"
            )
        return path, "--project_dir"
    candidates = []
    if env.get("BOINC_PROJECT_DIR"):
        candidates.append((Path(env["BOINC_PROJECT_DIR"]), "$BOINC_PROJECT_DIR"))
    candidates += [(cwd, "the current directory"), (cwd.parent, "the parent directory")]
    for path, source in candidates:
        if is_project_dir(path):
            return path.resolve(), source
    tried = ", ".join(str(p) for p, _ in candidates)
    return None, f"no project directory (config.xml and cgi-bin/) in {tried}"


def read_config_xml(project_dir: Path, hostname: str | None = None) -> DatabaseURL:
    """The main database settings of ``project_dir/config.xml`` as a URL."""
    path = project_dir / "config.xml"
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    config = root.find("config") if root.tag == "boinc" else None
    if config is None:
        raise ConfigError(f"{path}: no <boinc><config> element")

    def text(tag: str, default: str | None = None) -> str:
        node = config.find(tag)
        value = (node.text or "").strip() if node is not None else None
        if value is None:
            if default is None:
                raise ConfigError(f"{path}: <config> has no <{tag}>")
            return default
        return value

    name = text("db_name")
    host = text("db_host", "localhost") or "localhost"
    port = 3306
    if ":" in host:
        host, _, port_text = host.partition(":")
        if not port_text.isdigit():
            raise ConfigError(f"{path}: <db_host> port {port_text!r} is not a number")
        port = int(port_text)
    if host == (hostname if hostname is not None else socket.gethostname()):
        host = "localhost"  # as BOINC does: the local server, whatever the machine is called
    return DatabaseURL(
        "mysql",
        name,
        host=host,
        port=port,
        user=text("db_user", ""),
        password=text("db_passwd", ""),
    )


def stop_file(project_dir: Path | None) -> Path | None:
    """The ``stop_daemons`` trigger of ``project_dir`` (None without a project)."""
    return project_dir / STOP_FILE if project_dir is not None else None


@dataclass(frozen=True)
class ProjectLocation:
    """The resolved database and project directory, with where each came from."""

    db: DatabaseURL
    db_source: str
    project_dir: Path | None
    project_source: str


def locate(
    db_url: DatabaseURL | None,
    project_dir: str | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ProjectLocation:
    """Resolve the project directory and database: ``--db`` > ``config.xml``."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    found, source = find_project_dir(project_dir, env, cwd)
    if db_url is not None:
        return ProjectLocation(db_url, "--db", found, source)
    if found is None:
        raise ConfigError(
            f"{source}; run the daemon from the project (as bin/start does),"
            " or give --project_dir DIR or --db URL"
        )
    return ProjectLocation(read_config_xml(found), f"{found / 'config.xml'}", found, source)

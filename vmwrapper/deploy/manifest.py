"""The XML files of an app version: ``version.xml``, ``app_info.xml``, the daemon entry.

``version.xml`` is what BOINC's ``tools/update_versions`` reads from an app
version directory: one ``<file>`` per file with ``<physical_name>``, the
``<logical_name>`` the app opens it by, ``<main_program/>``, ``<copy_file/>``
and ``<gzip/>`` (the server then also offers a ``.gz`` download), plus the
``<api_version>``; without it update_versions greps the main program for an
``API_VERSION_x.y.z`` string, which a PyInstaller binary does not show, and a
client gives an app without an API version no shared memory.

``<sticky/>`` marks the appliance image. update_versions (2026) does not read
it; the image is an app version file, which a client downloads once and keeps
for every task of that version. In ``app_info.xml`` the client itself parses
``<sticky/>`` on ``<file_info>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape


@dataclass(frozen=True)
class AppFile:
    """One file of an app version."""

    physical_name: str
    logical_name: str = ""
    main_program: bool = False
    copy_file: bool = False
    sticky: bool = False
    gzip: bool = False
    executable: bool = False


def version_xml(files: Sequence[AppFile], api_version: str) -> str:
    """``version.xml`` for BOINC's update_versions, one tag per line."""
    _check_one_main_program(files)
    lines = ["<version>"]
    for f in files:
        lines.append("    <file>")
        lines.append(f"        <physical_name>{escape(f.physical_name)}</physical_name>")
        if f.logical_name:
            lines.append(f"        <logical_name>{escape(f.logical_name)}</logical_name>")
        for flag in ("main_program", "copy_file", "sticky", "gzip"):
            if getattr(f, flag):
                lines.append(f"        <{flag}/>")
        lines.append("    </file>")
    lines.append(f"    <api_version>{escape(api_version)}</api_version>")
    lines.append("</version>")
    return "\n".join(lines) + "\n"


def app_info_xml(
    app: str,
    version_num: int,
    plan_class: str,
    files: Sequence[AppFile],
    api_version: str,
    user_friendly_name: str = "",
) -> str:
    """An anonymous-platform ``app_info.xml`` for the same files (no URLs, no signatures)."""
    _check_one_main_program(files)
    lines = [
        "<app_info>",
        "    <app>",
        f"        <name>{escape(app)}</name>",
        f"        <user_friendly_name>{escape(user_friendly_name or app)}</user_friendly_name>",
        "    </app>",
    ]
    for f in files:
        lines.append("    <file_info>")
        lines.append(f"        <name>{escape(f.physical_name)}</name>")
        if f.executable or f.main_program:
            lines.append("        <executable/>")
        if f.sticky:
            lines.append("        <sticky/>")
        lines.append("    </file_info>")
    lines += [
        "    <app_version>",
        f"        <app_name>{escape(app)}</app_name>",
        f"        <version_num>{version_num}</version_num>",
        f"        <api_version>{escape(api_version)}</api_version>",
    ]
    if plan_class:
        lines.append(f"        <plan_class>{escape(plan_class)}</plan_class>")
    for f in files:
        lines.append("        <file_ref>")
        lines.append(f"            <file_name>{escape(f.physical_name)}</file_name>")
        if f.logical_name:
            lines.append(f"            <open_name>{escape(f.logical_name)}</open_name>")
        if f.copy_file:
            lines.append("            <copy_file/>")
        if f.main_program:
            lines.append("            <main_program/>")
        lines.append("        </file_ref>")
    lines += ["    </app_version>", "</app_info>"]
    return "\n".join(lines) + "\n"


def trickle_handler_daemon(max_runtime: float, variety: str = "cpu_time") -> str:
    """The ``config.xml`` ``<daemon>`` entry that runs our trickle_handler.

    ``max_runtime`` caps the CPU seconds one message may be credited for: the
    job's trickle period times the VM's CPUs.
    """
    if not max_runtime > 0:
        raise ValueError(f"max_runtime must be positive, not {max_runtime!r}")
    cmd = f"trickle_handler --variety {variety} --max_runtime {max_runtime:g}"
    return (
        "<daemon>\n"
        f"    <cmd>{escape(cmd)}</cmd>\n"
        "    <output>trickle_handler.log</output>\n"
        "    <pid_file>trickle_handler.pid</pid_file>\n"
        "</daemon>\n"
    )


def _check_one_main_program(files: Sequence[AppFile]) -> None:
    mains = [f.physical_name for f in files if f.main_program]
    if len(mains) != 1:
        raise ValueError(f"an app version needs exactly one main program, got {mains}")
    names = [f.physical_name for f in files]
    if len(set(names)) != len(names):
        raise ValueError(f"physical names must be unique: {names}")

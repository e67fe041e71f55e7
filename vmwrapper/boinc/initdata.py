"""``init_data.xml``: what the client tells the app at each start.

The client rewrites the file before every start of the app (and after a change
of preferences, followed by ``<reread_app_info/>``). Root ``<app_init_data>``,
one tag per line; field meanings in ``boinc_protocol.md`` section 2.

Parsing rules: the XML is parsed without DTD or entities (:mod:`.xmlsafe`);
unknown tags are skipped (newer clients add some); a missing tag keeps its
default (BOINC's own defaults: zero, empty, fraction range 0..1); a tag whose
text has the wrong type raises :class:`InitDataError` naming the tag.

Field names are the client's tag names, so the file and the code read alike.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import platform
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from vmwrapper.boinc.errors import InitDataError
from vmwrapper.boinc.xmlsafe import parse_xml

#: The file name the client writes in the slot directory.
INIT_DATA_FILE = "init_data.xml"

#: Checkpoint period the stock API uses when the client says 0 (or standalone).
DEFAULT_CHECKPOINT_PERIOD = 300.0


@dataclass
class HostInfo:
    """``<host_info>``: the volunteer's machine as the client measured it."""

    p_ncpus: int = 0
    p_vendor: str = ""
    p_model: str = ""
    p_features: str = ""
    p_fpops: float = 0.0
    p_iops: float = 0.0
    p_membw: float = 0.0
    p_vm_extensions_disabled: bool = False
    m_nbytes: float = 0.0
    m_cache: float = 0.0
    m_swap: float = 0.0
    d_total: float = 0.0
    d_free: float = 0.0
    os_name: str = ""
    os_version: str = ""
    product_name: str = ""
    virtualbox_version: str = ""
    domain_name: str = ""
    ip_addr: str = ""
    host_cpid: str = ""
    timezone: int = 0


@dataclass
class GlobalPrefs:
    """The few ``<global_preferences>`` the wrapper acts on."""

    #: keep suspended tasks in memory: the client then sends <suspend/>, not <quit/>
    leave_apps_in_memory: bool = False
    #: seconds between checkpoints the volunteer asked for
    disk_interval: float = 0.0
    #: percent of CPU time the client lets apps run (< 100: suspend/resume cycling)
    cpu_usage_limit: float = 100.0
    #: percent of RAM apps may use while the computer is in use / idle
    ram_max_used_busy_pct: float = 0.0
    ram_max_used_idle_pct: float = 0.0
    #: percent of the host's processors the client may use
    max_ncpus_pct: float = 0.0


@dataclass
class InitData:
    """The fields of ``init_data.xml`` we use, with the client's defaults."""

    major_version: int = 0
    minor_version: int = 0
    release: int = 0
    app_version: int = 0
    app_name: str = ""
    plan_class: str = ""
    userid: int = 0
    teamid: int = 0
    hostid: int = 0
    user_name: str = ""
    team_name: str = ""
    authenticator: str = ""
    project_dir: str = ""
    boinc_dir: str = ""
    slot: int = 0
    client_pid: int = 0
    wu_name: str = ""
    result_name: str = ""
    shm_key: int = 0
    #: CPU seconds at the last checkpoint of earlier episodes of this task
    wu_cpu_time: float = 0.0
    starting_elapsed_time: float = 0.0
    #: seconds between checkpoints (the volunteer's disk_interval; 0 = use 300)
    checkpoint_period: float = 0.0
    fraction_done_start: float = 0.0
    fraction_done_end: float = 1.0
    ncpus: float = 0.0
    rsc_fpops_est: float = 0.0
    rsc_fpops_bound: float = 0.0
    rsc_memory_bound: float = 0.0
    rsc_disk_bound: float = 0.0
    computation_deadline: float = 0.0
    vm_extensions_disabled: bool = False
    using_sandbox: bool = False
    no_priority_change: bool = False
    resource_share_fraction: float = 0.0
    user_total_credit: float = 0.0
    user_expavg_credit: float = 0.0
    host_total_credit: float = 0.0
    host_expavg_credit: float = 0.0
    host_info: HostInfo = field(default_factory=HostInfo)
    global_prefs: GlobalPrefs = field(default_factory=GlobalPrefs)
    #: the project's per-user preferences, as raw XML (the project defines them)
    project_preferences: str = ""
    #: the app version's files (``<app_file>``), in file order
    app_files: list[str] = field(default_factory=list)

    @property
    def effective_checkpoint_period(self) -> float:
        """Seconds between checkpoints as the stock API applies them (300 when 0)."""
        return self.checkpoint_period if self.checkpoint_period > 0 else DEFAULT_CHECKPOINT_PERIOD


def _parse_bool(text: str) -> bool:
    # BOINC writes <tag>0|1</tag>, and <tag/> (empty) means true.
    if text == "":
        return True
    value = int(text)
    if value not in (0, 1):
        raise ValueError(text)
    return bool(value)


def _parse_int(text: str) -> int:
    # The client writes ints with %d, but tolerate "2.000000" for integral values.
    try:
        return int(text)
    except ValueError:
        number = float(text)
        if not number.is_integer():
            raise
        return int(number)


def _parse_float(text: str) -> float:
    # float() accepts "nan" and "inf"; no field of ours may hold them.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


_CONVERTERS: dict[str, tuple[Any, str]] = {
    "int": (_parse_int, "an integer"),
    "float": (_parse_float, "a finite number"),
    "bool": (_parse_bool, "0 or 1"),
    "str": (str, "text"),
}


def _fill(target: Any, element: ET.Element, path: str) -> None:
    """Set the simple fields of dataclass *target* from *element*'s children."""
    types = {f.name: f.type for f in dataclasses.fields(target)}
    for child in element:
        kind = types.get(child.tag)
        if kind not in _CONVERTERS:
            continue  # unknown tag, or a nested block handled by the caller
        convert, expected = _CONVERTERS[kind]
        text = (child.text or "").strip()
        try:
            value = convert(text)
        except ValueError:
            raise InitDataError(
                f"{INIT_DATA_FILE}: <{path}{child.tag}> is {text!r}, expected {expected}"
            ) from None
        setattr(target, child.tag, value)


def parse_init_data(data: bytes) -> InitData:
    """Parse the bytes of an ``init_data.xml`` file.

    :raises InitDataError: malformed XML, a DTD, a wrong root tag, or a field of
        the wrong type (the message names the tag and its text).
    """
    root = parse_xml(data, INIT_DATA_FILE, InitDataError)
    if root.tag != "app_init_data":
        raise InitDataError(
            f"{INIT_DATA_FILE}: root element is <{root.tag}>, expected <app_init_data>"
        )
    init = InitData()
    _fill(init, root, "")
    for tag, block in (("host_info", init.host_info), ("global_preferences", init.global_prefs)):
        element = root.find(tag)
        if element is not None:
            _fill(block, element, f"{tag}/")
    project_prefs = root.find("project_preferences")
    if project_prefs is not None:
        init.project_preferences = ET.tostring(project_prefs, encoding="unicode")
    init.app_files = [(e.text or "").strip() for e in root.findall("app_file")]
    if not 0.0 <= init.fraction_done_start <= init.fraction_done_end <= 1.0:
        raise InitDataError(
            f"{INIT_DATA_FILE}: fraction_done_start {init.fraction_done_start} and "
            f"fraction_done_end {init.fraction_done_end} must satisfy 0 <= start <= end <= 1"
        )
    return init


def standalone_init_data(slot_dir: str | pathlib.Path = ".") -> InitData:
    """Settings for a run without a client (from a shell, for a test or a demo).

    Names say ``standalone``; the host is described as it is (processors,
    memory, free disk of *slot_dir*); one CPU; checkpoints every 300 s.
    """
    slot = pathlib.Path(slot_dir).resolve()
    host = HostInfo(p_ncpus=os.cpu_count() or 1, os_name=platform.system())
    try:
        host.m_nbytes = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        pass  # not available on this platform: 0 = unknown, as the client says
    try:
        host.d_free = float(shutil.disk_usage(slot).free)
    except OSError:
        pass
    return InitData(
        app_name="standalone",
        wu_name="standalone",
        result_name="standalone_0",
        project_dir=str(slot),
        boinc_dir=str(slot),
        checkpoint_period=DEFAULT_CHECKPOINT_PERIOD,
        ncpus=1.0,
        host_info=host,
    )


def read_init_data(path: str | pathlib.Path) -> InitData:
    """Read and parse ``init_data.xml`` at *path*.

    :raises InitDataError: the file cannot be read, or :func:`parse_init_data` fails.
    """
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise InitDataError(
            f"{INIT_DATA_FILE}: cannot read {path}: {exc.strerror or exc}"
        ) from None
    return parse_init_data(data)

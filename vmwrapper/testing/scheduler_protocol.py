"""The BOINC scheduler and data-server wire formats, as plain functions.

The client's requests are XML-ish text, not documents a strict parser can take:
``<msg_from_host>`` carries whatever bytes the application wrote and
``<stderr_out>`` wraps the task's stderr in CDATA. So requests are cut into
elements with regular expressions, CDATA first, and every value we keep is
the exact text the client sent. Replies keep one tag per line because the
client parses some parts (``<trickle_down>``) line by line.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

#: Result states the client reports (client/result.h): 5 = files uploaded, 6 = aborted.
RESULT_STATE_FILES_UPLOADED = 5
RESULT_STATE_ABORTED = 6

_CDATA = re.compile(r"<!\[CDATA\[(.*?)\]\]>", re.DOTALL)
_PLACEHOLDER = re.compile(r"\x00CDATA(\d+)\x00")


class ProtocolError(ValueError):
    """A request from the client that cannot be understood; the message says why."""


@dataclass(frozen=True)
class ReportedResult:
    """One ``<result>`` the client reported (a finished, failed or aborted task)."""

    name: str
    exit_status: int
    state: int
    final_cpu_time: float
    final_elapsed_time: float
    stderr_out: str
    raw: str


@dataclass(frozen=True)
class TrickleUp:
    """One ``<msg_from_host>`` element.

    ``xml`` is what BOINC's scheduler stores in ``msg_from_host.xml``: every
    line of the element except the opening/closing tag lines and the
    ``<variety>`` line, each ending in a newline, exactly as sent.
    ``raw`` is the element's whole text between its tags.
    """

    result_name: str
    time: int
    variety: str
    xml: str
    raw: str

    @property
    def body(self) -> str:
        """The application's body: ``xml`` without the result_name and time lines."""
        lines = self.xml.splitlines(keepends=True)
        return "".join(
            line
            for line in lines
            if not line.strip().startswith(("<result_name>", "<time>"))
        )


@dataclass(frozen=True)
class SchedulerRequest:
    """What the harness needs from a ``<scheduler_request>``."""

    hostid: int
    authenticator: str
    platform_name: str
    work_req_seconds: float
    results: tuple[ReportedResult, ...]
    trickles: tuple[TrickleUp, ...]
    other_results: tuple[str, ...]


@dataclass(frozen=True)
class InputFile:
    """An input file of a work unit, served by the download handler."""

    name: str
    open_name: str
    content: bytes

    @property
    def md5(self) -> str:
        """The checksum the client verifies after the download."""
        return hashlib.md5(self.content).hexdigest()  # noqa: S324 - BOINC's checksum


@dataclass(frozen=True)
class OutputFile:
    """An output file the task must upload; ``name`` is the server-side file name."""

    name: str
    open_name: str
    max_nbytes: int = 100_000_000


@dataclass(frozen=True)
class Workunit:
    """A work unit with its single result (``<name>_0``), ready to send."""

    name: str
    app_name: str
    version_num: int
    command_line: str
    input_files: tuple[InputFile, ...]
    output_files: tuple[OutputFile, ...]
    rsc_fpops_est: float = 1e10
    rsc_fpops_bound: float = 1e18
    rsc_memory_bound: float = 1e9
    rsc_disk_bound: float = 1e10
    report_deadline: int = 0
    report_immediately: bool = True
    #: the app version's plan class the client must run the result with ("" = none)
    plan_class: str = ""

    @property
    def result_name(self) -> str:
        """BOINC names replica N of a work unit ``<wu>_N``; we send one replica."""
        return f"{self.name}_0"


@dataclass(frozen=True)
class TrickleDown:
    """A message for a running result, sent in the next scheduler reply."""

    result_name: str
    time: int
    body: str


@dataclass(frozen=True)
class UploadRequest:
    """A ``<data_server_request>``: either a file upload or a size query."""

    file_name: str
    offset: int = 0
    data: bytes = b""
    size_query: bool = False
    #: the file's full size, ``<nbytes>``; data beyond ``nbytes - offset`` is dropped
    nbytes: int = 0

    @property
    def complete(self) -> bool:
        """False when the connection delivered less than the announced bytes."""
        return self.offset + len(self.data) >= self.nbytes


@dataclass
class ReplyContent:
    """Everything a scheduler reply may carry besides the project identity."""

    hostid: int | None = None
    workunits: list[Workunit] = field(default_factory=list)
    acked_results: list[str] = field(default_factory=list)
    message_ack: bool = False
    trickle_downs: list[TrickleDown] = field(default_factory=list)
    request_delay: float | None = None


def _hide_cdata(text: str) -> tuple[str, list[str]]:
    sections: list[str] = []

    def keep(match: re.Match[str]) -> str:
        sections.append(match.group(1))
        return f"\x00CDATA{len(sections) - 1}\x00"

    return _CDATA.sub(keep, text), sections


def _restore_cdata(text: str, sections: list[str]) -> str:
    return _PLACEHOLDER.sub(lambda m: sections[int(m.group(1))], text)


def _elements(text: str, tag: str) -> list[str]:
    """The inner text of every ``<tag>...</tag>`` (not nested) in ``text``."""
    return re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)


def _value(text: str, tag: str, default: str | None = None) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    if match is None:
        if default is None:
            raise ProtocolError(f"<{tag}> missing in {text[:200]!r}")
        return default
    return match.group(1).strip()


def _number(text: str, tag: str, kind: type, default: str | None = None):
    raw = _value(text, tag, default)
    try:
        return kind(float(raw)) if kind is int else kind(raw)
    except ValueError:
        raise ProtocolError(f"<{tag}> is not a number: {raw!r}") from None


def parse_scheduler_request(text: str) -> SchedulerRequest:
    """Extract hostid, reported results and trickles from a client's request body."""
    if "<scheduler_request>" not in text:
        raise ProtocolError(f"not a <scheduler_request>: {text[:200]!r}")
    hidden, sections = _hide_cdata(text)
    results = []
    # Reported results sit at the top level; other_results/in_progress use other tags.
    for inner in _elements(hidden, "result"):
        stderr = _restore_cdata(_value(inner, "stderr_out", ""), sections)
        results.append(
            ReportedResult(
                name=_value(inner, "name"),
                exit_status=_number(inner, "exit_status", int, "0"),
                state=_number(inner, "state", int),
                final_cpu_time=_number(inner, "final_cpu_time", float, "0"),
                final_elapsed_time=_number(inner, "final_elapsed_time", float, "0"),
                stderr_out=stderr,
                raw=_restore_cdata(inner, sections),
            )
        )
    trickles = [parse_msg_from_host(_restore_cdata(inner, sections))
                for inner in _elements(hidden, "msg_from_host")]
    other = [_value(inner, "name") for inner in _elements(hidden, "other_result")]
    outside = re.sub(r"<(result|msg_from_host|other_results)>.*?</\1>", "", hidden, flags=re.DOTALL)
    return SchedulerRequest(
        hostid=_number(outside, "hostid", int, "0"),
        authenticator=_value(outside, "authenticator", ""),
        platform_name=_value(outside, "platform_name", ""),
        work_req_seconds=_number(outside, "work_req_seconds", float, "0"),
        results=tuple(results),
        trickles=tuple(trickles),
        other_results=tuple(other),
    )


def parse_msg_from_host(inner: str) -> TrickleUp:
    """Parse the text between ``<msg_from_host>`` and ``</msg_from_host>``.

    Line by line, like BOINC's scheduler: the first line of ``inner`` is the
    rest of the opening tag's line (normally empty) and the last line holds
    the indentation before the closing tag; both belong to no stored line.
    """
    lines = inner.splitlines(keepends=True)
    kept = [line for line in lines[1:-1] if not line.strip().startswith("<variety>")]
    return TrickleUp(
        result_name=_value(inner, "result_name"),
        time=_number(inner, "time", int),
        variety=_value(inner, "variety", ""),
        xml="".join(line if line.endswith("\n") else line + "\n" for line in kept),
        raw=inner,
    )


def parse_upload_request(body: bytes) -> UploadRequest:
    """Parse a ``<data_server_request>``: ``<get_file_size>`` or ``<file_upload>``."""
    head, sep, data = body.partition(b"<data>\n")
    text = head.decode("utf-8", "replace")
    if "<data_server_request>" not in text:
        raise ProtocolError(f"not a <data_server_request>: {text[:200]!r}")
    if "<get_file_size>" in text:
        return UploadRequest(file_name=_value(text, "get_file_size"), size_query=True)
    if "<file_upload>" not in text or not sep:
        raise ProtocolError(f"<data_server_request> with neither a size query nor data: {text[:200]!r}")
    info = _value(text, "file_info")
    offset = _number(text, "offset", int, "0")
    nbytes = _number(text, "nbytes", int, str(offset + len(data)))
    if offset < 0 or offset > nbytes:
        raise ProtocolError(f"upload offset {offset} outside the file's {nbytes} bytes")
    return UploadRequest(
        file_name=_value(info, "name"),
        offset=offset,
        data=data[: nbytes - offset],
        nbytes=nbytes,
    )


def upload_reply(status: int = 0, file_size: int | None = None, message: str = "") -> bytes:
    """A ``<data_server_reply>``: status 0 ok, 1 transient error, -1 permanent error."""
    lines = ["<data_server_reply>", f"    <status>{status}</status>"]
    if file_size is not None:
        lines.append(f"    <file_size>{file_size}</file_size>")
    if message:
        lines.append(f"    <message>{escape(message)}</message>")
    lines.append("</data_server_reply>")
    return ("\n".join(lines) + "\n").encode()


def master_page(project_name: str, scheduler_url: str) -> str:
    """The project's master page: the client only looks for the scheduler link."""
    return (
        "<html><head>\n"
        f"<title>{escape(project_name)}</title>\n"
        f'<link rel="boinc_scheduler" href="{escape(scheduler_url)}">\n'
        "</head><body>\n"
        f"<scheduler>{escape(scheduler_url)}</scheduler>\n"
        "</body></html>\n"
    )


def _workunit_xml(wu: Workunit, download_url: str, upload_url: str) -> Iterable[str]:
    for f in wu.input_files:
        yield "<file_info>"
        yield f"    <name>{escape(f.name)}</name>"
        yield f"    <url>{escape(download_url)}{escape(f.name)}</url>"
        yield f"    <md5_cksum>{f.md5}</md5_cksum>"
        yield f"    <nbytes>{len(f.content)}</nbytes>"
        yield "</file_info>"
    for out in wu.output_files:
        yield "<file_info>"
        yield f"    <name>{escape(out.name)}</name>"
        yield "    <generated_locally/>"
        yield "    <upload_when_present/>"
        yield f"    <max_nbytes>{out.max_nbytes}</max_nbytes>"
        yield f"    <url>{escape(upload_url)}</url>"
        yield "</file_info>"
    yield "<workunit>"
    yield f"    <name>{escape(wu.name)}</name>"
    yield f"    <app_name>{escape(wu.app_name)}</app_name>"
    yield f"    <version_num>{wu.version_num}</version_num>"
    yield f"    <command_line>{escape(wu.command_line)}</command_line>"
    yield f"    <rsc_fpops_est>{wu.rsc_fpops_est:e}</rsc_fpops_est>"
    yield f"    <rsc_fpops_bound>{wu.rsc_fpops_bound:e}</rsc_fpops_bound>"
    yield f"    <rsc_memory_bound>{wu.rsc_memory_bound:e}</rsc_memory_bound>"
    yield f"    <rsc_disk_bound>{wu.rsc_disk_bound:e}</rsc_disk_bound>"
    for f in wu.input_files:
        yield "    <file_ref>"
        yield f"        <file_name>{escape(f.name)}</file_name>"
        yield f"        <open_name>{escape(f.open_name)}</open_name>"
        yield "    </file_ref>"
    yield "</workunit>"
    yield "<result>"
    yield f"    <name>{escape(wu.result_name)}</name>"
    yield f"    <wu_name>{escape(wu.name)}</wu_name>"
    yield f"    <report_deadline>{wu.report_deadline}</report_deadline>"
    yield f"    <version_num>{wu.version_num}</version_num>"
    if wu.plan_class:
        yield f"    <plan_class>{escape(wu.plan_class)}</plan_class>"
    if wu.report_immediately:
        yield "    <report_immediately/>"
    for out in wu.output_files:
        yield "    <file_ref>"
        yield f"        <file_name>{escape(out.name)}</file_name>"
        yield f"        <open_name>{escape(out.open_name)}</open_name>"
        yield "    </file_ref>"
    yield "</result>"


def scheduler_reply(
    project_name: str,
    master_url: str,
    download_url: str,
    upload_url: str,
    content: ReplyContent,
) -> str:
    """Build a ``<scheduler_reply>``, one tag per line.

    ``master_url`` must equal the URL the client attached to, ``download_url``
    ends with ``/`` (file names are appended) and ``upload_url`` must contain
    ``file_upload_handler`` or the client downloads instead of uploading.
    """
    if "file_upload_handler" not in upload_url:
        raise ValueError(f"upload URL {upload_url!r} must contain 'file_upload_handler'")
    lines = [
        "<scheduler_reply>",
        "<scheduler_version>701</scheduler_version>",
        f"<project_name>{escape(project_name)}</project_name>",
        f"<master_url>{escape(master_url)}</master_url>",
        "<userid>7</userid>",
        "<user_name>tester</user_name>",
        "<teamid>0</teamid>",
    ]
    if content.hostid is not None:
        lines.append(f"<hostid>{content.hostid}</hostid>")
    if content.request_delay is not None:
        lines.append(f"<request_delay>{content.request_delay:f}</request_delay>")
    for wu in content.workunits:
        lines.extend(_workunit_xml(wu, download_url, upload_url))
    if content.message_ack:
        lines.append("<message_ack/>")
    for name in content.acked_results:
        lines.extend(["<result_ack>", f"    <name>{escape(name)}</name>", "</result_ack>"])
    for td in content.trickle_downs:
        lines.append("<trickle_down>")
        lines.append(f"<result_name>{escape(td.result_name)}</result_name>")
        lines.append(f"<time>{td.time}</time>")
        lines.extend(td.body.rstrip("\n").split("\n"))
        lines.append("</trickle_down>")
    lines.append("</scheduler_reply>")
    return "\n".join(lines) + "\n"

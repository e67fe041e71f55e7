"""Read a job file into a :class:`JobDescription`, strictly.

vboxwrapper and BOINC's wrapper log unknown elements and carry on, so a typo
silently changes the job. We refuse: unknown elements, bad values, repeated
single elements and illegal combinations are errors naming the element, the
line and the fix, all collected so one run shows every problem. Options that
are legal but have no effect produce warnings instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
import posixpath
from dataclasses import dataclass
from typing import Any

from vmwrapper.job.issues import JobFileError, JobIssue
from vmwrapper.job.model import (
    MIN_MEMORY_SIZE_MB,
    RETIRED_ELEMENTS,
    ROOT_ELEMENTS,
    VRAM_RANGE_MB,
    GuestFile,
    JobDescription,
    Task,
    xml_fields,
)
from vmwrapper.job.values import BadValue, Flag, Kind, LogicalName
from vmwrapper.job.xmltree import XmlElement, XmlReadError, read_xml

#: Files vboxwrapper reads from or writes to the shared directory.
SHARED_DIR_OPTIONS = (
    "fraction_done_filename", "heartbeat_filename", "completion_trigger_file",
    "temporary_exit_trigger_file", "copy_cmdline_to_shared", "trickle_trigger_file",
    "intermediate_upload_file",
)

#: Options that only mean something when the job boots a VM.
VM_ONLY_OPTIONS = tuple(
    f.name for f in xml_fields(JobDescription)
    if f.name not in ("enable_graphics_support", "unzip_input", "zip_output", "trickle_period",
                      "task")
)


@dataclass(frozen=True)
class LoadedJob:
    """A valid job description and the warnings to log before running it."""

    job: JobDescription
    warnings: list[JobIssue]


def read_job_file(path: str | pathlib.Path) -> LoadedJob:
    """Read and check the job file at *path*.

    :raises JobFileError: the file is missing, unreadable or invalid (every error listed).
    """
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        issue = JobIssue(str(path), None, "job file", f"cannot be read: {exc.strerror or exc}.",
                         "give the path of an existing job file")
        raise JobFileError([issue]) from None
    return parse_job(data, source=str(path))


def parse_job(data: bytes, source: str = "job.xml") -> LoadedJob:
    """Check the job file contents *data*; *source* names the file in messages.

    :raises JobFileError: with every error found (and the warnings so far).
    """
    reader = _Reader(source)
    job = reader.read(data)
    if reader.errors or job is None:
        raise JobFileError(sort_issues(reader.errors), sort_issues(reader.warnings))
    return LoadedJob(job, sort_issues(reader.warnings))


def sort_issues(issues: list[JobIssue]) -> list[JobIssue]:
    """Issues in file order (issues without a line first), stable otherwise."""
    return sorted(issues, key=lambda issue: issue.line or 0)


class _Invalid:
    """Marks a value that could not be read (the error is already recorded)."""


_INVALID = _Invalid()


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[JobIssue] = []
        self.warnings: list[JobIssue] = []
        self.root = ""

    def error(self, line: int | None, element: str, message: str, fix: str = "") -> None:
        self.errors.append(JobIssue(self.source, line, element, message, fix))

    def warn(self, line: int | None, element: str, message: str, fix: str = "") -> None:
        self.warnings.append(JobIssue(self.source, line, element, message, fix, "warning"))

    # --- structure -------------------------------------------------------

    def read(self, data: bytes) -> JobDescription | None:
        try:
            root = read_xml(data)
        except XmlReadError as exc:
            self.error(exc.line, "XML", f"{exc.message}.", exc.fix)
            return None
        if root.tag not in ROOT_ELEMENTS:
            self.error(root.line, f"<{root.tag}>", "is not a job description root element.",
                       f"use one of {', '.join(f'<{r}>' for r in ROOT_ELEMENTS)}")
            return None
        self.root = root.tag
        lines: dict[str, int] = {}
        values = self.read_fields(root, JobDescription, lines)
        job = JobDescription(**values, root=root.tag, source=self.source, lines=lines)
        return self.check_job(job)

    def read_fields(self, element: XmlElement, cls: type, lines: dict[str, int]) -> dict[str, Any]:
        """Read *element*'s children into keyword arguments for *cls*."""
        specs = {f.name: f for f in xml_fields(cls)}
        self.no_attributes(element)
        if element.text.strip():
            self.error(element.text_line, f"<{element.tag}>",
                       f"has text {element.text.strip()[:40]!r} between its elements.",
                       "put values inside their own elements")
        values: dict[str, Any] = {}
        for child in element.children:
            spec = specs.get(child.tag)
            if spec is None:
                self.unknown(child, element.tag, list(specs))
                continue
            if "block" in spec.metadata:
                value = self.read_block(child, spec.metadata["block"])
            else:
                value = self.read_value(child, spec.metadata["kind"])
            if spec.metadata.get("repeated"):
                if value is not _INVALID:
                    values.setdefault(child.tag, []).append(value)
            elif child.tag in lines:
                self.error(child.line, f"<{child.tag}>",
                           f"appears again (first on line {lines[child.tag]}).",
                           "keep only one of them")
            elif value is not _INVALID:
                values[child.tag] = value
            lines.setdefault(child.tag, child.line)
        for name, spec in specs.items():
            if spec.metadata.get("required") and name not in lines:
                self.error(element.line, f"<{element.tag}>", f"has no <{name}>.",
                           f"add <{name}>{spec.metadata['kind'].example}</{name}> "
                           f"({spec.metadata['doc']})")
        return {name: tuple(v) if isinstance(v, list) else v for name, v in values.items()}

    def read_block(self, element: XmlElement, cls: type) -> Any:
        before = len(self.errors)
        lines: dict[str, int] = {}
        if cls is GuestFile and not element.children and element.text.strip():
            value = self.read_value(element, LogicalName())
            if value is _INVALID:
                return _INVALID
            return GuestFile(logical_name=value, guest_path=value, line=element.line)
        values = self.read_fields(element, cls, lines)
        if len(self.errors) > before:
            return _INVALID
        if cls is GuestFile:
            return self.finish_guest_file(element, values, lines)
        item = cls(**values, line=element.line)
        if cls is Task:
            self.check_task(item, lines)
        return item

    def read_value(self, element: XmlElement, kind: Kind) -> Any:
        tag = element.tag
        self.no_attributes(element)
        if element.children:
            self.error(element.children[0].line, f"<{tag}>", "takes a value, not elements.",
                       f"write {kind.describe()}")
            return _INVALID
        try:
            return kind.parse(element.text.strip())
        except BadValue as exc:
            if isinstance(kind, Flag):
                fix = f"write <{tag}/> or <{tag}>1</{tag}> for true, <{tag}>0</{tag}> for false"
            else:
                fix = f"write {kind.describe()}, e.g. <{tag}>{kind.example}</{tag}>"
            self.error(element.line, f"<{tag}>", f"{exc}.", fix)
            return _INVALID

    def no_attributes(self, element: XmlElement) -> None:
        if element.attributes:
            names = ", ".join(sorted(element.attributes))
            self.error(element.line, f"<{element.tag}>", f"has attributes ({names}); "
                       "job files use child elements only.", "remove the attributes")

    def unknown(self, element: XmlElement, parent: str, allowed: list[str]) -> None:
        if parent in ROOT_ELEMENTS and element.tag in RETIRED_ELEMENTS:
            self.warn(element.line, f"<{element.tag}>",
                      f"is ignored: {RETIRED_ELEMENTS[element.tag]}.", "remove it")
            return
        close = difflib.get_close_matches(element.tag, allowed, n=1, cutoff=0.75)
        if close:
            fix = f"did you mean <{close[0]}>?"
        elif len(allowed) <= 20:
            fix = f"remove it; <{parent}> accepts {', '.join(f'<{a}>' for a in allowed)}"
        else:
            fix = "remove it (the accepted elements are listed in vmwrapper/job/model.py)"
        self.error(element.line, f"<{element.tag}>", f"is not a known element of <{parent}>.",
                   fix)

    def finish_guest_file(self, element: XmlElement, values: dict[str, Any],
                          lines: dict[str, int]) -> Any:
        tag = element.tag
        if tag == "copy_to_guest":
            if "logical_name" not in lines:
                self.error(element.line, f"<{tag}>", "has no <logical_name>.",
                           "add <logical_name>NAME</logical_name> (the slot file to copy in)")
                return _INVALID
            values.setdefault("guest_path", values["logical_name"])
        else:
            if "guest_path" not in lines:
                self.error(element.line, f"<{tag}>", "has no <guest_path>.",
                           "add <guest_path>PATH</guest_path> (the guest file to copy out)")
                return _INVALID
            if "logical_name" not in lines:
                name = posixpath.basename(values["guest_path"])
                if not name or name in (".", ".."):
                    self.error(element.line, f"<{tag}>",
                               f"guest path {values['guest_path']!r} has no file name.",
                               "add <logical_name>NAME</logical_name>")
                    return _INVALID
                values["logical_name"] = name
        return GuestFile(**values, line=element.line)

    # --- meaning ---------------------------------------------------------

    def check_task(self, task: Task, lines: dict[str, int]) -> None:
        if self.root == "job_desc" and "where" not in lines:
            self.warn(task.line, "<task>",
                      f"runs {task.application!r} in the guest VM (the default), "
                      "while BOINC's wrapper would run it on the host.",
                      "add <where>host</where> or <where>guest</where> to say which")
        if task.forward_slashes and task.where == "guest":
            self.warn(lines["forward_slashes"], "<forward_slashes>",
                      "has no effect on a guest task (it is for Windows hosts).")

    def check_job(self, job: JobDescription) -> JobDescription:
        line = job.lines.get
        if job.share_slot_dir and job.enable_shared_directory:
            self.error(line("share_slot_dir"), "<share_slot_dir>",
                       "cannot be combined with <enable_shared_directory> "
                       f"(line {line('enable_shared_directory')}): both share a folder "
                       "as 'shared'.",
                       "keep only one of them")
        if job.copy_to_shared and job.share_slot_dir:
            self.error(line("copy_to_shared"), "<copy_to_shared>",
                       "cannot be combined with <share_slot_dir>: the slot is shared already.",
                       "remove <copy_to_shared>, or use <enable_shared_directory/> "
                       "instead of <share_slot_dir/>")
        elif job.copy_to_shared and not job.enable_shared_directory:
            self.error(line("copy_to_shared"), "<copy_to_shared>",
                       "needs a shared directory to copy into.", "add <enable_shared_directory/>")
        if job.share_project_dir and job.enable_scratch_directory:
            self.error(line("share_project_dir"), "<share_project_dir>",
                       "cannot be combined with <enable_scratch_directory> "
                       f"(line {line('enable_scratch_directory')}).", "keep only one of them")
        if not (job.enable_shared_directory or job.share_slot_dir):
            for name in SHARED_DIR_OPTIONS:
                if getattr(job, name):
                    self.error(line(name), f"<{name}>",
                               "names a file in the shared directory, but the job shares none.",
                               "add <enable_shared_directory/> (or <share_slot_dir/>)")
        if "multiattach_vdi_file" in job.lines and "image" in job.lines:
            self.error(line("image"), "<image>",
                       "and <multiattach_vdi_file> both name the VM's disk image.",
                       "keep only one of them")
        self.check_ports(job)
        self.check_guest_files(job)
        self.check_tasks(job)
        return self.adjust(job)

    def check_ports(self, job: JobDescription) -> None:
        seen: dict[int, int] = {}
        for forward in job.port_forward:
            last_host, last_guest = forward.ports()[-1]
            if max(last_host, last_guest) > 65535:
                self.error(forward.line, "<port_forward>",
                           f"{forward.nports} ports from {forward.host_port}/{forward.guest_port} "
                           "run past port 65535.", "lower <nports> or the first port")
                continue
            for host_port, _ in forward.ports():
                if host_port in seen:
                    self.error(forward.line, "<port_forward>",
                               f"host port {host_port} is already forwarded on line "
                               f"{seen[host_port]}.", "forward each host port once")
                    break
                seen[host_port] = forward.line
        if job.pf_host_port and not job.pf_guest_port:
            self.warn(job.lines["pf_host_port"], "<pf_host_port>",
                      "has no effect without <pf_guest_port>.", "add <pf_guest_port> or remove it")
        if (job.port_forward or job.pf_guest_port) and not job.enable_network:
            first = job.lines.get("port_forward", job.lines.get("pf_guest_port"))
            self.warn(first, "<port_forward>" if job.port_forward else "<pf_guest_port>",
                      "has no effect: port forwards need the network.", "add <enable_network/>")

    def check_guest_files(self, job: JobDescription) -> None:
        outputs: dict[str, int] = {}
        for item in job.copy_from_guest:
            if item.logical_name in outputs:
                self.error(item.line, "<copy_from_guest>",
                           f"logical name {item.logical_name!r} is already an output on line "
                           f"{outputs[item.logical_name]}.", "give each output its own name")
            outputs.setdefault(item.logical_name, item.line)

    def check_tasks(self, job: JobDescription) -> None:
        work = [task for task in job.task if not task.daemon]
        if job.task and not work:
            self.error(job.task[0].line, "<task>",
                       "every task is a daemon, so nothing would end the job.",
                       "drop <daemon/> from the task that does the work")
        elif work and sum(task.weight for task in work) <= 0:
            self.error(work[0].line, "<weight>", "the tasks' weights add up to 0.",
                       "give at least one task a weight above 0")
        if not job.needs_vm:
            for name in VM_ONLY_OPTIONS:
                if name in job.lines:
                    self.warn(job.lines[name], f"<{name}>",
                              "has no effect: every task runs on the host, so no VM is started.",
                              "remove it, or run a task with <where>guest</where>")

    def adjust(self, job: JobDescription) -> JobDescription:
        """Apply vboxwrapper's silent clamps, saying so."""
        low, high = VRAM_RANGE_MB
        if not low <= job.vram_size_mb <= high:
            clamped = min(max(job.vram_size_mb, low), high)
            self.warn(job.lines["vram_size_mb"], "<vram_size_mb>",
                      f"{job.vram_size_mb:g} MB is outside {low:g}..{high:g}; using {clamped:g}.")
            job = dataclasses.replace(job, vram_size_mb=clamped)
        if 0 < job.memory_size_mb < MIN_MEMORY_SIZE_MB:
            self.warn(job.lines["memory_size_mb"], "<memory_size_mb>",
                      f"{job.memory_size_mb:g} MB is below the minimum; the VM gets "
                      f"{MIN_MEMORY_SIZE_MB:g} MB.")
        return job

"""Running ``VBoxManage`` and reading what it says.

Facts this module relies on (from VirtualBox's manual and BOINC's vboxwrapper,
``samples/vboxwrapper/vbox_common.cpp``):

* every call is ``VBoxManage -q <command> ...``; a failure prints
  ``VBoxManage: error: <text>`` lines and a ``Details: code NAME (0x8...)``
  line; the first ``(0x...)`` in the output is the result code;
* two failures are worth retrying with a doubling pause: the session lock held
  by another VirtualBox program (``VBOX_E_INVALID_OBJECT_STATE`` 0x80BB0007) and
  VBoxSVC not reachable (``CO_E_SERVER_EXEC_FAILURE`` 0x80080005);
* a call may hang (VBoxSVC stuck); vboxwrapper gives most calls 45 s, then the
  child is killed;
* ``VBoxManage --version`` prints ``7.0.14r161095`` and, from distributions,
  ``7.0.14_SUSEr161095`` or ``6.1.38_Debianr153438`` (BOINC/boinc#5553); a
  version that cannot be parsed counts as the newest (BOINC PR #5587).

The runner is asynchronous (Twisted ``spawnProcess``) and takes its clock, so
the retry and timeout logic is tested with ``task.Clock``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger

from vmwrapper.hypervisor import errors

log = Logger()

VBOX_E_OBJECT_NOT_FOUND = 0x80BB0001
VBOX_E_INVALID_VM_STATE = 0x80BB0002
VBOX_E_INVALID_OBJECT_STATE = 0x80BB0007
VBOX_E_OBJECT_IN_USE = 0x80BB000C
CO_E_SERVER_EXEC_FAILURE = 0x80080005
#: Result codes retried with a doubling pause (vboxwrapper: vbm_popen).
RETRIED_CODES = frozenset({VBOX_E_INVALID_OBJECT_STATE, CO_E_SERVER_EXEC_FAILURE})

#: Seconds a call may take unless the caller says otherwise (vboxwrapper: vbm_popen).
DEFAULT_TIMEOUT = 45.0
#: Retries after the first attempt, and the first pause; pauses double: 1, 2, 4, 8, 16 s.
DEFAULT_RETRIES = 5
FIRST_RETRY_DELAY = 1.0

_CODE_RE = re.compile(r"\((0x[0-9a-fA-F]{8})\)")
_CODE_NAME_RE = re.compile(r"code ([A-Z][A-Z0-9_]+) \(0x")
_VERR_RE = re.compile(r"\b(VERR_[A-Z0-9_]+)\b")
_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)\.(\d+)([^r\s]*)(?:r(\d+))?")


# -- results and errors ---------------------------------------------------------------


@dataclass(frozen=True)
class VBoxResult:
    """What one ``VBoxManage`` call printed and how it ended."""

    args: tuple[str, ...]
    status: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together, as vboxwrapper reads them (``2>&1``)."""
        return self.stdout + self.stderr

    @property
    def code(self) -> int | None:
        """The first ``(0x...)`` result code in the output, if any."""
        match = _CODE_RE.search(self.output)
        return int(match.group(1), 16) if match else None

    @property
    def code_name(self) -> str | None:
        match = _CODE_NAME_RE.search(self.output)
        if match:
            return match.group(1)
        return "CO_E_SERVER_EXEC_FAILURE" if self.code == CO_E_SERVER_EXEC_FAILURE else None

    @property
    def verr(self) -> list[str]:
        """Every ``VERR_*`` name in the output, in order."""
        return _VERR_RE.findall(self.output)

    @property
    def message(self) -> str:
        """The ``VBoxManage: error:`` text without the Details/Context lines."""
        lines = []
        for line in self.output.splitlines():
            text = line.removeprefix("VBoxManage: error: ").strip()
            if text and not text.startswith(("Details:", "Context:")):
                lines.append(text)
        return " ".join(lines) or f"exit status {self.status}"

    @property
    def failed(self) -> bool:
        return self.status != 0

    @property
    def retriable(self) -> bool:
        return self.failed and self.code in RETRIED_CODES


class VBoxManageFailed(errors.HypervisorFailure):
    """A ``VBoxManage`` call failed in a way no more specific error describes.

    :param result: the call, for logs (``result.args``, ``result.output``).
    """

    def __init__(self, detail: str, result: VBoxResult | None = None) -> None:
        self.result = result
        super().__init__(detail)


class VirtualizationInUse(errors.HypervisorFailure):
    """VT-x/AMD-V is held by another hypervisor (Hyper-V, KVM): may be free later.

    Not a ``NoVirtualization``: the host has the extensions, so the BOINC client
    must not be told ``ERR_CPU_VM_EXTENSIONS_DISABLED``; vboxwrapper makes a
    temporary exit here.
    """

    code = "virtualization_in_use"
    transient = True
    hint = "Another hypervisor (Hyper-V, WSL2, KVM) holds VT-x/AMD-V; stop it or try later"


class VBoxServiceUnreachable(errors.HypervisorFailure):
    """VBoxManage could not reach VBoxSVC (the VirtualBox COM server)."""

    code = "vbox_service_unreachable"
    hint = "Unable to communicate with VirtualBox; VirtualBox may need to be reinstalled"


class SessionLocked(errors.HypervisorFailure):
    """Another VirtualBox program kept the VM's session lock through every retry."""

    code = "vbox_session_locked"
    hint = ("Another VirtualBox management application (VirtualBox Manager, VBoxManage) "
            "has locked this VM; close it so BOINC can control the VM")


#: VERR_* names -> (error class, what to tell the volunteer). Order matters: the
#: first name found in the output decides. ERR_CPU_VM_EXTENSIONS_DISABLED in the
#: text lets the BOINC client learn the host cannot run VM apps
#: (vboxwrapper: is_logged_failure_vm_extensions_disabled; shared/vboxwrapper.md 1.11).
_VERR_TABLE: list[tuple[re.Pattern[str], type[errors.HypervisorError], str]] = [
    (re.compile(r"VERR_VMX_MSR_\w*DISABLED|VERR_SVM_DISABLED"), errors.NoVirtualization,
     "ERR_CPU_VM_EXTENSIONS_DISABLED: VT-x/AMD-V is disabled in the firmware (BIOS/UEFI)"),
    (re.compile(r"VERR_VMX_NO_VMX|VERR_SVM_NO_SVM"), errors.NoVirtualization,
     "this processor has no VT-x/AMD-V"),
    (re.compile(r"VERR_VMX_IN_VMX_ROOT_MODE|VERR_SVM_IN_USE"), VirtualizationInUse,
     "VT-x/AMD-V is being used by another hypervisor"),
    (re.compile(r"VERR_(EM_)?NO_MEMORY"), errors.HypervisorFailure,
     "the host is out of memory for the VM"),
    (re.compile(r"VERR_NAT_REDIR_SETUP"), errors.PortInUse,
     "a forwarded host port is already in use"),
    (re.compile(r"VERR_DISK_FULL"), errors.OutOfDisk, "the disk is full"),
    (re.compile(r"VERR_FILE_NOT_FOUND|VERR_PATH_NOT_FOUND"), errors.ImageMissing,
     "a disk image file does not exist"),
    (re.compile(r"VERR_NOT_SUPPORTED|VERR_VD_\w*INVALID\w*|VERR_VD_IMAGE_CORRUPTED"),
     errors.ImageCorrupt, "the disk image is not in a format VirtualBox can read"),
]


def classify(result: VBoxResult, doing: str) -> errors.HypervisorError:
    """The typed error for a failed call. ``doing`` says what we were doing
    ("start VM boinc_..."), so the message reads "<doing>: <why>: <VirtualBox's text>"."""
    text = result.message
    for pattern, error_class, why in _VERR_TABLE:
        if pattern.search(result.output):
            return error_class(f"{doing}: {why}: {text}")
    if "vboxdrv kernel module is not loaded" in result.output:
        return errors.HypervisorNotInstalled(
            f"{doing}: the VirtualBox kernel driver is not loaded; reinstall or rebuild the "
            f"VirtualBox kernel modules: {text}")
    code = result.code
    if code == VBOX_E_INVALID_OBJECT_STATE:
        return SessionLocked(f"{doing}: {text}")
    if code == CO_E_SERVER_EXEC_FAILURE or "Failed to create the VirtualBox object" in text:
        return VBoxServiceUnreachable(f"{doing}: {text}")
    if code == VBOX_E_OBJECT_NOT_FOUND and "machine" in text:
        return errors.VMNotFound(f"{doing}: {text}")
    if code == VBOX_E_INVALID_VM_STATE or "is not currently running" in text:
        return errors.VMStateError(f"{doing}: {text}")
    if result.status == 2:
        failure = VBoxManageFailed(
            f"{doing}: VBoxManage rejected the command line ({text}); this VirtualBox version "
            "may not be supported", result)
        failure.transient = False
        return failure
    return VBoxManageFailed(f"{doing}: {text}", result)


# -- parsing ----------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class VBoxVersion:
    """A VirtualBox version: (major, minor, build) compare; ``raw`` is what VBoxManage said."""

    major: int
    minor: int
    build: int
    raw: str = ""
    revision: int | None = None
    known: bool = True

    def at_least(self, major: int, minor: int = 0, build: int = 0) -> bool:
        return (self.major, self.minor, self.build) >= (major, minor, build)

    def __str__(self) -> str:
        return self.raw or f"{self.major}.{self.minor}.{self.build}"


#: Versions vboxwrapper refuses to run on (temporary exit): broken releases.
BROKEN_VERSIONS = frozenset({(4, 2, 6), (4, 2, 18), (4, 3, 0)})


def parse_version(text: str) -> VBoxVersion:
    """``7.0.14r161095``, ``7.0.14_SUSEr161095``, ``6.1.38_Debianr153438``,
    ``7.1.0_BETA1r16xxxx`` -> VBoxVersion. Unparsable text (e.g. "Unknown") is treated
    as the newest version, so no pre-4.3 option is chosen by mistake (BOINC PR #5587)."""
    first = text.strip().splitlines()[-1].strip() if text.strip() else ""
    match = _VERSION_RE.match(first)
    if not match:
        return VBoxVersion(999, 0, 0, raw=first or "unknown", known=False)
    major, minor, build, _suffix, revision = match.groups()
    return VBoxVersion(int(major), int(minor), int(build), raw=first,
                       revision=int(revision) if revision else None)


def parse_machine_readable(text: str) -> dict[str, str]:
    """``showvminfo --machinereadable`` lines (``key="value"``, ``"key"="value"``,
    ``key=value``) -> dict. Later duplicates win."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip()
        if len(key) >= 2 and key[0] == key[-1] == '"':
            key = key[1:-1]
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        info[key] = value
    return info


@dataclass(frozen=True)
class SnapshotEntry:
    """One line of ``snapshot <vm> list``."""

    name: str
    uuid: str
    depth: int
    current: bool


_SNAPSHOT_LINE_RE = re.compile(r"^(\s*)Name: (.*) \(UUID: ([0-9a-fA-F-]+)\)(\s*\*)?\s*$")


def parse_snapshot_list(text: str) -> list[SnapshotEntry]:
    """The indented ``snapshot list`` output, oldest first. "does not have any
    snapshots" (printed with a failure status) is an empty list
    (vboxwrapper: cleanup_snapshots)."""
    entries = []
    for line in text.splitlines():
        match = _SNAPSHOT_LINE_RE.match(line)
        if match:
            indent, name, uuid, star = match.groups()
            entries.append(SnapshotEntry(name, uuid, len(indent) // 3, bool(star)))
    return entries


def parse_hostinfo(text: str) -> dict[str, str]:
    """``list hostinfo`` "Key: value" lines -> dict."""
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            info[key.strip()] = value.strip()
    return info


def parse_vm_pid(vbox_log: str) -> int | None:
    """The VM process id VBox.log records ("Process ID: 1234"; vboxwrapper:
    get_vm_process_id). The last one wins (the log of the latest start)."""
    found = re.findall(r"Process ID: (\d+)", vbox_log)
    return int(found[-1]) if found else None


def parse_in_use_by(text: str) -> list[tuple[str, str]]:
    """``showmediuminfo``'s "In use by VMs: name (UUID: u), ..." -> [(name, uuid)]
    (vboxwrapper: deregister_stale_vm)."""
    for line in text.splitlines():
        if line.startswith("In use by VMs:"):
            found = re.findall(r"([^,:]+?) \(UUID: ([0-9a-fA-F-]+)\)", line.split(":", 1)[1])
            return [(name.strip(), uuid) for name, uuid in found]
    return []


# -- running ----------------------------------------------------------------------------


class _Collector(protocol.ProcessProtocol):
    def __init__(self, done: defer.Deferred[tuple[int, bytes, bytes]]) -> None:
        self.done = done
        self.out: list[bytes] = []
        self.err: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        status = value.exitCode if value.exitCode is not None else 128 + (value.signal or 0)
        if not self.done.called:
            self.done.callback((status, b"".join(self.out), b"".join(self.err)))


class VBoxManageRunner:
    """Runs ``VBoxManage -q ...`` calls with a deadline and vboxwrapper's retry policy.

    :param reactor: provides ``spawnProcess``.
    :param executable: path of ``VBoxManage``.
    :param env: the environment of every call (``VBOX_USER_HOME`` among it).
    :param clock: ``IReactorTime`` for deadlines and retry pauses (the reactor by default).
    :param timeout: default seconds per attempt.
    :param retries: retries of a retriable failure after the first attempt.
    :param first_retry_delay: the first pause before a retry; each next one doubles.
    :param spawn: replaces ``reactor.spawnProcess`` (unit tests).
    """

    def __init__(self, reactor: Any, executable: str, env: dict[str, str], *,
                 clock: Any = None, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES, first_retry_delay: float = FIRST_RETRY_DELAY,
                 spawn: Callable[..., Any] | None = None) -> None:
        self.executable = executable
        self.env = dict(env)
        self.clock = clock or reactor
        self.timeout = timeout
        self.retries = retries
        self.first_retry_delay = first_retry_delay
        self._spawn = spawn or getattr(reactor, "spawnProcess", None)
        #: Every call made, newest last (args, status): our vbox_trace.txt.
        self.trace: list[tuple[tuple[str, ...], int]] = []

    @defer.inlineCallbacks
    def run(self, *args: str, doing: str | None = None, check: bool = True,
            timeout: float | None = None) -> Any:
        """Run ``VBoxManage -q *args``; fire with a ``VBoxResult``.

        Retriable failures (session lock, VBoxSVC unreachable) are retried with
        pauses 1, 2, 4... s. With ``check`` a final failure raises the typed error
        from ``classify``; without it the failed result is returned.

        :raises OperationTimeout: an attempt ran longer than ``timeout`` (it is killed).
        :raises HypervisorNotInstalled: the executable cannot be started.
        """
        doing = doing or f"VBoxManage {' '.join(args[:2])}"
        delay = self.first_retry_delay
        attempt = 0
        while True:
            result = yield self._attempt(tuple(args), doing, timeout or self.timeout)
            if not result.retriable or attempt >= self.retries:
                break
            log.info("{doing}: {code} ({message}); retrying in {delay} s", doing=doing,
                     code=result.code_name, message=result.message, delay=delay)
            yield deferLater(self.clock, delay, lambda: None)
            attempt += 1
            delay *= 2
        if result.failed and check:
            raise classify(result, doing)
        return result

    def _attempt(self, args: tuple[str, ...], doing: str,
                 timeout: float) -> defer.Deferred[VBoxResult]:
        ended: defer.Deferred[tuple[int, bytes, bytes]] = defer.Deferred()
        collector = _Collector(ended)
        argv = [self.executable, "-q", *args]
        try:
            transport = self._spawn(collector, self.executable, argv, env=self.env)
        except OSError as failure:
            return defer.fail(errors.HypervisorNotInstalled(
                f"cannot run {self.executable}: {failure.strerror}"))
        result: defer.Deferred[VBoxResult] = defer.Deferred()

        def on_timeout() -> None:
            try:
                transport.signalProcess("KILL")
            except (error.ProcessExitedAlready, OSError):
                pass
            self.trace.append((args, -1))
            if not result.called:
                result.errback(errors.OperationTimeout(
                    f"{doing}: VBoxManage did not answer within {timeout:g} s and was killed"))

        timer = self.clock.callLater(timeout, on_timeout)

        def on_end(outcome: tuple[int, bytes, bytes]) -> None:
            if timer.active():
                timer.cancel()
            if result.called:
                return
            status, out, err = outcome
            self.trace.append((args, status))
            result.callback(VBoxResult(args, status, out.decode("utf-8", "replace"),
                                       err.decode("utf-8", "replace")))

        ended.addCallback(on_end)
        return result


def find_vboxmanage(explicit: str | None = None, env: dict[str, str] | None = None,
                    search_path: Sequence[str] | None = None) -> str | None:
    """Where VBoxManage is: ``explicit``, ``$VBOXWRAPPER_VBOXMANAGE``, then ``PATH``.

    Returns None when none of them names an executable file.
    """
    env = os.environ if env is None else env
    for candidate in (explicit, env.get("VBOXWRAPPER_VBOXMANAGE")):
        if candidate:
            return candidate if os.access(candidate, os.X_OK) else None
    dirs = search_path if search_path is not None else env.get("PATH", "").split(os.pathsep)
    for directory in dirs:
        path = os.path.join(directory, "VBoxManage")
        if directory and os.access(path, os.X_OK):
            return path
    return None

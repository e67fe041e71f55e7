"""A tiny BOINC project on 127.0.0.1: master page, scheduler, downloads, uploads.

It runs in a thread of the calling process (tests, ``make demo``) so callers
can add work units, queue trickle-downs and block until the real client has
reported a result or sent a trickle. Only what a client on the anonymous
platform needs is implemented; the wire formats live in ``scheduler_protocol``.

URLs, for a server on port P: master ``http://127.0.0.1:P/fake/``, scheduler
``/fake_cgi/cgi``, uploads ``/fake_cgi/file_upload_handler``, downloads
``/download/NAME``.
"""

from __future__ import annotations

import http.server
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from vmwrapper.testing import scheduler_protocol as proto

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The authenticator the client attaches with (the server accepts any).
AUTHENTICATOR = "b0inc0vm0test0authenticator"
#: The hostid the first client gets; later new hosts get the next numbers.
FIRST_HOSTID = 42


@dataclass(frozen=True)
class ReceivedTrickle:
    """A trickle-up as the server received it, with the server's receive time."""

    hostid: int
    received_at: float
    message: proto.TrickleUp


@dataclass(frozen=True)
class RpcRecord:
    """One scheduler request: when it came, what it said, what we answered."""

    received_at: float
    request: proto.SchedulerRequest
    raw_request: str
    content: proto.ReplyContent
    reply: str


class _ProjectState:
    """Everything the handlers share, guarded by one condition variable."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.changed = threading.Condition()
        self.unsent: list[proto.Workunit] = []
        self.workunits: dict[str, proto.Workunit] = {}
        self.input_files: dict[str, bytes] = {}
        self.results: dict[str, proto.ReportedResult] = {}
        self.uploads: dict[str, bytes] = {}
        self.trickles: list[ReceivedTrickle] = []
        self.trickle_downs: list[proto.TrickleDown] = []
        self.rpcs: list[RpcRecord] = []
        self.next_hostid = FIRST_HOSTID
        self.acknowledge_trickles = True


class ProjectServer:
    """A BOINC project for one or more real clients, served from a thread.

    Use as a context manager or call :meth:`start` / :meth:`stop`. All
    ``wait_for_*`` methods block the caller (never the server) until the
    condition holds, and raise :class:`TimeoutError` saying what was awaited
    and what the server has seen so far.
    """

    def __init__(
        self,
        project_name: str = "boinc-vm test project",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if host != "127.0.0.1":
            raise ValueError(f"the test project serves on 127.0.0.1 only, not {host!r}")
        self.project_name = project_name
        self._state = _ProjectState(clock)
        self._httpd = http.server.ThreadingHTTPServer((host, port), _handler_class(self))
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None
        #: Called as (request, raw body, hostid, server time, reply content) for each scheduler
        #: RPC, under the server's lock, before the reply is built (it may clear message_ack);
        #: vmwrapper.testing.project_db stores the RPC in a BOINC project database with it.
        self.on_scheduler_request: Callable[..., None] | None = None

    # -- URLs -------------------------------------------------------------
    @property
    def url(self) -> str:
        """The master URL clients attach to (BOINC rejects ``localhost``)."""
        return f"http://127.0.0.1:{self.port}/fake/"

    @property
    def scheduler_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fake_cgi/cgi"

    @property
    def upload_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fake_cgi/file_upload_handler"

    @property
    def download_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/download/"

    @property
    def project_dir_name(self) -> str:
        """The client's directory for this project under ``projects/`` (lib/url.cpp rule)."""
        return f"127.0.0.1_{self.port}_fake"

    # -- lifecycle --------------------------------------------------------
    def start(self) -> ProjectServer:
        if self._thread is None:
            # A short poll interval makes stop() quick; the idle cost is negligible.
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, args=(0.05,),
                name=f"boinc-project-{self.port}", daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ProjectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- work -------------------------------------------------------------
    def add_workunit(
        self,
        name: str,
        *,
        app_name: str = "vmtest",
        version_num: int = 100,
        command_line: str = "",
        input_files: Mapping[str, bytes] | None = None,
        output_files: Sequence[str] = ("out",),
        rsc_fpops_est: float = 1e10,
        rsc_fpops_bound: float = 1e18,
        report_immediately: bool = True,
        deadline_seconds: float = 7 * 86400,
        plan_class: str = "",
    ) -> proto.Workunit:
        """Queue a work unit; the next scheduler reply sends it to the client.

        ``input_files`` maps open names (what the app opens) to contents;
        ``output_files`` lists the open names of files the app must write.
        The result is ``<name>_0``; its outputs are uploaded as
        ``<name>_0_<open name>``. ``rsc_fpops_bound`` is huge by default: on
        the anonymous platform the client's time limit is bound / 1e9 s.
        ``plan_class`` names the app version's plan class (as BOINC's
        scheduler does in ``<result>``); the client runs only a version with it.
        """
        if not name or any(c.isspace() or c in "<>&/" for c in name):
            raise ValueError(f"work unit name {name!r} must be non-empty, without spaces, <>&/")
        wu = proto.Workunit(
            name=name,
            app_name=app_name,
            version_num=version_num,
            command_line=command_line,
            input_files=tuple(
                proto.InputFile(f"{name}_{open_name}", open_name, content)
                for open_name, content in (input_files or {}).items()
            ),
            output_files=tuple(
                proto.OutputFile(f"{name}_0_{open_name}", open_name) for open_name in output_files
            ),
            rsc_fpops_est=rsc_fpops_est,
            rsc_fpops_bound=rsc_fpops_bound,
            report_deadline=int(self._state.clock() + deadline_seconds),
            report_immediately=report_immediately,
            plan_class=plan_class,
        )
        with self._state.changed:
            if name in self._state.workunits:
                raise ValueError(f"work unit {name!r} already exists")
            self._state.workunits[name] = wu
            for f in wu.input_files:
                self._state.input_files[f.name] = f.content
            self._state.unsent.append(wu)
            self._state.changed.notify_all()
        return wu

    def queue_trickle_down(self, result_name: str, body: str, when: int | None = None) -> None:
        """Send ``body`` to ``result_name`` in the next scheduler reply.

        The client delivers it only if that result has a running task at that
        moment; otherwise it drops it. Keep every tag of ``body`` on its own line.
        """
        stamp = int(self._state.clock()) if when is None else when
        with self._state.changed:
            self._state.trickle_downs.append(proto.TrickleDown(result_name, stamp, body))

    def set_acknowledge_trickles(self, enabled: bool) -> None:
        """Whether replies carry ``<message_ack/>`` (off: the client resends trickles)."""
        with self._state.changed:
            self._state.acknowledge_trickles = enabled

    # -- what the server has seen -----------------------------------------
    @property
    def results(self) -> dict[str, proto.ReportedResult]:
        with self._state.changed:
            return dict(self._state.results)

    @property
    def uploads(self) -> dict[str, bytes]:
        with self._state.changed:
            return dict(self._state.uploads)

    @property
    def trickles(self) -> list[ReceivedTrickle]:
        with self._state.changed:
            return list(self._state.trickles)

    @property
    def rpcs(self) -> list[RpcRecord]:
        with self._state.changed:
            return list(self._state.rpcs)

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float) -> T:
        """Block until ``probe()`` (called under the server's lock) returns non-None."""
        found: list[T] = []

        def ready() -> bool:
            value = probe()
            if value is not None:
                found.append(value)
                return True
            return False

        with self._state.changed:
            if not self._state.changed.wait_for(ready, timeout):
                raise TimeoutError(f"no {what} within {timeout:g} s; server saw: {self._summary()}")
        return found[0]

    def wait_for_rpc(self, after: int, timeout: float = 30) -> RpcRecord:
        """The first scheduler request after the first ``after`` ones."""
        return self.wait_for(
            f"scheduler request #{after + 1}",
            lambda: self._state.rpcs[after] if len(self._state.rpcs) > after else None,
            timeout,
        )

    def wait_for_sent(self, wu_name: str, timeout: float = 30) -> proto.Workunit:
        """Until a reply has carried work unit ``wu_name`` to a client."""
        state = self._state
        return self.wait_for(
            f"dispatch of work unit {wu_name}",
            lambda: None if any(w.name == wu_name for w in state.unsent)
            else state.workunits.get(wu_name),
            timeout,
        )

    def wait_for_result(self, result_name: str, timeout: float = 60) -> proto.ReportedResult:
        """Until the client has reported ``result_name``."""
        return self.wait_for(
            f"report of {result_name}", lambda: self._state.results.get(result_name), timeout
        )

    def wait_for_trickle(
        self, predicate: Callable[[ReceivedTrickle], bool], timeout: float = 30
    ) -> ReceivedTrickle:
        """Until a received trickle-up satisfies ``predicate``; returns the first one."""

        def probe() -> ReceivedTrickle | None:
            return next((t for t in self._state.trickles if predicate(t)), None)

        return self.wait_for("matching trickle-up", probe, timeout)

    def wait_for_trickle_down_sent(self, result_name: str, timeout: float = 30) -> RpcRecord:
        """Until a reply has carried a trickle-down for ``result_name``; returns that RPC."""
        return self.wait_for(
            f"trickle-down sent to {result_name}",
            lambda: next(
                (rpc for rpc in self._state.rpcs
                 if any(t.result_name == result_name for t in rpc.content.trickle_downs)),
                None,
            ),
            timeout,
        )

    def _summary(self) -> str:
        return (
            f"{len(self._state.rpcs)} RPCs, results {sorted(self._state.results)}, "
            f"uploads {sorted(self._state.uploads)}, {len(self._state.trickles)} trickles, "
            f"unsent work {[w.name for w in self._state.unsent]}"
        )

    # -- request handling (server threads) ----------------------------------
    def handle_scheduler_request(self, body: str) -> str:
        """Record a scheduler request and build the reply; raises ProtocolError."""
        request = proto.parse_scheduler_request(body)
        state = self._state
        with state.changed:
            content = proto.ReplyContent()
            if request.hostid == 0:
                content.hostid = state.next_hostid
                state.next_hostid += 1
            hostid = request.hostid or content.hostid or 0
            now = state.clock()
            for result in request.results:
                state.results[result.name] = result
                content.acked_results.append(result.name)
            for message in request.trickles:
                state.trickles.append(ReceivedTrickle(hostid, now, message))
            content.message_ack = bool(request.trickles) and state.acknowledge_trickles
            content.workunits, state.unsent = state.unsent, []
            content.trickle_downs, state.trickle_downs = state.trickle_downs, []
            if self.on_scheduler_request is not None:
                self.on_scheduler_request(request, body, hostid, now, content)
            reply = proto.scheduler_reply(
                self.project_name, self.url, self.download_url, self.upload_url, content
            )
            state.rpcs.append(RpcRecord(now, request, body, content, reply))
            state.changed.notify_all()
        log.info(
            "RPC from host %d: %d results, %d trickles, sent %d work units",
            hostid, len(request.results), len(request.trickles), len(content.workunits),
        )
        return reply

    def handle_upload(self, body: bytes) -> bytes:
        """Store an uploaded file or answer a size query."""
        try:
            upload = proto.parse_upload_request(body)
        except proto.ProtocolError as exc:
            return proto.upload_reply(-1, message=str(exc))
        state = self._state
        with state.changed:
            have = state.uploads.get(upload.file_name, b"")
            if upload.size_query:
                return proto.upload_reply(0, file_size=len(have))
            state.uploads[upload.file_name] = have[: upload.offset] + upload.data
            state.changed.notify_all()
        if not upload.complete:
            # Keep what came; the client retries and asks for the size first.
            return proto.upload_reply(1, message=f"{upload.file_name}: upload truncated")
        return proto.upload_reply(0)

    def download(self, name: str) -> bytes | None:
        with self._state.changed:
            return self._state.input_files.get(name)


def _handler_class(server: ProjectServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        # HTTP/1.1 so curl's "Expect: 100-continue" is answered at once, not after 1 s.
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, status: int, body: bytes, content_type: str = "text/xml") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            if self.path.rstrip("/") == "/fake":
                page = proto.master_page(server.project_name, server.scheduler_url)
                self._send(200, page.encode(), "text/html")
            elif self.path.startswith("/download/"):
                content = server.download(self.path[len("/download/"):])
                if content is None:
                    self._send(404, b"no such file\n", "text/plain")
                else:
                    self._send(200, content, "application/octet-stream")
            else:
                self._send(404, b"not found\n", "text/plain")

        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            body = self._body()
            if self.path == "/fake_cgi/cgi":
                try:
                    reply = server.handle_scheduler_request(body.decode("utf-8", "replace"))
                except proto.ProtocolError as exc:
                    log.warning("bad scheduler request: %s", exc)
                    self._send(400, f"bad scheduler request: {exc}\n".encode(), "text/plain")
                    return
                self._send(200, reply.encode())
            elif self.path == "/fake_cgi/file_upload_handler":
                self._send(200, server.handle_upload(body))
            else:
                self._send(404, b"not found\n", "text/plain")

    return Handler

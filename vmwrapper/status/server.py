"""The status page server: twisted.web on 127.0.0.1, live through Server-Sent Events.

BOINC Manager's "Show graphics" opens the URL the app gives the client as
``web_graphics_url`` (``boinc_protocol.md``, graphics_reply channel). The page
must be reachable from this computer only, so three fences stand:

1. the socket listens on 127.0.0.1 only (a free port chosen by the kernel);
2. every request's peer address must be a loopback address;
3. the ``Host`` header must name this server (``127.0.0.1:PORT`` or
   ``localhost:PORT``), which stops a web site in the volunteer's browser from
   reading the page through DNS rebinding.

Requests failing a fence get ``403`` and nothing else. Only ``GET``/``HEAD``
are served; responses forbid caching, framing and inline script.

The server asks its *provider* for a snapshot every *interval* seconds (on the
injected clock) and pushes it to every open page when it changed. A provider
that raises is logged once per kind of error and polled again next time: the
page must never stop the wrapper, nor the wrapper's hiccup stop the page.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any

from twisted.internet import task
from twisted.web import resource, server

from vmwrapper.boinc.log import log as default_log
from vmwrapper.status.model import StatusSnapshot
from vmwrapper.status.page import SCRIPT, STYLESHEET, render_page
from vmwrapper.status.secrets import SecretFilter

#: Seconds between two provider polls.
DEFAULT_INTERVAL = 1.0
#: Seconds between keep-alive comments on idle event streams.
KEEPALIVE = 15.0
#: Live pages served at once; more get 503 (a local program must not exhaust the wrapper).
MAX_STREAMS = 16
#: The interface the server listens on. Never anything else.
LISTEN_ADDRESS = "127.0.0.1"

_SECURITY_HEADERS = {
    b"Cache-Control": b"no-store",
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"Content-Security-Policy": (b"default-src 'none'; script-src 'self'; style-src 'self'; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'none'; "
                                 b"frame-ancestors 'none'"),
}


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8 and ::1 (and IPv4-mapped loopback)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


class _Guarded(resource.Resource):
    """Checks the fences, then dispatches to a child resource by path."""

    isLeaf = True

    def __init__(self, status: StatusServer) -> None:
        super().__init__()
        self._status = status

    def render(self, request: server.Request) -> Any:
        for name, value in _SECURITY_HEADERS.items():
            request.setHeader(name, value)
        refusal = self._status.refusal(request)
        if refusal:
            request.setResponseCode(403)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return f"forbidden: {refusal}\n".encode()
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            return b"only GET and HEAD\n"
        return self._status.serve(request)


class StatusServer:
    """Serves the status page of one job.

    :param provider: returns the current :class:`StatusSnapshot`.
    :param reactor: ``IReactorTCP`` + ``IReactorTime`` (tests: a ``MemoryReactorClock``).
    :param secrets: masks secrets in every text shown.
    :param interval: seconds between provider polls.
    :param log: writes one stderr.txt line.
    """

    def __init__(self, provider: Callable[[], StatusSnapshot], reactor: Any,
                 secrets: SecretFilter | None = None, interval: float = DEFAULT_INTERVAL,
                 log: Callable[[str], None] = default_log) -> None:
        if interval <= 0:
            raise ValueError(f"interval={interval}: must be > 0 seconds")
        self.provider = provider
        self.reactor = reactor
        self.secrets = secrets or SecretFilter()
        self.interval = interval
        self._log = log
        self.port = 0
        self._listening: Any = None
        self._streams: set[server.Request] = set()
        self._current: StatusSnapshot = StatusSnapshot()
        self._public_json = self._encode(self._current)
        self._errors_logged: set[str] = set()
        self._poller = task.LoopingCall(self.poll)
        self._poller.clock = reactor
        self._keepalive = task.LoopingCall(self._send_keepalive)
        self._keepalive.clock = reactor
        self.site = server.Site(_Guarded(self))
        self.site.displayTracebacks = False

    # -- lifecycle --------------------------------------------------------

    def start(self) -> str:
        """Listen on 127.0.0.1 (free port) and start polling; returns the page's URL."""
        self._listening = self.reactor.listenTCP(0, self.site, interface=LISTEN_ADDRESS)
        self.port = self._listening.getHost().port
        self._poller.start(self.interval, now=True)
        self._keepalive.start(KEEPALIVE, now=False)
        return self.url

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/``: what to give the client as ``web_graphics_url``."""
        return f"http://{LISTEN_ADDRESS}:{self.port}/"

    def stop(self) -> Any:
        """Close every stream and stop listening; returns the Deferred of the port closing."""
        for poller in (self._poller, self._keepalive):
            if poller.running:
                poller.stop()
        for request in list(self._streams):
            request.finish()
        self._streams.clear()
        return self._listening.stopListening() if self._listening else None

    # -- snapshots --------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """How many pages are listening for live updates now."""
        return len(self._streams)

    @property
    def current(self) -> StatusSnapshot:
        """The last snapshot the provider gave."""
        return self._current

    def poll(self) -> None:
        """Ask the provider for a snapshot; push it to open pages if it changed."""
        try:
            snapshot = self.provider()
        except Exception as error:  # noqa: BLE001 - the page must not stop the wrapper
            kind = type(error).__name__
            if kind not in self._errors_logged:
                self._errors_logged.add(kind)
                self._log(f"status page: the status provider failed ({kind}: {error}); "
                          "showing the last known status")
            return
        if snapshot == self._current:
            return
        self._current = snapshot
        self._public_json = self._encode(snapshot)
        for request in list(self._streams):
            self._send(request, self._public_json)

    def _encode(self, snapshot: StatusSnapshot) -> bytes:
        return json.dumps(snapshot.to_public(self.secrets), separators=(",", ":")).encode()

    # -- requests ---------------------------------------------------------

    def refusal(self, request: server.Request) -> str:
        """Why *request* must be refused ("" when it may be served)."""
        peer = request.getClientAddress()
        if not is_loopback(getattr(peer, "host", "")):
            return "this page is only for this computer"
        host = (request.getHeader(b"host") or b"").decode("latin-1").lower()
        if host not in {f"{LISTEN_ADDRESS}:{self.port}", f"localhost:{self.port}"}:
            return "unexpected Host header"
        return ""

    def serve(self, request: server.Request) -> Any:
        path = request.path
        if path == b"/":
            return self._static(request, b"text/html; charset=utf-8",
                                render_page(json.loads(self._public_json)))
        if path == b"/status.json":
            return self._static(request, b"application/json", self._public_json)
        if path == b"/app.js":
            return self._static(request, b"text/javascript; charset=utf-8", SCRIPT)
        if path == b"/app.css":
            return self._static(request, b"text/css; charset=utf-8", STYLESHEET)
        if path == b"/events":
            return self._open_stream(request)
        request.setResponseCode(404)
        return self._static(request, b"text/plain; charset=utf-8", b"not found\n")

    @staticmethod
    def _static(request: server.Request, content_type: bytes, body: bytes) -> bytes:
        request.setHeader(b"Content-Type", content_type)
        return body

    def _open_stream(self, request: server.Request) -> Any:
        if len(self._streams) >= MAX_STREAMS:
            request.setResponseCode(503)
            return self._static(request, b"text/plain; charset=utf-8",
                                b"too many open status pages; close one\n")
        request.setHeader(b"Content-Type", b"text/event-stream")
        if request.method == b"HEAD":
            return b""
        request.write(b"retry: 2000\n\n")
        self._send(request, self._public_json)
        self._streams.add(request)
        request.notifyFinish().addBoth(lambda _: self._streams.discard(request))
        return server.NOT_DONE_YET

    @staticmethod
    def _send(request: server.Request, data: bytes) -> None:
        request.write(b"data: " + data + b"\n\n")

    def _send_keepalive(self) -> None:
        for request in list(self._streams):
            request.write(b": keep-alive\n\n")

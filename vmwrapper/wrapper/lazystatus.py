"""The volunteer's status page, built on the first visit instead of at start-up.

Most volunteers never open the page, yet ``twisted.web`` and the page's
poller cost every task about 1.5 MB of resident memory and a poll every few
seconds. So the wrapper only *listens* at start-up (a bare Twisted port on
127.0.0.1, so the client gets ``web_graphics_url`` at once) and builds the
real page (:mod:`vmwrapper.status`) when the first connection arrives; that
connection is served by it. The guest output tail shown on the page is fed from
the start (:class:`~vmwrapper.status.model.GuestOutputTail` is light), so the
page shows the last lines even when opened late. The run summary at exit
needs no page and is written either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import protocol

from vmwrapper.boinc.log import log as default_log

#: Where the page listens (the volunteer's browser on this machine only).
LISTEN_ADDRESS = "127.0.0.1"


class _FirstVisit(protocol.ServerFactory):
    """Builds the page's site on the first connection, then hands every connection to it."""

    def __init__(self, page: LazyStatusPage) -> None:
        self.page = page

    def buildProtocol(self, addr: Any) -> Any:
        site = self.page.site()
        return site.buildProtocol(addr) if site is not None else None


class _PortLender:
    """The reactor as :class:`~vmwrapper.status.server.StatusServer` sees it: its
    ``listenTCP`` adopts the port already open instead of opening another."""

    def __init__(self, reactor: Any, port: Any, adopt: Callable[[Any], None]) -> None:
        self._reactor = reactor
        self._port = port
        self._adopt = adopt

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        self._adopt(factory)
        return self._port

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class LazyStatusPage:
    """See the module docstring.

    :param reactor: the Twisted reactor.
    :param runtime: the BOINC runtime (``set_web_graphics_url``, ``init_data``).
    :param wrapper: the :class:`~vmwrapper.wrapper.machine.Wrapper`.
    :param hypervisor: one line naming the hypervisor, shown on the page.
    """

    def __init__(self, reactor: Any, runtime: Any, wrapper: Any, hypervisor: str = "",
                 log: Callable[[str], None] = default_log) -> None:
        from vmwrapper.status.model import GuestOutputTail  # noqa: PLC0415 - light
        from vmwrapper.wrapper.output import CappedOutput  # noqa: PLC0415

        self.reactor = reactor
        self.runtime = runtime
        self.wrapper = wrapper
        self.hypervisor = hypervisor
        self._log = log
        self.tail = GuestOutputTail()
        wrapper.output = CappedOutput(self.tail.tee(log), cap=wrapper.output.cap)
        self.port: Any = None
        self.view: Any = None
        self._site: Any = None
        self._failed = False

    def start(self) -> str:
        """Listen and tell the client the URL; returns it.

        :raises CannotListenError: no port on 127.0.0.1 (the job runs without a page).
        """
        self.port = self.reactor.listenTCP(0, _FirstVisit(self), interface=LISTEN_ADDRESS)
        url = f"http://{LISTEN_ADDRESS}:{self.port.getHost().port}/"
        self.runtime.set_web_graphics_url(url)
        self._log(f"status page: {url} (built on the first visit)")
        return url

    @property
    def built(self) -> bool:
        return self._site is not None

    def site(self) -> Any:
        """The page's site, built now if this is the first visit (None if that failed)."""
        if self._site is None and not self._failed:
            try:
                self._build()
            except Exception as error:  # noqa: BLE001 - the job runs without a page
                self._failed = True
                self._log(f"status page unavailable: {type(error).__name__}: {error}")
        return self._site

    def _build(self) -> None:
        from vmwrapper.status.server import StatusServer  # noqa: PLC0415 - the heavy part
        from vmwrapper.status.wrapper_view import WrapperView  # noqa: PLC0415

        view = WrapperView(self.wrapper, self.runtime, self.hypervisor, self.tail)
        lender = _PortLender(self.reactor, self.port, self._adopt)
        server = StatusServer(view.snapshot, lender, secrets=view.secrets, log=self._log)
        server.start()
        view.server = server
        self.view = view

    def _adopt(self, site: Any) -> None:
        self._site = site

    def write_summary(self, exit_reason: str) -> None:
        """The run's final summary lines in stderr.txt (page or not)."""
        view = self.view
        if view is None:
            from vmwrapper.status.wrapper_view import WrapperView  # noqa: PLC0415

            view = WrapperView(self.wrapper, self.runtime, self.hypervisor, self.tail)
        view.summary(exit_reason).write()

"""The status page listens at start-up and is built on the first visit (real reactor, real HTTP)."""

from __future__ import annotations

import urllib.request

from tests.unit.wrapper.test_driver_options import running_reactor  # noqa: F401
from vmwrapper.boinc.initdata import InitData
from vmwrapper.wrapper.lazystatus import LazyStatusPage
from vmwrapper.wrapper.output import CappedOutput
from vmwrapper.wrapper.state import WrapperState
from vmwrapper.wrapper.trickles import CpuTrickles


class Runtime:
    def __init__(self) -> None:
        self.init_data = InitData()
        self.fraction_done = 0.25
        self.checkpoint_cpu_time = 0.0
        self.urls: list[str] = []

    def set_web_graphics_url(self, url: str) -> None:
        self.urls.append(url)


class Wrapper:
    """The attributes of :class:`~vmwrapper.wrapper.machine.Wrapper` the page reads."""

    def __init__(self) -> None:
        self.state = WrapperState()
        self.phase = "running tasks"
        self.suspended = False
        self.current_task = "task 1: /bin/sh"
        self.task_fraction = None
        self.checkpoints = 0
        self.output = CappedOutput(lambda line: None)
        self.trickles = CpuTrickles(lambda variety, body: None, lambda: 1.0, 0)

    def cumulative_cpu(self) -> float:
        return 12.5


def test_page_is_built_on_the_first_visit_and_shows_output_from_before(running_reactor):  # noqa: F811
    lines: list[str] = []
    wrapper, runtime = Wrapper(), Runtime()
    page = running_reactor.call(lambda: LazyStatusPage(running_reactor.reactor, runtime, wrapper,
                                                       "qemu", log=lines.append))
    try:
        url = running_reactor.call(page.start)
        assert runtime.urls == [url] and url.startswith("http://127.0.0.1:")
        running_reactor.call(wrapper.output.stream("task 1"), "stdout", b"early guest line\n")
        running_reactor.call(wrapper.output.flush)
        assert not page.built
        with urllib.request.urlopen(url + "status.json", timeout=10) as response:
            body = response.read().decode()
        assert page.built
        assert "early guest line" in body and "12.5" in body
        running_reactor.call(page.write_summary, "finishing with status 0 (SUCCESS): done")
    finally:
        if page.view is not None:
            running_reactor.call(page.view.server.stop)
        elif page.port is not None:
            running_reactor.call(page.port.stopListening)


def test_summary_is_written_without_a_visit(running_reactor, capfd):  # noqa: F811
    wrapper = Wrapper()
    page = LazyStatusPage(running_reactor.reactor, Runtime(), wrapper, "qemu",
                          log=lambda line: None)
    page.write_summary("finishing with status 0 (SUCCESS): all good")
    assert not page.built
    assert "all good" in capfd.readouterr().err

"""The status page in a real headless Chromium, following a real QEMU appliance VM.

A phone-size window (390 x 844 CSS pixels) loads the page; the page must show
the VM running, with its console's last lines and its CPU time; pausing the VM
through the driver must change the page without a reload (a marker set in the
page's JavaScript survives); the screenshots are kept in test-artifacts/status/.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from tests.conftest import ARTIFACTS
from vmwrapper.status.model import StatusSnapshot
from vmwrapper.status.secrets import SecretFilter
from vmwrapper.status.server import StatusServer
from vmwrapper.status.vmwatch import VMWatch

pytestmark = pytest.mark.qemu

PASSCODE = "s3cr3t-broker-passcode-42"
AUTHENTICATOR = "0123456789abcdef0123456789abcdef"
SHOTS = ARTIFACTS / "status"


@pytest.fixture
def page(status_reactor, running_vm):
    """``(server, watch)``: the status page of the running VM, on the private reactor."""
    driver, name = running_vm
    base = StatusSnapshot(task="status-demo", fraction_done=0.4, task_progress=0.55,
                          checkpoints=2, last_checkpoint_cpu=12.0, trickles_sent=1,
                          cpu_reported=10.0, hypervisor="QEMU (TCG)",
                          message=f"broker login vm-1 passcode={PASSCODE} key {AUTHENTICATOR}")

    def build():
        watch = VMWatch(driver, name, status_reactor.reactor, interval=0.5)
        watch.start()
        server = StatusServer(lambda: watch.snapshot(base), status_reactor.reactor,
                              secrets=SecretFilter([PASSCODE, AUTHENTICATOR]), interval=0.5)
        server.start()
        return server, watch

    server, watch = status_reactor.call(build)
    yield server, watch
    status_reactor.call(watch.stop)
    status_reactor.call(server.stop)


def _state(browser) -> str:
    return browser.evaluate("document.getElementById('state').dataset.state")


def test_page_follows_the_vm_live_in_chromium(page, chromium, status_reactor, running_vm):
    server, _ = page
    driver, name = running_vm
    chromium.open(server.url, width=390, height=844)
    chromium.wait_for("document.getElementById('link').textContent === 'on'", 15)
    chromium.wait_for("document.getElementById('state').dataset.state === 'running'", 30)
    # the guest's console arrives through the live stream, up to the appliance's idle line
    chromium.wait_for("document.getElementById('output').textContent"
                      ".includes('waiting for the power button')", 120)
    chromium.wait_for("document.querySelector('[data-field=cpu_time_text]').textContent"
                      " !== '0 s'", 60)
    assert chromium.evaluate("document.querySelector('[data-field=task]').textContent") \
        == "status-demo"
    assert chromium.evaluate("document.querySelector('progress[data-progress=fraction_done]')"
                             ".value") == 40
    # readable on a phone: nothing wider than the window
    assert chromium.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    chromium.screenshot(SHOTS / "status-page-running.png")

    chromium.evaluate("window.noReloadMarker = 'still the same page'")
    status_reactor.call(driver.pause, name)
    try:
        chromium.wait_for("document.getElementById('state').dataset.state === 'paused'", 15)
        assert chromium.evaluate("window.noReloadMarker") == "still the same page"
        assert "Suspended" in chromium.evaluate(
            "document.querySelector('[data-field=state_text]').textContent")
        chromium.screenshot(SHOTS / "status-page-paused.png")
    finally:
        status_reactor.call(driver.resume, name)
    chromium.wait_for("document.getElementById('state').dataset.state === 'running'", 15)
    assert chromium.evaluate("window.noReloadMarker") == "still the same page"

    text = chromium.evaluate("document.documentElement.outerHTML")
    assert PASSCODE not in text and AUTHENTICATOR not in text
    assert "[hidden]" in text


def test_only_this_computer_may_read_the_page(page):
    server, _ = page
    with urllib.request.urlopen(server.url + "status.json", timeout=5) as reply:
        assert reply.status == 200
    for host in ("evil.example:80", f"evil.example:{server.port}", "127.0.0.1"):
        request = urllib.request.Request(server.url, headers={"Host": host})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 403
    # not listening on any other address of this host
    others = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    others.discard("127.0.0.1")
    for address in others - {a for a in others if a.startswith("127.")}:
        with pytest.raises(OSError):
            socket.create_connection((address, server.port), timeout=2).close()

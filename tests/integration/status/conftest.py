"""Status page integration fixtures: a real QEMU VM and a real headless Chromium.

The VM boots the session's cached appliance image (built by the same builder
call the hypervisor tests use, so both share ``.cache/appliance``) through
F's ``QemuDriver``, with no user-data disk: the appliance then boots, prints to
its console and waits for the power button, which is all the page needs.

QEMU's driver spawns its helpers on the global reactor, so the tests use it
too, in a background thread (F's ``ReactorThread``). When the hypervisor tests
of the same session already run it, it is borrowed, not started again (a
second ``run()`` would fail); teardown then works whether or not it still
runs. Every QEMU and Chromium started here is killed at the end even when a
test fails.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.integration.hypervisor.harness_qemu import require_qemu
from tests.integration.hypervisor.reactor_thread import ReactorThread
from tests.integration.status.browser import Chromium, require_chromium
from vmwrapper.appliance.builder import BuildOptions, build, default_output
from vmwrapper.hypervisor.base import VMSpec
from vmwrapper.hypervisor.qemu import QemuDriver


@pytest.fixture(scope="session")
def status_reactor():
    """The global reactor running in a thread: borrowed if already running, else started."""
    from twisted.internet import reactor

    runner = ReactorThread()
    if reactor.running:
        yield runner
        return
    runner.start()
    yield runner
    runner.stop()


@pytest.fixture(scope="session")
def appliance_image() -> Path:
    """The appliance's qcow2 (cached; built the first time, about 70 s)."""
    require_qemu()
    return build(BuildOptions(output=default_output(), formats=("qcow2",))).qcow2


@pytest.fixture(scope="session")
def running_vm(status_reactor, appliance_image, tmp_path_factory):
    """``(driver, name)`` of a running appliance VM, destroyed at the end."""
    driver = status_reactor.call(lambda: QemuDriver(status_reactor.reactor, accel="tcg"))
    vm_dir = tmp_path_factory.mktemp("status-vm") / "vm"
    spec = VMSpec(name="status-page-vm", base_image=appliance_image, vm_dir=vm_dir,
                  memory_mb=256)
    try:
        status_reactor.call(driver.create, spec)
        status_reactor.call(driver.start, spec.name, timeout=120)
        yield driver, spec.name
    finally:
        if status_reactor.reactor.running:
            try:
                status_reactor.call(driver.destroy, spec.name, timeout=30)
            finally:
                status_reactor.call(driver.kill_all)
        else:  # stopped by another fixture's teardown already: kill our QEMU directly
            pid = driver.pid(spec.name)
            if pid:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def chromium(tmp_path):
    require_chromium()
    browser = Chromium(tmp_path / "profile")
    yield browser
    browser.close()

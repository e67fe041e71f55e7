"""The vboxapi layer: chosen only when the SDK imports (it cannot here)."""

from __future__ import annotations

import pytest

from vmwrapper.hypervisor import errors, vboxapi_control
from vmwrapper.hypervisor.virtualbox import VirtualBoxDriver


def test_vboxapi_is_absent_on_this_machine_so_auto_means_vboxmanage():
    if vboxapi_control.available():
        pytest.skip("vboxapi is importable here: this host has the VirtualBox SDK")
    assert vboxapi_control.make_control("auto") is None
    assert vboxapi_control.make_control(False) is None
    with pytest.raises(errors.HypervisorNotInstalled, match="vboxapi"):
        vboxapi_control.make_control(True)


def test_driver_without_api_says_it_uses_vboxmanage():
    from twisted.internet.task import Clock

    driver = VirtualBoxDriver(Clock(), vboxmanage="/nonexistent/VBoxManage", use_api="auto")
    if vboxapi_control.available():
        pytest.skip("vboxapi is importable here")
    assert driver.api is None
    assert driver.executable is None  # not executable: reported by probe_host, not here

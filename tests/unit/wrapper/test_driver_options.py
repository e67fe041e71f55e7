"""The wrapper's hypervisor options: KVM probe files from the slot, the probe cache."""

from __future__ import annotations

import json
import os
import pathlib

import pytest
from twisted.internet import defer

from tests.integration.hypervisor.reactor_thread import ReactorThread
from vmwrapper.app import choose_driver
from vmwrapper.appliance.builder import find_built
from vmwrapper.wrapper.driveroptions import PROBE_CACHE, driver_options


def link(slot: pathlib.Path, logical_name: str, target: pathlib.Path) -> None:
    """A link file as the client writes it for an app-version file."""
    (slot / logical_name).write_text(f"<soft_link>{target}</soft_link>\n")


@pytest.fixture
def dirs(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    slot, project = tmp_path / "slot", tmp_path / "project"
    slot.mkdir()
    project.mkdir()
    return slot, project


def test_qemu_gets_the_probe_files_linked_in_the_slot_and_a_cache_in_the_project(dirs):
    slot, project = dirs
    for name in ("probe-vmlinuz", "probe-initrd"):
        (project / name).write_bytes(b"x")
        link(slot, name, project / name)
    options = driver_options("qemu", slot, str(project))
    assert options == {"probe_kernel": project / "probe-vmlinuz",
                       "probe_initrd": project / "probe-initrd",
                       "probe_cache": project / PROBE_CACHE}


def test_without_both_probe_files_qemu_is_left_to_its_environment_default(dirs):
    slot, project = dirs
    (project / "probe-vmlinuz").write_bytes(b"x")
    link(slot, "probe-vmlinuz", project / "probe-vmlinuz")
    link(slot, "probe-initrd", project / "missing")
    assert driver_options("qemu", slot, "") == {}
    assert driver_options("qemu", slot, str(project)) == {"probe_cache": project / PROBE_CACHE}


def test_other_drivers_get_no_options(dirs):
    slot, project = dirs
    assert driver_options("virtualbox", slot, str(project)) == {}


@pytest.fixture(scope="session")
def running_reactor():
    """The global reactor in a thread: borrowed if a session fixture already runs it."""
    from twisted.internet import reactor

    runner = ReactorThread()
    if reactor.running:
        yield runner
        return
    runner.start()
    yield runner
    runner.stop()


@pytest.mark.qemu
def test_real_probe_decides_once_then_comes_from_the_cache(dirs, running_reactor):
    """On this host the KVM probe boot either works or not: the verdict goes to the
    project's cache, and the next wrapper start reads it back instead of probing."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm here: QEMU decides TCG without a probe")
    built = find_built()  # unit tests never build it: the QEMU suites do (cached)
    if built is None or built.probe_kernel is None or built.probe_initrd is None:
        pytest.skip("no appliance built yet (the QEMU integration tests build it)")
    slot, project = dirs
    link(slot, "probe-vmlinuz", built.probe_kernel)
    link(slot, "probe-initrd", built.probe_initrd)

    def start_wrapper() -> defer.Deferred:
        d = defer.ensureDeferred(choose_driver(running_reactor.reactor, ("qemu",), slot,
                                               str(project)))
        return d.addCallback(lambda driver: driver._host_info.detail)

    first = running_reactor.call(start_wrapper, timeout=60)
    second = running_reactor.call(start_wrapper, timeout=10)
    assert "not probed" not in first and "no usable /dev/kvm" not in first, first
    assert not first.endswith("(cached)") and second.endswith("(cached)")
    assert len(json.loads((project / PROBE_CACHE).read_text())) == 1

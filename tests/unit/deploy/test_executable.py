"""The PyInstaller build driver: what goes in, the cache key, cache pruning (no build here)."""

from __future__ import annotations

import os

import pytest

from vmwrapper.deploy import executable


def test_host_side_modules_go_in_and_the_guest_agent_and_harness_do_not():
    modules = executable.package_modules()
    for needed in ("vmwrapper.app", "vmwrapper.job.check", "vmwrapper.deploy.cli",
                   "vmwrapper.hypervisor.qemu"):
        assert needed in modules
    assert not [m for m in modules if m.startswith("vmwrapper.testing")]
    everything = executable.package_modules(executable.PACKAGES)
    assert "vmcontroller.broker.server" in everything  # its sources are in the cache key
    assert not [m for m in everything if m.startswith(("vmcontroller.guest", "vmcontroller.copilot"))]


def test_every_subcommand_module_goes_in():
    from vmwrapper.cli import APP_ENTRY, SUBCOMMANDS

    modules = set(executable.package_modules())
    assert {module for module, _, _ in SUBCOMMANDS.values()} <= modules
    assert APP_ENTRY[0] in modules


def test_command_is_one_file_with_exclusions():
    command = executable.pyinstaller_command(executable.ROOT / "d", executable.ROOT / "w")
    assert "--onefile" in command
    excluded = {command[i + 1] for i, arg in enumerate(command) if arg == "--exclude-module"}
    assert {"vmcontroller.guest", "vmwrapper.testing", "trickle_handler", "tkinter"} <= excluded
    assert command[-1] == str(executable.ENTRY_SCRIPT)


def test_cache_key_follows_the_sources(tmp_path, monkeypatch):
    source = tmp_path / "mod.py"
    source.write_text("x = 1\n")
    monkeypatch.setattr(executable, "ROOT", tmp_path)
    monkeypatch.setattr(executable, "source_files", lambda: [source])
    first = executable.build_key()
    assert executable.build_key() == first
    source.write_text("x = 2\n")
    assert executable.build_key() != first
    assert executable.cached_executable(tmp_path / "c").parent.name == executable.build_key()


def test_a_cached_build_is_returned_without_building(tmp_path, monkeypatch):
    target = executable.cached_executable(tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"binary")

    def no_build(*args):
        raise AssertionError("must not build")

    monkeypatch.setattr(executable, "_build_into", no_build)
    assert executable.build_executable(tmp_path) == target


def test_prune_keeps_the_newest_builds_and_the_current_one(tmp_path):
    dirs = []
    for age, name in enumerate(["a", "b", "c", "d", "e"]):
        d = tmp_path / name
        d.mkdir()
        os.utime(d, (1000 - age * 10, 1000 - age * 10))  # a newest ... e oldest
        dirs.append(d)
    (tmp_path / ".e.lock").write_text("")
    removed = executable.prune_cache(tmp_path, keep=tmp_path / "e", count=3)
    assert sorted(p.name for p in removed) == ["c", "d"]
    assert sorted(os.listdir(tmp_path)) == [".e.lock", "a", "b", "e"]


def test_missing_pyinstaller_is_a_clear_error(tmp_path, monkeypatch):
    real = executable.importlib.metadata.version

    def version(name):
        if name == "pyinstaller":
            raise executable.importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(executable.importlib.metadata, "version", version)
    with pytest.raises(executable.BuildError, match="PyInstaller is not installed"):
        executable._build_into(tmp_path / "k" / "vmwrapper", log=lambda text: None)


def test_the_frozen_executable_cannot_rebuild_itself(monkeypatch):
    monkeypatch.setattr(executable.sys, "frozen", True, raising=False)
    with pytest.raises(executable.BuildError, match="needs the source tree"):
        executable.build_executable()

"""Build ``vmwrapper`` into one self-contained file with PyInstaller, cached.

Volunteers have neither Python nor Twisted, so the app version ships one
executable per BOINC platform (PyInstaller does not cross-compile: build on
each platform). Only the host side goes in: the guest agent
(``vmcontroller.guest``) ships inside the appliance image, and the test
harness, the server daemon and development tools are left out.

Builds are cached under a key made of every source file that goes in, the
Python and PyInstaller versions and the versions of the runtime
dependencies: an unchanged tree returns the previous binary at once. Each
build runs in a temporary directory and is renamed into the cache when
complete; a lock file serialises concurrent builds of the same key.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

#: The repository root (the parent of the vmwrapper package).
ROOT = pathlib.Path(__file__).resolve().parents[2]
#: Where builds are cached unless VMWRAPPER_EXE_CACHE says otherwise.
DEFAULT_CACHE = ROOT / "build" / "exe"
#: The script PyInstaller freezes: ``python -m vmwrapper``.
ENTRY_SCRIPT = ROOT / "vmwrapper" / "__main__.py"
#: Packages whose sources the cache key covers.
PACKAGES = ("vmwrapper", "vmcontroller")
#: Packages whose every module goes in (subcommands and drivers are imported by name);
#: of vmcontroller only what vmwrapper imports goes in (PyInstaller follows the imports).
HIDDEN_IMPORT_PACKAGES = ("vmwrapper",)
#: Modules the host side never needs; keeps the file small and quick to unpack.
EXCLUDED_MODULES = (
    "vmcontroller.guest",  # the guest agent: inside the appliance image
    "vmcontroller.copilot",  # Co-Pilot: its manager runs on a server, its pilot in the guest
    "vmwrapper.testing",  # the test project server and client harness
    "trickle_handler", "pymysql", "psycopg", "psycopg_binary", "sqlalchemy",  # server side
    "pytest", "_pytest", "hypothesis", "stomp", "PyInstaller", "setuptools", "pip",
    "pkg_resources", "distutils", "tkinter", "_tkinter", "idlelib", "lib2to3", "pydoc_data",
    "ensurepip", "venv", "turtledemo", "IPython",
    "readline",  # would unpack libreadline + libtinfo at every start
    "_codecs_cn", "_codecs_hk", "_codecs_jp", "_codecs_kr", "_codecs_tw", "_codecs_iso2022",
)
#: Installed distributions whose versions change what goes in.
DEPENDENCIES = ("twisted", "coilmq", "stomper", "netifaces-plus", "simplejson", "zope.interface",
                "pyinstaller")
#: The executable's name in the cache.
EXECUTABLE_NAME = "vmwrapper"


class BuildError(RuntimeError):
    """PyInstaller is missing or failed; the message carries the end of its log."""


def source_files() -> list[pathlib.Path]:
    """Every file whose content goes into the executable, sorted."""
    files = [ENTRY_SCRIPT]
    for module in package_modules(PACKAGES):
        path = ROOT / module.replace(".", "/")
        files.append(path / "__init__.py" if path.is_dir() else path.with_suffix(".py"))
    return sorted(set(files))


def _excluded(module: str) -> bool:
    return any(module == ex or module.startswith(ex + ".") for ex in EXCLUDED_MODULES)


def package_modules(packages: Sequence[str] = HIDDEN_IMPORT_PACKAGES) -> list[str]:
    """Every module of ``packages`` that goes in (PyInstaller cannot see name-based imports).

    Subcommands and hypervisor drivers are imported by name, so each module is
    listed as a hidden import, except the excluded ones.
    """
    modules = []
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(parts)
            if not _excluded(name) and parts[-1] != "__main__":
                modules.append(name)
    return sorted(modules)


def _dependency_versions() -> list[str]:
    versions = []
    for name in DEPENDENCIES:
        try:
            versions.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} absent")
    return versions


def build_key() -> str:
    """A digest of everything the build depends on (sources, options, versions)."""
    digest = hashlib.sha256()
    for line in [sys.version, *_dependency_versions(), *EXCLUDED_MODULES, *PACKAGES]:
        digest.update(line.encode() + b"\n")
    for path in source_files():
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def pyinstaller_command(dist: pathlib.Path, work: pathlib.Path) -> list[str]:
    """The PyInstaller command line for a one-file build into ``dist``."""
    command = [
        sys.executable, "-m", "PyInstaller", "--onefile", "--noconfirm", "--clean",
        "--strip",  # no debug symbols: a smaller file and less to unpack at every start
        "--name", EXECUTABLE_NAME, "--log-level", "WARN",
        "--distpath", str(dist), "--workpath", str(work), "--specpath", str(work),
        "--paths", str(ROOT),
    ]
    for module in package_modules():
        command += ["--hidden-import", module]
    for module in EXCLUDED_MODULES:
        command += ["--exclude-module", module]
    return [*command, str(ENTRY_SCRIPT)]


def cached_executable(cache_dir: pathlib.Path | None = None) -> pathlib.Path:
    """Where the executable for the current sources is (or would be) cached."""
    cache = cache_dir or pathlib.Path(os.environ.get("VMWRAPPER_EXE_CACHE", DEFAULT_CACHE))
    return cache / build_key() / EXECUTABLE_NAME


def build_executable(cache_dir: pathlib.Path | None = None,
                     log: Callable[[str], None] = print) -> pathlib.Path:
    """The standalone ``vmwrapper`` for the current sources: cached, else built now.

    :raises BuildError: PyInstaller is not installed or the build failed.
    """
    if getattr(sys, "frozen", False):
        raise BuildError("build-exe needs the source tree: run it with the Python that has "
                         "boinc-vm installed, not from the standalone executable")
    target = cached_executable(cache_dir)
    if target.is_file():
        return target
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent.parent / f".{target.parent.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another build of the same key finishes first
        if target.is_file():
            return target
        _build_into(target, log)
    prune_cache(target.parent.parent, keep=target.parent)
    return target


def prune_cache(cache: pathlib.Path, keep: pathlib.Path, count: int = 3) -> list[pathlib.Path]:
    """Delete all but the ``count`` newest builds (always keeping ``keep``); returns the removed."""
    builds = sorted(
        (d for d in cache.iterdir() if d.is_dir() and not d.name.startswith(".") and d != keep),
        key=lambda d: d.stat().st_mtime, reverse=True,
    )
    removed = builds[count - 1:]
    for old in removed:
        shutil.rmtree(old, ignore_errors=True)
    return removed


def _build_into(target: pathlib.Path, log: Callable[[str], None]) -> None:
    try:
        importlib.metadata.version("pyinstaller")
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(
            "PyInstaller is not installed: pip install 'boinc-vm[build]' "
            "(scripts/bootstrap.sh installs it with the test tools)"
        ) from None
    temp = pathlib.Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent.parent))
    try:
        log(f"building {EXECUTABLE_NAME} with PyInstaller (cache key {target.parent.name})...")
        build_log = temp / "pyinstaller.log"
        with open(build_log, "wb") as out:
            done = subprocess.run(
                pyinstaller_command(temp / "dist", temp / "work"), cwd=temp,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=False,
            )
        built = temp / "dist" / EXECUTABLE_NAME
        if done.returncode != 0 or not built.is_file():
            tail = build_log.read_text(errors="replace")[-3000:]
            raise BuildError(f"PyInstaller exited with status {done.returncode}:\n{tail}")
        final = temp / "final"
        final.mkdir()
        os.rename(built, final / EXECUTABLE_NAME)
        shutil.copyfile(build_log, final / "pyinstaller.log")
        os.rename(final, target.parent)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def main(argv: Sequence[str]) -> int:
    """``vmwrapper build-exe [--cache DIR] [--output PATH]``: print the executable's path."""
    parser = argparse.ArgumentParser(
        prog="vmwrapper build-exe",
        description="Build the standalone vmwrapper executable (cached while sources are unchanged).",
    )
    parser.add_argument("--cache", type=pathlib.Path, metavar="DIR",
                        help=f"cache directory (default $VMWRAPPER_EXE_CACHE or {DEFAULT_CACHE})")
    parser.add_argument("--output", type=pathlib.Path, metavar="PATH",
                        help="also copy the executable here")
    args = parser.parse_args(list(argv))
    try:
        path = build_executable(args.cache, log=lambda text: print(text, file=sys.stderr))
    except BuildError as exc:
        print(f"vmwrapper build-exe: {exc}", file=sys.stderr)
        return 1
    if args.output is not None:
        shutil.copy2(path, args.output)
        path = args.output
    print(path)
    return 0

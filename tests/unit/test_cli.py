"""The vmwrapper entry point: subcommands versus the BOINC application."""

import subprocess
import sys

from vmwrapper import __version__
from vmwrapper.boinc import API_VERSION


def test_version_prints_package_and_api_version():
    out = subprocess.run(
        [sys.executable, "-m", "vmwrapper", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == f"vmwrapper {__version__} (BOINC API {API_VERSION})"


def test_help_lists_usage():
    out = subprocess.run(
        [sys.executable, "-m", "vmwrapper", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "run as the BOINC application" in out

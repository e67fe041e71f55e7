"""Fixtures for the deploy tests: the standalone executable (cached build), the real client, MariaDB.

The executable is built once per source tree (vmwrapper.deploy.executable
caches it; a build takes ~15-30 s on 2 cores). Each client test runs its own
real BOINC client in a temp dir and its own project server on a free port;
both are stopped in finalizers. MariaDB databases are ``deploy_test_<pid>_<n>``
and dropped at teardown.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

from tests.conftest import ARTIFACTS
from trickle_handler.db import ConnectionLostError, MySQLDatabase, parse_database_url
from vmwrapper.deploy.executable import BuildError, build_executable
from vmwrapper.testing.client import BOINC, BoincClient

MARIADB = "mysql://root@127.0.0.1:3306"
_databases = itertools.count()


@pytest.fixture(scope="session")
def standalone_exe():
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        pytest.skip("PyInstaller is not installed (scripts/bootstrap.sh installs the test extra)")
    try:
        return build_executable(log=lambda text: print(text, file=sys.stderr))
    except BuildError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def boinc_client(request, tmp_path):
    """A real, not yet started BOINC client in its own dir; stopped (and its log kept) at the end."""
    try:
        subprocess.run([BOINC, "--version"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"the BOINC client {BOINC} cannot run ({exc}); scripts/bootstrap.sh installs it")
    client = BoincClient(tmp_path / "client")

    def stop() -> None:
        client.stop()
        if client.log_path.exists():
            client.save_log(ARTIFACTS / "deploy" / f"{request.node.name}-client.log")

    request.addfinalizer(stop)
    return client


@pytest.fixture(scope="session")
def mariadb_admin():
    admin = MySQLDatabase(parse_database_url(f"{MARIADB}/mysql"))
    try:
        admin.connect()
    except ConnectionLostError as exc:
        pytest.skip(f"MariaDB is not running on 127.0.0.1:3306 ({exc}); "
                    "scripts/bootstrap.sh --services starts it")
    yield admin
    admin.close()


@pytest.fixture
def deploy_database(mariadb_admin):
    """The URL of a fresh, empty MariaDB database (BOINC's tables come from ProjectDatabase)."""
    name = f"deploy_test_{os.getpid()}_{next(_databases)}"
    mariadb_admin.execute(f"DROP DATABASE IF EXISTS {name}")
    mariadb_admin.execute(f"CREATE DATABASE {name}")
    yield f"{MARIADB}/{name}"
    mariadb_admin.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(scope="session")
def appliance_image():
    """The appliance's qcow2 (vmwrapper.appliance's cache; built the first time, about 70 s)."""
    from tests.integration.hypervisor.harness_qemu import require_qemu
    from vmwrapper.appliance.builder import BuildOptions, build, default_output

    require_qemu()
    return build(BuildOptions(output=default_output(), formats=("qcow2",))).qcow2

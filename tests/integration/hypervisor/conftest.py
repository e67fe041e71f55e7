"""The hypervisor driver contract suite: one set of tests, every driver.

``test_contract.py`` is written against ``vmwrapper.hypervisor.base`` only and
runs once per name in ``CONTRACT_DRIVERS``, through the ``harness`` fixture.

Adding a driver (e.g. ``virtualbox``)
-------------------------------------
1. Write ``tests/integration/hypervisor/harness_<name>.py`` defining a
   session-scoped fixture named ``<name>_harness`` that returns a
   ``harness.DriverHarness``. It takes the ``reactor_thread`` fixture (the
   reactor runs in a background thread; construct the driver with
   ``reactor_thread.reactor``) and ``tmp_path_factory`` for its files. When the
   driver cannot run here it calls ``pytest.skip("... missing: WHAT")`` naming
   what is missing, never passes silently. If the module defines more fixtures
   that tests use, list them all (including ``<name>_harness``) in a module
   constant ``FIXTURES``.
2. Add ``<name>`` to ``CONTRACT_DRIVERS`` below (and its pytest markers, if
   any, to ``DRIVER_MARKS``). That is all: the module is imported by name and
   its fixture picked up here.

A name whose harness module does not exist yet is reported as skipped; one
that fails to import fails its own tests (with the traceback) but does not stop
the other drivers' tests from running.
Driver-specific tests (e.g. QEMU's KVM probe) live in their own
``test_<name>_*.py`` files and may use the same fixtures.
"""

from __future__ import annotations

import importlib
import traceback

import pytest

from tests.integration.hypervisor.harness import DriverHarness
from tests.integration.hypervisor.reactor_thread import ReactorThread

#: Drivers the contract suite runs against, in order. One line per driver.
CONTRACT_DRIVERS: list[str] = [
    "qemu",
    "virtualbox",
]
#: pytest markers per driver (e.g. ``qemu`` boots real guests; select with ``-m``).
DRIVER_MARKS: dict[str, list[pytest.MarkDecorator]] = {
    "qemu": [pytest.mark.qemu],
}

_MISSING: dict[str, str] = {}
_BROKEN: dict[str, str] = {}
for _name in CONTRACT_DRIVERS:
    try:
        _module = importlib.import_module(f"tests.integration.hypervisor.harness_{_name}")
    except ModuleNotFoundError as error:
        if error.name != f"tests.integration.hypervisor.harness_{_name}":
            _BROKEN[_name] = traceback.format_exc()
        else:
            _MISSING[_name] = f"harness_{_name}.py is not written yet"
        continue
    except Exception:  # one broken harness must not hide the other drivers' results
        _BROKEN[_name] = traceback.format_exc()
        continue
    for _fixture in getattr(_module, "FIXTURES", [f"{_name}_harness"]):
        globals()[_fixture] = getattr(_module, _fixture)


@pytest.fixture(scope="session")
def reactor_thread():
    """The reactor, running in a background thread for the whole session."""
    runner = ReactorThread()
    runner.start()
    yield runner
    runner.stop()


@pytest.fixture(scope="session", params=[
    pytest.param(name, marks=DRIVER_MARKS.get(name, []), id=name) for name in CONTRACT_DRIVERS])
def harness(request) -> DriverHarness:
    """The ``DriverHarness`` of each driver in ``CONTRACT_DRIVERS`` in turn."""
    if request.param in _MISSING:
        pytest.skip(f"{request.param} driver: {_MISSING[request.param]}")
    if request.param in _BROKEN:
        pytest.fail(f"harness_{request.param}.py does not import:\n{_BROKEN[request.param]}")
    return request.getfixturevalue(f"{request.param}_harness")

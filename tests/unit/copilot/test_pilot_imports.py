"""``python3 -m vmcontroller.copilot pilot`` runs in the appliance: stdlib + python3-twisted only."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT
from tests.unit.vmcontroller.test_guest_imports import ALLOWED

#: Everything the pilot command imports, including run_pilot's imports inside the function.
PROBE = """
import json, sys
import vmcontroller.copilot.cli, vmcontroller.copilot.service, vmcontroller.copilot.pilotconfig
import vmcontroller.copilot.dispatch, vmcontroller.copilot.pilot, vmcontroller.copilot.spec
import twisted.internet.reactor
third_party = sorted({
    name.split(".")[0] for name, module in sys.modules.items()
    if module is not None and name.split(".")[0] not in sys.stdlib_module_names
    and not name.startswith("_")
})
print(json.dumps(third_party))
"""


def test_the_pilot_command_imports_only_the_stdlib_and_twisted():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    imported = set(json.loads(out))
    assert imported <= ALLOWED, f"the pilot pulls in {sorted(imported - ALLOWED)}"
    assert {"vmcontroller", "twisted"} <= imported

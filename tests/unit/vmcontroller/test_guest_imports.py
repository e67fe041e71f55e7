"""The guest agent must run on Debian's python3 + python3-twisted alone."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import json, sys
sys.modules["simplejson"] = None  # as in the appliance: not installed
import vmcontroller.guest.__main__, vmcontroller.guest.agent
from vmcontroller.protocol import Ping, decode, encode
assert decode(encode(Ping(1)))[0] == Ping(1)
third_party = sorted({
    name.split(".")[0] for name, module in sys.modules.items()
    if module is not None and name.split(".")[0] not in sys.stdlib_module_names
    and not name.startswith("_")  # __main__, the venv's .pth import hooks
})
print(json.dumps(third_party))
"""

#: What the appliance has besides the standard library (python3-twisted and its deps).
ALLOWED = {
    "vmcontroller", "twisted", "zope", "attr", "attrs", "automat", "constantly",
    "hyperlink", "incremental", "idna", "typing_extensions", "_cffi_backend", "cryptography",
}  # fmt: skip


def test_agent_imports_only_the_stdlib_and_twisted():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    imported = set(json.loads(out))
    assert imported <= ALLOWED, f"the agent pulls in {sorted(imported - ALLOWED)}"
    assert {"vmcontroller", "twisted"} <= imported

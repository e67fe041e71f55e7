"""Session-wide test settings.

Expensive real components (the BOINC client, the appliance image, brokers)
are shared per session by fixtures in the conftest of the folder that uses them.
"""

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: Where tests leave artifacts worth keeping (logs, screenshots) after a run.
ARTIFACTS = pathlib.Path(os.environ.get("BOINCVM_ARTIFACTS", ROOT / "test-artifacts"))

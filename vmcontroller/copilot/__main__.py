"""``python3 -m vmcontroller.copilot``: the ``copilot`` command where no console script is
installed (the appliance has the package on PYTHONPATH only)."""

import sys

from vmcontroller.copilot.cli import main

sys.exit(main())

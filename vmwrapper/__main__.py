"""``python -m vmwrapper``: same as the ``vmwrapper`` command."""

import sys

from vmwrapper.cli import main

sys.exit(main())

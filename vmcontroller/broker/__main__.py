"""``python -m vmcontroller.broker``: same as ``vmcontroller broker``."""

import sys

from vmcontroller.broker.cli import main

sys.exit(main())

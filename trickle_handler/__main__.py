"""``python -m trickle_handler``: the same as the ``trickle_handler`` console script."""

import sys

from trickle_handler.cli import main

sys.exit(main())

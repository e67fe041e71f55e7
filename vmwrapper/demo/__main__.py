"""``python -m vmwrapper.demo``: what ``make demo`` runs."""

from __future__ import annotations

import sys

from vmwrapper.demo.cli import main

sys.exit(main())

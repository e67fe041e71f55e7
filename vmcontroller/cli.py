"""The ``vmcontroller``command line (filled in by its issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vmcontroller`` console script."""
    print("vmcontroller: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``trickle_handler``command line (filled in by its issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trickle_handler`` console script."""
    print("trickle_handler: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""Waiting on real processes from a test: one polling loop for every integration test.

For conditions outside any reactor (a process's output, a row in a
database, a file in a slot); logic on a reactor's clock uses ``task.Clock``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "the condition",
               interval: float = 0.1) -> Any:
    """Call ``predicate`` every ``interval`` s until it returns something truthy; return that.

    :raises TimeoutError: not within ``timeout`` seconds (the message names ``what``).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)

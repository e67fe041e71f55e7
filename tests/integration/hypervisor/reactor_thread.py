"""Run the Twisted reactor in a background thread so plain pytest tests can drive it.

The drivers are asynchronous (every method returns a Deferred); the tests are
ordinary blocking functions. ``ReactorThread.call`` runs a function in the
reactor thread and waits, with a deadline, for the Deferred it returns.

Child processes: with the reactor off the main thread Twisted cannot install
its SIGCHLD handler, so a looping call reaps exited children every 50 ms
(``twisted.internet.process.reapAllProcesses``); ``processEnded`` therefore
fires within 50 ms of a child's death, as it would with the handler.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.process import reapAllProcesses
from twisted.python.failure import Failure


class ReactorThread:
    """Owns the global reactor, running in a daemon thread, for a test session."""

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self._thread = threading.Thread(target=self._run, name="reactor", daemon=True)
        self._reaper = task.LoopingCall(reapAllProcesses)
        self._reaper.clock = reactor

    def _run(self) -> None:
        self.reactor.run(installSignalHandlers=False)

    def start(self) -> None:
        self._thread.start()
        self.call(lambda: self._reaper.start(0.05, now=True) and None)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.reactor.callFromThread(self.reactor.stop)
            self._thread.join(10)

    def call(self, function: Callable[..., Any], *args: Any, timeout: float = 60.0,
             **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` in the reactor thread; return its result.

        A returned Deferred is waited for. Raises the function's exception, or
        ``TimeoutError`` after ``timeout`` seconds (the Deferred is cancelled).
        """
        results: queue.Queue[tuple[bool, Any]] = queue.Queue()
        holder: dict[str, defer.Deferred[Any]] = {}

        def run() -> None:
            d = defer.maybeDeferred(function, *args, **kwargs)
            holder["d"] = d
            d.addCallbacks(lambda value: results.put((True, value)),
                           lambda failure: results.put((False, failure)))

        self.reactor.callFromThread(run)
        try:
            ok, value = results.get(timeout=timeout)
        except queue.Empty:
            self.reactor.callFromThread(lambda: holder["d"].cancel() if "d" in holder else None)
            raise TimeoutError(f"{getattr(function, '__qualname__', function)} took over "
                               f"{timeout} s") from None
        if ok:
            return value
        assert isinstance(value, Failure)
        value.raiseException()

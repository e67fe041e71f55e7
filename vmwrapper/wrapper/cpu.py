"""The VM's CPU time: what the client is told and what the trickles carry.

Drivers report CPU seconds "since the last start or restore" through a
Deferred, while the BOINC runtime asks for a number once a second. The meter
polls the driver every :data:`POLL_PERIOD` seconds (cheap: a ``/proc`` read
in the drivers), caches the value, and folds it into a base when the VM's
process is replaced (a restore or a second boot), so its figure only grows.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from vmwrapper.boinc.log import log

#: Seconds between two polls of the driver's CPU figure.
POLL_PERIOD = 10.0


class VMCpuMeter:
    """CPU seconds of the VM during this run of the wrapper (all its VM processes).

    :param driver: a ``HypervisorDriver``.
    :param name: the VM's name.
    """

    def __init__(self, driver: Any, name: str) -> None:
        self.driver = driver
        self.name = name
        self._base = 0.0
        self._current = 0.0
        self._polling: defer.Deferred[float] | None = None
        self._error_logged = False

    def episode_seconds(self) -> float:
        """CPU seconds the VM used since this wrapper started (cached value)."""
        return self._base + self._current

    def poll(self) -> defer.Deferred[float]:
        """Ask the driver now; fires with :meth:`episode_seconds` (never fails)."""
        polling = self._polling
        if polling is None:
            polling = self._polling = defer.maybeDeferred(self.driver.cpu_time, self.name)
            polling.addCallbacks(self._got, self._failed)
            polling.addBoth(self._done)
        return self._chain(polling)

    def new_process(self) -> None:
        """The VM's process is about to be replaced: keep what the old one used."""
        self._base += self._current
        self._current = 0.0

    def _chain(self, polling: defer.Deferred[float]) -> defer.Deferred[float]:
        result: defer.Deferred[float] = defer.Deferred()
        polling.addBoth(lambda value: (result.callback(self.episode_seconds()), value)[1])
        return result

    def _got(self, value: float) -> float:
        self._error_logged = False
        if value >= self._current:
            self._current = float(value)
        return value

    def _failed(self, failure: Any) -> None:
        if not self._error_logged:
            log(f"cannot read the VM's CPU time: {failure.getErrorMessage()}")
            self._error_logged = True
        return None

    def _done(self, value: Any) -> Any:
        self._polling = None
        return value

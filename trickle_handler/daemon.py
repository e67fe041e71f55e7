"""The daemon's main loop, driven by a Twisted reactor so tests can drive it with a ``Clock``.

One step = one batch (one transaction). Between steps the loop checks the stop triggers: a stop
request (SIGHUP from ``bin/stop``, SIGTERM, SIGINT, wired up by the CLI) or the project's
``stop_daemons`` file. A batch in progress always runs to its commit, so a stop takes effect within
one batch and never leaves half a batch behind (the database would roll it back anyway).

When the queue is empty the loop sleeps ``--sleep`` seconds, looking at the stop triggers every
second like BOINC's ``daemon_sleep``; with ``--one_pass`` it exits 0 instead. Lost connections are
retried with exponential backoff (1 s doubling to 60 s); a batch rolled back by a lock conflict is
run again after a short backoff (50 ms doubling to 2 s).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from trickle_handler import schema
from trickle_handler.batch import BatchHandler, BatchStats
from trickle_handler.boinclog import BoincLog
from trickle_handler.db import ConnectionLostError, RetryableError

#: Exit statuses.
EXIT_OK = 0
EXIT_FATAL = 1

#: Seconds between re-reads of the host speed percentiles (BOINC reads them once, at start).
PERCENTILE_REFRESH = 3600.0


class Backoff:
    """Exponential delays: ``first``, doubling, at most ``cap``; :meth:`reset` after a success."""

    def __init__(self, first: float = 1.0, cap: float = 60.0) -> None:
        self.first, self.cap = first, cap
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.first * 2**self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class Daemon:
    """Runs :class:`~trickle_handler.batch.BatchHandler` batches until told to stop.

    :param reactor: provides ``callLater`` and ``seconds`` (a ``task.Clock`` in tests).
    :param handler: handles batches; its database is connected (and reconnected) here.
    :param stop_file: the project's ``stop_daemons`` path, or None.
    :param create_tables: create missing tables after the first connect (``--create_tables``).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        handler: BatchHandler,
        log: BoincLog,
        sleep: float = 5.0,
        one_pass: bool = False,
        stop_file: Path | None = None,
        create_tables: bool = False,
    ) -> None:
        self.reactor = reactor
        self.handler = handler
        self.log = log
        self.sleep = sleep
        self.one_pass = one_pass
        self.stop_file = stop_file
        self.create_tables = create_tables
        self.connect_backoff = Backoff(1.0, 60.0)
        self.retry_backoff = Backoff(0.05, 2.0)
        self.totals = BatchStats()
        self.batches = 0
        self._stop_reason: str | None = None
        self._pending: IDelayedCall | None = None
        self._done: Deferred[int] | None = None
        self._percentiles_at: float | None = None
        self._warned_fallback = False

    # -- control --
    def run(self) -> Deferred[int]:
        """Start the loop; the Deferred fires with the exit status."""
        self._done = Deferred()
        self._schedule(0, self._connect)
        return self._done

    def stop(self, why: str) -> None:
        """Ask the loop to stop after the batch in progress (signal handlers call this)."""
        if self._stop_reason is None:
            self._stop_reason = why
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
            self._pending = None
            self._schedule(0, self._step)

    # -- steps --
    def _schedule(self, delay: float, func: Callable[[], None]) -> None:
        self._pending = self.reactor.callLater(delay, func)

    def _finish(self, status: int, text: str) -> None:
        self._pending = None
        self.handler.db.close()
        t = self.totals
        self.log.normal(
            f"{text}; {t.messages} messages in {self.batches} batches,"
            f" {t.credited} credited ({t.credit:.6f} credits), {t.rejected} rejected"
        )
        if self._done is not None:
            done, self._done = self._done, None
            done.callback(status)

    def _should_stop(self) -> bool:
        if self._stop_reason is None and self.stop_file is not None and self.stop_file.exists():
            self._stop_reason = f"found {self.stop_file}"
        return self._stop_reason is not None

    def _connect(self) -> None:
        self._pending = None
        if self._should_stop():
            self._finish(EXIT_OK, f"stopping ({self._stop_reason})")
            return
        db = self.handler.db
        try:
            db.connect()
            if self.create_tables:
                created = schema.create_tables(db)
                self.create_tables = False
                self.log.normal(
                    f"created tables: {', '.join(created)}" if created else "tables present"
                )
        except ConnectionLostError as exc:
            delay = self.connect_backoff.next_delay()
            self.log.critical(f"can't connect to {db.url.redacted()}: {exc}; retry in {delay:g}s")
            self._schedule(delay, self._connect)
            return
        self.connect_backoff.reset()
        self.log.normal(f"connected to {db.url.redacted()}")
        self._percentiles_at = None
        self._schedule(0, self._step)

    def _refresh_percentiles(self) -> None:
        now = self.reactor.seconds()
        if self._percentiles_at is not None and now - self._percentiles_at < PERCENTILE_REFRESH:
            return
        p = self.handler.refresh_percentiles()
        self._percentiles_at = now
        if p.active:
            self.log.normal(
                f"host speed clamp: median {p.p50:.4g}, 95th percentile {p.p95:.4g} FLOPS"
                f" ({p.hosts} hosts with recent credit)"
            )
        elif not self._warned_fallback:
            self._warned_fallback = True
            self.log.normal(
                f"percentile clamp not yet active: {p.hosts} hosts with recent credit"
                f" (< 10); using each host's p_fpops, 1e9 if unknown,"
                f" at most {self.handler.policy.max_fpops:g}"
            )

    def _step(self) -> None:
        self._pending = None
        if self._should_stop():
            self._finish(EXIT_OK, f"stopping ({self._stop_reason})")
            return
        started = self.reactor.seconds()
        try:
            self._refresh_percentiles()
            stats = self.handler.run_batch()
        except RetryableError as exc:
            delay = self.retry_backoff.next_delay()
            self.log.warning(f"batch rolled back ({exc}); retrying in {delay:g}s")
            self._schedule(delay, self._step)
            return
        except ConnectionLostError as exc:
            self.handler.db.close()
            delay = self.connect_backoff.next_delay()
            self.log.critical(f"lost the database connection ({exc}); reconnect in {delay:g}s")
            self._schedule(delay, self._connect)
            return
        except Exception as exc:  # noqa: BLE001 - a broken schema or a bug: report and exit
            self.log.critical(f"giving up: {type(exc).__name__}: {exc}")
            self._finish(EXIT_FATAL, "stopped by an error")
            return
        self.retry_backoff.reset()
        if stats.messages:
            self._account(stats, self.reactor.seconds() - started)
            self._schedule(0, self._step)
        elif self.one_pass:
            self._finish(EXIT_OK, "--one_pass: queue empty")
        else:
            self._idle(self.sleep)

    def _idle(self, remaining: float) -> None:
        """Sleep ``remaining`` seconds in steps of at most one, watching the stop triggers."""
        self._pending = None
        if remaining <= 0 or self._should_stop():
            self._step()
            return
        tick = min(1.0, remaining)
        self._schedule(tick, lambda: self._idle(remaining - tick))

    def _account(self, stats: BatchStats, elapsed: float) -> None:
        self.batches += 1
        t = self.totals
        t.messages += stats.messages
        t.credited += stats.credited
        t.rejected += stats.rejected
        t.seconds += stats.seconds
        t.credit += stats.credit
        t.reasons.update(stats.reasons)
        reasons = ", ".join(f"{code} {n}" for code, n in sorted(stats.reasons.items()))
        self.log.normal(
            f"batch: {stats.messages} messages, {stats.credited} credited"
            f" ({stats.seconds:.0f} CPU s, {stats.credit:.6f} credits), {stats.rejected} rejected"
            + (f" [{reasons}]" if reasons else "")
            + f", {elapsed:.3f}s"
        )

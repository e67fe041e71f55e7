"""Where the job manager's store work runs: inline on the reactor, or in one worker thread.

A MariaDB or PostgreSQL call waits on a socket and on the server's commit
(a few milliseconds each), and a job needs several; made from the reactor
thread, every one of them would stop the manager from reading broker frames
and HTTP requests meanwhile.  :class:`ThreadExecutor` runs them in *one*
worker thread per store connection: a DB-API connection must not be used
by two threads at once, and one thread keeps the calls in the order they
were made (a pilot's accept, heartbeats and done stay in order, and each
compare-and-set loop runs whole).  Results come back to the reactor thread
as Deferreds; callbacks the manager makes from the worker (work available,
lease lost) are handed to the reactor with :meth:`to_reactor`.

SQLite answers from the process's own memory and page cache (tens of
microseconds), less than the hand-over to a thread and back costs, so it
runs inline (:class:`InlineExecutor`, whose Deferreds have fired when
``call`` returns); ``copilot serve --store-thread on`` forces the thread.
"""

# -*- test-case-name: tests.unit.copilot.test_executor -*-

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

__all__ = ["Executor", "InlineExecutor", "ThreadExecutor", "executor_for"]


class Executor(Protocol):
    """Runs the manager's blocking work; see the module doc."""

    threaded: bool

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        """Run ``function(*args, **kwargs)`` where store calls belong; its result as a Deferred."""

    def to_reactor(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` in the reactor thread (from inside a ``call``)."""

    def stop(self) -> None:
        """Finish the work in hand and stop taking more."""


class InlineExecutor:
    """Everything in the caller's (the reactor's) thread, at once."""

    threaded = False

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        return defer.maybeDeferred(function, *args, **kwargs)

    def to_reactor(self, function: Callable[..., Any], *args: Any) -> None:
        function(*args)

    def stop(self) -> None:
        pass


class ThreadExecutor:
    """One worker thread, calls run one at a time in the order they were made."""

    threaded = True

    def __init__(self, reactor: Any, name: str = "copilot-store") -> None:
        self.reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=name)
        self._pool.start()

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self._pool, function, *args, **kwargs)

    def to_reactor(self, function: Callable[..., Any], *args: Any) -> None:
        self.reactor.callFromThread(function, *args)

    def stop(self) -> None:
        """Wait for the call in hand (and those queued), then end the thread."""
        self._pool.stop()


def executor_for(blocking_store: bool, reactor: Any, choice: str = "auto") -> Executor:
    """The executor for a store: ``choice`` ``on``/``off`` forces it, ``auto`` follows
    ``blocking_store`` (True for network databases)."""
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"store thread {choice!r}: use auto, on or off")
    if choice == "on" or (choice == "auto" and blocking_store):
        return ThreadExecutor(reactor)
    return InlineExecutor()

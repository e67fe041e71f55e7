"""The manager's executors: inline, and one worker thread on a real (private) reactor."""

from __future__ import annotations

import threading

import pytest
from twisted.internet import defer
from twisted.internet.epollreactor import EPollReactor

from vmcontroller.copilot.executor import InlineExecutor, ThreadExecutor, executor_for


def _run(reactor: EPollReactor, work) -> object:
    """Run ``work()`` (a Deferred) on a private reactor until it fires; its result."""
    outcome: list = []

    def start() -> None:
        done = defer.maybeDeferred(work)
        done.addBoth(outcome.append)
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    if hasattr(outcome[0], "raiseException"):
        outcome[0].raiseException()
    return outcome[0]


def test_inline_runs_at_once_in_the_callers_thread():
    executor = InlineExecutor()
    done = executor.call(threading.get_ident)
    assert done.called and done.result == threading.get_ident()
    seen = []
    executor.to_reactor(seen.append, 1)
    assert seen == [1]


def test_the_thread_runs_calls_in_order_off_the_reactor_and_answers_on_it():
    reactor = EPollReactor()
    executor = ThreadExecutor(reactor)
    order: list[int] = []
    threads_seen: set[int] = set()
    callbacks_in: set[int] = set()
    main = threading.get_ident()

    def step(n: int) -> int:
        threads_seen.add(threading.get_ident())
        order.append(n)
        executor.to_reactor(lambda: callbacks_in.add(threading.get_ident()))
        return n

    def work() -> defer.Deferred:
        calls = [executor.call(step, n) for n in range(50)]
        for call in calls:
            call.addCallback(lambda n: (callbacks_in.add(threading.get_ident()), n)[1])
        return defer.gatherResults(calls)

    try:
        assert _run(reactor, work) == list(range(50))
    finally:
        executor.stop()
    assert order == list(range(50))
    assert len(threads_seen) == 1 and main not in threads_seen  # one worker, not the reactor
    assert callbacks_in == {main}  # results and to_reactor calls come back to the reactor


def test_an_exception_in_the_thread_fails_the_deferred():
    reactor = EPollReactor()
    executor = ThreadExecutor(reactor)
    try:
        with pytest.raises(ZeroDivisionError):
            _run(reactor, lambda: executor.call(lambda: 1 / 0))
    finally:
        executor.stop()


def test_choice():
    assert not executor_for(False, None).threaded
    assert not executor_for(True, None, "off").threaded
    with pytest.raises(ValueError):
        executor_for(True, None, "sometimes")
    reactor = EPollReactor()
    for blocking, choice in ((True, "auto"), (False, "on")):
        executor = executor_for(blocking, reactor, choice)
        assert executor.threaded
        executor.stop()

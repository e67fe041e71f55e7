"""The running wrapper seen from outside: the status page's provider and the final summary.

:class:`WrapperView` reads only the wrapper's and the runtime's public state
(``phase``, ``suspended``, ``cumulative_cpu()``, ``trickles.sent``,
``state.logins``, ``runtime.fraction_done``, ``runtime.checkpoint_cpu_time``),
so the wrapper needs no code for the page. Checkpoints are counted as changes
of ``checkpoint_cpu_time`` (each checkpoint sets it), unless the wrapper
offers a ``checkpoints`` count itself; ``current_task`` (a name) and
``task_fraction`` are used when the wrapper has them.

:func:`start_status_page` is the wiring: it tees the guest output into the
page's tail, starts the server, gives the client its URL, and returns the view
(whose :meth:`WrapperView.summary` writes the final stderr.txt lines).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.error import CannotListenError

from vmwrapper.boinc.log import log as default_log
from vmwrapper.diagnostics.summary import RunSummary
from vmwrapper.status.model import GuestOutputTail, StatusSnapshot
from vmwrapper.status.secrets import SecretFilter
from vmwrapper.status.server import StatusServer

#: Wrapper phases (``Wrapper.phase``) -> page states. Judgement calls: copying
#: files in and out happens while the VM runs, so it shows as running.
PHASE_STATES: dict[str, str] = {
    "starting": "starting",
    "booting": "booting",
    "restoring": "restoring",
    "copying in": "running",
    "running tasks": "running",
    "copying out": "running",
    "finishing": "finished",
}


class WrapperView:
    """Snapshots of a running wrapper.

    :param wrapper: the :class:`~vmwrapper.wrapper.machine.Wrapper`.
    :param runtime: its BOINC runtime.
    :param hypervisor: one line naming the hypervisor (``"qemu 7.2.22, KVM"``).
    :param tail: the guest output tail shown (fed by :meth:`GuestOutputTail.tee`).
    """

    def __init__(self, wrapper: Any, runtime: Any, hypervisor: str = "",
                 tail: GuestOutputTail | None = None) -> None:
        self.wrapper = wrapper
        self.runtime = runtime
        self.hypervisor = hypervisor
        self.tail = tail or GuestOutputTail()
        self.secrets = SecretFilter([getattr(runtime.init_data, "authenticator", "")])
        self._seen_checkpoint_cpu = float(getattr(runtime, "checkpoint_cpu_time", 0.0) or 0.0)
        self._counted_checkpoints = 0
        #: the page's server once :func:`start_status_page` started it
        self.server: StatusServer | None = None

    def checkpoints(self) -> int:
        """Checkpoints written in this run."""
        own = getattr(self.wrapper, "checkpoints", None)
        if isinstance(own, int):
            return own
        current = float(getattr(self.runtime, "checkpoint_cpu_time", 0.0) or 0.0)
        if current != self._seen_checkpoint_cpu:
            self._seen_checkpoint_cpu = current
            self._counted_checkpoints += 1
        return self._counted_checkpoints

    def snapshot(self) -> StatusSnapshot:
        """The page's provider: the wrapper's state now."""
        wrapper = self.wrapper
        for _login, passcode in getattr(wrapper.state, "logins", {}).values():
            self.secrets.add(passcode)
        phase = getattr(wrapper, "phase", "starting")
        state = "paused" if getattr(wrapper, "suspended", False) else PHASE_STATES.get(phase,
                                                                                      "running")
        sent = list(getattr(wrapper.trickles, "sent", []))
        checkpoints = self.checkpoints()
        last = float(getattr(self.runtime, "checkpoint_cpu_time", 0.0) or 0.0)
        task_fraction = getattr(wrapper, "task_fraction", None)
        return StatusSnapshot(
            vm_state=state,
            task=str(getattr(wrapper, "current_task", "") or phase),
            task_progress=_fraction(task_fraction) if task_fraction is not None else None,
            fraction_done=_fraction(getattr(self.runtime, "fraction_done", 0.0)),
            cpu_time=max(float(wrapper.cumulative_cpu()), 0.0),
            checkpoints=checkpoints,
            last_checkpoint_cpu=last if checkpoints or last > 0 else None,
            trickles_sent=len(sent),
            cpu_reported=float(sent[-1]) if sent else 0.0,
            guest_output=self.tail.snapshot(),
            hypervisor=self.hypervisor,
        )

    def summary(self, exit_reason: str) -> RunSummary:
        """The final summary of this run (write it with ``.write()`` just before exiting)."""
        sent = list(getattr(self.wrapper.trickles, "sent", []))
        checkpoints = self.checkpoints()
        last = float(getattr(self.runtime, "checkpoint_cpu_time", 0.0) or 0.0)
        return RunSummary(exit_reason=exit_reason, cpu_time=max(self.wrapper.cumulative_cpu(), 0.0),
                          checkpoints=checkpoints,
                          last_checkpoint_cpu=last if checkpoints or last > 0 else None,
                          trickles_sent=len(sent), cpu_reported=float(sent[-1]) if sent else 0.0)


def _fraction(value: Any) -> float:
    return min(max(float(value), 0.0), 1.0)


def start_status_page(reactor: Any, runtime: Any, wrapper: Any, hypervisor: str = "",
                      log: Callable[[str], None] = default_log) -> WrapperView:
    """Serve the status page of *wrapper* and tell the client its URL; call before ``run()``.

    A port that cannot be opened is logged and the job runs without a page.
    :returns: the view (for :meth:`WrapperView.summary` at the end).
    """
    from vmwrapper.wrapper.output import CappedOutput  # noqa: PLC0415 - keeps imports light

    tail = GuestOutputTail()
    old = wrapper.output
    wrapper.output = CappedOutput(tail.tee(log), cap=old.cap)
    view = WrapperView(wrapper, runtime, hypervisor, tail)
    server = StatusServer(view.snapshot, reactor, secrets=view.secrets, log=log)
    try:
        url = server.start()
    except CannotListenError as error:
        log(f"status page: cannot listen on 127.0.0.1 ({error}); running without it")
        return view
    runtime.set_web_graphics_url(url)
    log(f"status page: {url}")
    view.server = server
    return view

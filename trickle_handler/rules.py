"""The credit rules for one message, given the rows it refers to (no database, no clock).

``../shared/credit_rules.md`` section 8, in the order the checks run:

1. the message's host, the named result, and that the result belongs to that host and is running
   (or was reported no longer than ``report_grace`` before the message was stored);
2. what is new: for ``<cpu_time>`` (cumulative) the value minus what this result was credited so
   far; for ``<runtime>`` (an increment) the value, once per (result, client ``<time>``);
3. the caps: wall time on the server's clock since the previous credited trickle of the result (or
   since it was sent) times the host's CPU count, and ``max_runtime`` per message;
4. the speed: ``p_fpops`` through :func:`~trickle_handler.credit.effective_flops`.

:func:`assess` updates the batch's in-memory :class:`ResultCredit` so several messages of one
result in one batch see each other; the caller writes everything in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trickle_handler import credit
from trickle_handler.messages import Trickle
from trickle_handler.reasons import Reason, RejectedMessage

#: result.server_state values (BOINC's db/boinc_db_types.h).
RESULT_SERVER_STATE_INACTIVE = 1
RESULT_SERVER_STATE_UNSENT = 2
RESULT_SERVER_STATE_IN_PROGRESS = 4
RESULT_SERVER_STATE_OVER = 5

#: Default of ``--report_grace``: the final trickle arrives in the RPC that reports the result.
DEFAULT_REPORT_GRACE = 3600
#: Default of ``--max_runtime``: an hour of CPU per message, a typical trickle period.
DEFAULT_MAX_RUNTIME = 3600.0


@dataclass(frozen=True)
class Message:
    """One ``msg_from_host`` row."""

    id: int
    create_time: int  # server clock at insert
    hostid: int  # authenticated by the scheduler
    xml: str | None


@dataclass(frozen=True)
class ResultRow:
    """The ``result`` columns the rules read."""

    id: int
    name: str
    hostid: int
    server_state: int
    outcome: int
    sent_time: int
    received_time: int


@dataclass(frozen=True)
class HostRow:
    """The ``host`` columns the rules read."""

    id: int
    userid: int
    p_ncpus: int
    p_fpops: float


@dataclass
class ResultCredit:
    """What has been credited from trickles for one result (our ``trickle_result_state`` row)."""

    resultid: int
    hostid: int
    credited_cpu: float = 0.0  # CPU seconds credited so far
    last_credit_time: int = 0  # server time of the last credited trickle, 0 = none yet
    granted_credit: float = 0.0  # cobblestones granted so far
    ntrickles: int = 0  # credited trickles
    runtime_times: set[float] = field(default_factory=set)  # client <time>s of <runtime> seen
    new_runtime: list[tuple[float, int]] = field(default_factory=list)  # (client time, msg id)
    dirty: bool = False


@dataclass(frozen=True)
class Policy:
    """The operator's limits (``--max_runtime``, ``--max_fpops``, ``--report_grace``)."""

    max_runtime: float = DEFAULT_MAX_RUNTIME
    max_fpops: float = credit.DEFAULT_MAX_FPOPS
    report_grace: int = DEFAULT_REPORT_GRACE


@dataclass(frozen=True)
class Grant:
    """Credit for one message: the CPU seconds and speed it was computed from, and any notes."""

    seconds: float
    flops: float
    credit: float
    notes: tuple[Reason, ...] = ()


def check_result(msg: Message, result: ResultRow | None, policy: Policy) -> ResultRow:
    """The result if ``msg``'s host may earn trickle credit for it now, else a rejection."""
    if result is None:
        raise RejectedMessage(Reason.UNKNOWN_RESULT)
    if result.hostid != msg.hostid:
        raise RejectedMessage(
            Reason.FOREIGN_RESULT, f"result {result.id} belongs to host {result.hostid}"
        )
    state = result.server_state
    if state == RESULT_SERVER_STATE_OVER:
        if result.received_time <= 0:
            raise RejectedMessage(Reason.RESULT_OVER, f"outcome {result.outcome}, never reported")
        if msg.create_time > result.received_time + policy.report_grace:
            raise RejectedMessage(
                Reason.RESULT_REPORTED,
                f"stored {msg.create_time - result.received_time}s after the report",
            )
    elif state != RESULT_SERVER_STATE_IN_PROGRESS:
        raise RejectedMessage(Reason.RESULT_NOT_SENT, f"server_state {state}")
    if msg.create_time < result.sent_time:
        raise RejectedMessage(Reason.BEFORE_SENT, "stored before the result was sent")
    return result


def new_seconds(trickle: Trickle, msg: Message, state: ResultCredit) -> float:
    """CPU seconds ``trickle`` claims beyond what its result was already credited (> 0)."""
    if trickle.kind == "cpu_time":
        delta = trickle.value - state.credited_cpu
        if delta == 0:
            raise RejectedMessage(Reason.REPLAYED_CPU_TIME, f"{trickle.value:f} already credited")
        if delta < 0:
            raise RejectedMessage(
                Reason.CPU_TIME_REGRESSION,
                f"{trickle.value:f} < {state.credited_cpu:f} already credited",
            )
        return delta
    if trickle.client_time in state.runtime_times:
        raise RejectedMessage(
            Reason.DUPLICATE_RUNTIME, f"<time> {trickle.client_time:.0f} already handled"
        )
    state.runtime_times.add(trickle.client_time)
    state.new_runtime.append((trickle.client_time, msg.id))
    state.dirty = True
    return trickle.value


def assess(
    msg: Message,
    trickle: Trickle,
    result: ResultRow,
    host: HostRow,
    state: ResultCredit,
    percentiles: credit.SpeedPercentiles,
    policy: Policy,
) -> Grant:
    """Credit for one message whose result passed :func:`check_result`; updates ``state``.

    Raises :class:`RejectedMessage` when nothing can be credited.
    """
    claimed = new_seconds(trickle, msg, state)
    since = state.last_credit_time or result.sent_time
    wall_cap = credit.wall_time_cap(msg.create_time, since, host.p_ncpus)
    capped = credit.cap_seconds(claimed, wall_cap, policy.max_runtime)
    if capped.seconds <= 0:
        raise RejectedMessage(
            Reason.NO_WALL_TIME, f"no server time since {since} for {claimed:f}s claimed"
        )
    flops = credit.effective_flops(host.p_fpops, percentiles, policy.max_fpops)
    granted = credit.cobblestones(capped.seconds, flops)
    state.credited_cpu += capped.seconds
    state.last_credit_time = max(state.last_credit_time, msg.create_time)
    state.granted_credit += granted
    state.ntrickles += 1
    state.dirty = True
    notes: tuple[Reason, ...] = ()
    if capped.cap == "wall_time":
        notes = (Reason.CAPPED_WALL_TIME,)
    elif capped.cap == "max_runtime":
        notes = (Reason.CAPPED_MAX_RUNTIME,)
    return Grant(capped.seconds, flops, granted, notes)

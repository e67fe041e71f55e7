"""The per-message credit rules of credit_rules.md section 8, without a database."""

from __future__ import annotations

import pytest

from trickle_handler.credit import NO_PERCENTILES, SpeedPercentiles, cobblestones
from trickle_handler.messages import Trickle
from trickle_handler.reasons import Reason, RejectedMessage
from trickle_handler.rules import (
    RESULT_SERVER_STATE_IN_PROGRESS,
    RESULT_SERVER_STATE_OVER,
    RESULT_SERVER_STATE_UNSENT,
    HostRow,
    Message,
    Policy,
    ResultCredit,
    ResultRow,
    assess,
    check_result,
)

SENT = 1_700_000_000
HOST = HostRow(id=7, userid=3, p_ncpus=2, p_fpops=2e9)
RESULT = ResultRow(11, "wu_0", 7, RESULT_SERVER_STATE_IN_PROGRESS, 0, SENT, 0)
POLICY = Policy(max_runtime=3600, max_fpops=1e10, report_grace=3600)


def msg(at: int, msgid: int = 1, hostid: int = 7) -> Message:
    return Message(msgid, SENT + at, hostid, None)


def cpu(value: float, t: float = 0) -> Trickle:
    return Trickle("wu_0", t, "cpu_time", value)


def run(m, trickle, state, policy=POLICY, percentiles=NO_PERCENTILES, host=HOST):
    return assess(m, trickle, RESULT, host, state, percentiles, policy)


def reason_of(func, *args):
    with pytest.raises(RejectedMessage) as caught:
        func(*args)
    return caught.value.reason


def test_cumulative_cpu_time_credits_only_the_new_part():
    state = ResultCredit(11, 7)
    g1 = run(msg(3600), cpu(3000), state)
    assert (g1.seconds, g1.flops, g1.credit) == (3000, 2e9, cobblestones(3000, 2e9))
    g2 = run(msg(7200, 2), cpu(5000), state)
    assert g2.seconds == 2000
    assert (state.credited_cpu, state.last_credit_time, state.ntrickles) == (5000, SENT + 7200, 2)
    assert state.granted_credit == pytest.approx(cobblestones(5000, 2e9))


def test_resend_and_regression_credit_nothing():
    state = ResultCredit(11, 7)
    run(msg(3600), cpu(3000), state)
    assert reason_of(run, msg(4000, 2), cpu(3000), state) is Reason.REPLAYED_CPU_TIME
    assert reason_of(run, msg(4000, 3), cpu(2500), state) is Reason.CPU_TIME_REGRESSION
    assert state.credited_cpu == 3000


def test_wall_time_cap_uses_server_clock_and_cpu_count_and_keeps_the_remainder():
    state = ResultCredit(11, 7)
    # 1000 s after sending, a 2-CPU host can have used 2000 CPU s, not 3000.
    g = run(msg(1000), cpu(3000), state)
    assert (g.seconds, g.notes) == (2000, (Reason.CAPPED_WALL_TIME,))
    # The resend 400 s later earns the remainder the wall time now allows (800 s).
    g = run(msg(1400, 2), cpu(3000), state)
    assert g.seconds == 800
    assert reason_of(run, msg(1400, 3), cpu(3000), state) is Reason.NO_WALL_TIME


def test_max_runtime_caps_one_message():
    state = ResultCredit(11, 7)
    g = run(msg(86400), cpu(1e300), state)
    assert (g.seconds, g.notes) == (3600, (Reason.CAPPED_MAX_RUNTIME,))


def test_runtime_is_an_increment_credited_once_per_client_time():
    state = ResultCredit(11, 7)
    rt = Trickle("wu_0", 123.0, "runtime", 600)
    assert run(msg(3600), rt, state).seconds == 600
    assert reason_of(run, msg(7200, 2), rt, state) is Reason.DUPLICATE_RUNTIME
    assert run(msg(7200, 3), Trickle("wu_0", 124.0, "runtime", 600), state).seconds == 600
    assert state.new_runtime == [(123.0, 1), (124.0, 3)]


def test_percentile_clamp_applies_to_fast_hosts():
    fast = HostRow(7, 3, 2, 9e9)
    state = ResultCredit(11, 7)
    g = run(msg(3600), cpu(3600), state, percentiles=SpeedPercentiles(2e9, 4e9, 50), host=fast)
    assert g.flops == 4e9


@pytest.mark.parametrize(
    ("result", "at", "reason"),
    [
        (None, 10, Reason.UNKNOWN_RESULT),
        (
            ResultRow(11, "wu_0", 8, RESULT_SERVER_STATE_IN_PROGRESS, 0, SENT, 0),
            10,
            Reason.FOREIGN_RESULT,
        ),
        (
            ResultRow(11, "wu_0", 7, RESULT_SERVER_STATE_UNSENT, 0, SENT, 0),
            10,
            Reason.RESULT_NOT_SENT,
        ),
        (
            ResultRow(11, "wu_0", 7, RESULT_SERVER_STATE_OVER, 1, SENT, SENT + 100),
            3701,
            Reason.RESULT_REPORTED,
        ),
        (ResultRow(11, "wu_0", 7, RESULT_SERVER_STATE_OVER, 4, SENT, 0), 10, Reason.RESULT_OVER),
        (RESULT, -5, Reason.BEFORE_SENT),
    ],
)
def test_result_checks(result, at, reason):
    assert reason_of(check_result, msg(at), result, POLICY) is reason


def test_trickle_stored_within_report_grace_is_still_credited():
    reported = ResultRow(11, "wu_0", 7, RESULT_SERVER_STATE_OVER, 1, SENT, SENT + 100)
    assert check_result(msg(3700), reported, POLICY) is reported

"""Credit arithmetic against hand-computed values (credit_rules.md sections 4, 6.1 and 6.3)."""

from __future__ import annotations

import math

import pytest

from trickle_handler.credit import (
    CREDIT_HALF_LIFE,
    NO_PERCENTILES,
    Average,
    SpeedPercentiles,
    cap_seconds,
    cobblestones,
    effective_flops,
    grant_average,
    percentile,
    speed_percentiles,
    update_average,
    wall_time_cap,
)

T0 = 1e9
DAY = 86400.0


@pytest.mark.parametrize(
    ("seconds", "flops", "expected"),
    [
        (86400, 1e9, 200.0),  # a day of a 1 GFLOPS core: the definition of 200 cobblestones
        (3600, 1e9, 8.333333333333334),
        (3600, 3e9, 25.0),
        (0, 3e9, 0.0),
    ],
)
def test_cobblestones_match_boinc_bit_for_bit(seconds, flops, expected):
    assert cobblestones(seconds, flops) == expected


def test_test_vector_of_section_6_3():
    grant = cobblestones(3600, 1e9)
    avg = grant_average(T0, grant, Average(0.0, 0.0))
    assert avg == Average(8.333333333333334, T0)  # a first credit c gives RAC c
    avg = grant_average(T0 + 3600, grant, avg)
    assert avg.credit == 9.122497132159669
    avg = update_average(T0 + 3600 + 7 * DAY, 0, 0, avg)
    assert avg.credit == 4.5612485660798345
    assert grant + grant == 16.666666666666668


def test_idle_average_halves_every_week():
    avg = Average(1000.0, T0)
    for week in range(1, 9):
        avg = update_average(T0 + week * 7 * DAY, 0, 0, avg)
        assert avg.credit == pytest.approx(1000.0 / 2**week, rel=1e-12)
        assert avg.time == T0 + week * 7 * DAY


def test_steady_daily_credit_converges_to_the_daily_amount():
    # 100 credits granted once a day for 20 simulated weeks: RAC tends to 100/day.
    avg = Average(0.0, 0.0)
    for day in range(140):
        avg = grant_average(T0 + day * DAY, 100.0, avg)
    assert avg.credit == pytest.approx(100.0, rel=0.01)


def test_average_by_hand_after_one_day():
    # From 50/day at T0, a grant of 80 one day later: w = 2**(-1/7).
    w = 2 ** (-1 / 7)
    expected = 50 * w + (1 - w) * 80 / 1.0
    assert update_average(T0 + DAY, T0, 80, Average(50.0, T0)).credit == pytest.approx(
        expected, rel=1e-15
    )


def test_grants_in_the_same_second_add_at_the_long_run_rate():
    avg = grant_average(T0, 10.0, Average(0.0, 0.0))
    again = grant_average(T0, 10.0, avg)
    assert again.credit == pytest.approx(10.0 + math.log(2) * 10 * DAY / CREDIT_HALF_LIFE)


def test_clock_going_backwards_does_not_raise_the_average():
    avg = update_average(T0 - 100, 0, 0, Average(40.0, T0))
    assert avg.credit == 40.0


def test_percentile_picks_boincs_row():
    values = [float(v) for v in range(1, 21)]  # 20 hosts
    assert percentile(values, 50) == 11.0  # row floor(20*50/100) = 10
    assert percentile(values, 95) == 20.0  # row 19
    assert percentile([5.0], 95) == 5.0
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match="percentile"):
        percentile(values, 100)


def test_speed_percentiles_know_when_they_apply():
    assert speed_percentiles([]) == NO_PERCENTILES
    few = speed_percentiles([1e9] * 9)
    assert not few.active
    enough = speed_percentiles(sorted([1e9 * i for i in range(1, 11)]))
    assert enough.active and enough.p50 == 6e9 and enough.p95 == 10e9


CLAMP = SpeedPercentiles(p50=2e9, p95=5e9, hosts=100)
YOUNG = SpeedPercentiles(p50=2e9, p95=5e9, hosts=9)


@pytest.mark.parametrize(
    ("p_fpops", "percentiles", "expected"),
    [
        (3e9, CLAMP, 3e9),
        (9e9, CLAMP, 5e9),  # faster than the 95th percentile: clamped
        (0.0, CLAMP, 2e9),  # unknown: the median (BOINC tests < 0 and gives 0 credit here)
        (-1.0, CLAMP, 2e9),
        (math.nan, CLAMP, 2e9),
        (3e9, YOUNG, 3e9),  # young project: the host's own figure
        (0.0, YOUNG, 1e9),  # ... 1 GFLOPS when unknown
        (math.inf, YOUNG, 1e9),
        (5e10, YOUNG, 1e10),  # ... at most --max_fpops
    ],
)
def test_effective_flops(p_fpops, percentiles, expected):
    assert effective_flops(p_fpops, percentiles, max_fpops=1e10) == expected


def test_young_project_respects_a_low_max_fpops():
    assert effective_flops(0.0, YOUNG, max_fpops=5e8) == 5e8


def test_wall_time_cap():
    assert wall_time_cap(T0 + 3600, T0, 4) == 4 * 3600
    assert wall_time_cap(T0 + 3600, T0, 0) == 3600  # a host reporting 0 CPUs counts as one
    assert wall_time_cap(T0 - 10, T0, 8) == 0


@pytest.mark.parametrize(
    ("claimed", "wall", "max_runtime", "seconds", "cap"),
    [
        (3000, 7200, 3600, 3000, None),
        (5000, 7200, 3600, 3600, "max_runtime"),
        (5000, 1800, 3600, 1800, "wall_time"),
        (1e300, 7200, 3600, 3600, "max_runtime"),  # huge but finite: capped, not rejected
    ],
)
def test_caps(claimed, wall, max_runtime, seconds, cap):
    capped = cap_seconds(claimed, wall, max_runtime)
    assert (capped.seconds, capped.cap) == (seconds, cap)

"""Credit arithmetic as pure functions: cobblestones, the exponential average, caps, percentiles.

Nothing here touches a database or a clock; callers pass ``now`` explicitly. The numbers and
formulas are BOINC's (``../shared/credit_rules.md`` sections 4, 6 and 8), so a project that switches
from BOINC's ``trickle_credit`` to this daemon sees the same figures for the same work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Credits per FLOP: 200 credits per day of a 1 GFLOPS machine (BOINC's COBBLESTONE_SCALE).
#: BOINC's macro has no parentheses, so its code computes ``t * flops * 200 / 86400e9`` left to
#: right; :func:`cobblestones` keeps that order to give bit-identical figures.
COBBLESTONE_SCALE = 200.0 / 86400e9

#: Half-life of the recent average credit (BOINC's CREDIT_HALF_LIFE): one week.
CREDIT_HALF_LIFE = 7 * 86400.0

#: Hosts with more recent average credit than this count for the speed percentiles (BOINC's rule).
PERCENTILE_MIN_EXPAVG = 10.0

#: Below this many qualifying hosts the percentiles mean little: the young-project fallback applies.
PERCENTILE_MIN_HOSTS = 10

#: Speed assumed for a host that reports none (<= 0) while the fallback applies: 1 GFLOPS.
FALLBACK_FPOPS = 1e9

#: Default of ``--max_fpops``: the fastest per-core speed believed while the fallback applies.
DEFAULT_MAX_FPOPS = 1e10

_LN2 = math.log(2.0)


def cobblestones(cpu_seconds: float, flops: float) -> float:
    """Credit for ``cpu_seconds`` of CPU time on a core of ``flops`` FLOPS (BOINC's formula)."""
    return cpu_seconds * flops * 200.0 / 86400e9


@dataclass(frozen=True)
class Average:
    """A recent-average-credit pair as stored in ``expavg_credit`` / ``expavg_time``."""

    credit: float  # credits per day
    time: float  # unix time of the last update, 0 = never


def update_average(
    now: float,
    start_time: float,
    work: float,
    average: Average,
    half_life: float = CREDIT_HALF_LIFE,
) -> Average:
    """Fold ``work`` credits done since ``start_time`` into ``average`` at time ``now``.

    BOINC's ``update_average``: the old average decays by ``exp(-dt ln2 / half_life)``; the new work
    is spread over the elapsed time, or, when hardly any time passed, added at the rate that keeps
    the long-run average right. A first ever credit is spread over ``now - start_time``.
    """
    avg = average.credit
    if average.time != 0:
        diff = max(0.0, now - average.time)
        weight = math.exp(-diff * _LN2 / half_life)
        avg *= weight
        if 1.0 - weight > 1e-6:
            avg += (1.0 - weight) * work / (diff / 86400.0)
        else:
            avg += _LN2 * work * 86400.0 / half_life
    elif work != 0:
        avg = work / ((now - start_time) / 86400.0)
    return Average(avg, now)


def grant_average(now: float, credit: float, average: Average) -> Average:
    """The average after a grant of ``credit`` at ``now``, as BOINC's ``grant_credit`` computes it.

    ``grant_credit`` passes ``start_time = now - 86400``, so a first credit ``c`` gives an average
    of ``c`` per day.
    """
    return update_average(now, now - 86400.0, credit, average)


@dataclass(frozen=True)
class SpeedPercentiles:
    """The 50th and 95th percentile of ``p_fpops`` over hosts with recent credit.

    ``hosts`` is how many hosts qualified; with fewer than :data:`PERCENTILE_MIN_HOSTS` the clamp is
    not active and :func:`effective_flops` uses the young-project fallback instead.
    """

    p50: float
    p95: float
    hosts: int

    @property
    def active(self) -> bool:
        """True when enough hosts qualify for the percentile clamp to be used."""
        return self.hosts >= PERCENTILE_MIN_HOSTS


NO_PERCENTILES = SpeedPercentiles(0.0, 0.0, 0)


def percentile_index(n: int, pct: float) -> int:
    """The 0-based row ``floor(n * pct / 100)`` of ``n`` ascending values holding percentile ``pct``.

    BOINC's ``fpops_percentile`` reads this row with ``order by p_fpops limit m,1``.
    """
    if n <= 0:
        raise ValueError("percentile of an empty list")
    if not 0 <= pct < 100:
        raise ValueError(f"percentile must be in [0, 100), got {pct!r}")
    return int(n * pct / 100.0)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Percentile ``pct`` of ascending ``sorted_values``, picked as BOINC picks it."""
    return float(sorted_values[percentile_index(len(sorted_values), pct)])


def speed_percentiles(sorted_fpops: Sequence[float]) -> SpeedPercentiles:
    """Both percentiles from the ascending ``p_fpops`` of the qualifying hosts."""
    if not sorted_fpops:
        return NO_PERCENTILES
    return SpeedPercentiles(
        percentile(sorted_fpops, 50), percentile(sorted_fpops, 95), len(sorted_fpops)
    )


def effective_flops(
    p_fpops: float, percentiles: SpeedPercentiles, max_fpops: float = DEFAULT_MAX_FPOPS
) -> float:
    """The per-core speed credited for a host that claims ``p_fpops``.

    With the clamp active: ``<= 0`` gives the median, more than the 95th percentile gives the 95th.
    On a young project (too few hosts): the host's own figure, 1 GFLOPS when unknown, at most
    ``max_fpops``. Non-finite figures count as unknown.
    """
    known = math.isfinite(p_fpops) and p_fpops > 0
    if percentiles.active:
        if not known:
            return percentiles.p50
        return min(p_fpops, percentiles.p95)
    if not known:
        return min(FALLBACK_FPOPS, max_fpops)
    return min(p_fpops, max_fpops)


def wall_time_cap(now_server: float, since: float, ncpus: int) -> float:
    """Most CPU seconds a host of ``ncpus`` cores can have used between ``since`` and ``now_server``.

    Both times are on the server's clock. A host reporting fewer than one CPU counts as one.
    """
    return max(0.0, now_server - since) * max(1, ncpus)


@dataclass(frozen=True)
class Capped:
    """CPU seconds after the caps, and which cap (if any) cut them."""

    seconds: float
    cap: str | None  # None, "wall_time" or "max_runtime"


def cap_seconds(claimed: float, wall_cap: float, max_runtime: float) -> Capped:
    """Apply the wall-time and per-message caps to ``claimed`` CPU seconds (claimed >= 0)."""
    seconds, cap = claimed, None
    if seconds > max_runtime:
        seconds, cap = max_runtime, "max_runtime"
    if seconds > wall_cap:
        seconds, cap = wall_cap, "wall_time"
    return Capped(seconds, cap)

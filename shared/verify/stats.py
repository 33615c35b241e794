"""The verdict of one verification query: plain functions fed numbers, no I/O and no clock.

A query's two windows (the baseline before the deployment, the window after it) arrive as
lists of samples. The comparison is robust on purpose: a window is summarised by its median
(or a chosen percentile), so one scrape spike neither fails a healthy deployment nor hides a
sick one; an optional Mann-Whitney U test (scipy's, the reference implementation, rather than
a hand-written rank sum with its tie correction) asks whether "after" is significantly worse
than "before", for users who want a verdict that also weighs the spread.

Verdicts:
- ``passed``: the statistic after is within the threshold (and, with the test on, the
  difference is not significant);
- ``failed``: it is beyond the threshold in the bad direction (and significant, with the test);
- ``inconclusive``: too few points in either window to judge.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "Direction",
    "Outcome",
    "QueryJudgement",
    "Threshold",
    "counter_increases",
    "finite",
    "judge",
    "percentile",
]


class Direction(StrEnum):
    """Which way is bad for this metric."""

    UP = "up"  # error rates, latencies: a rise is bad
    DOWN = "down"  # success rates, throughput: a fall is bad


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Threshold:
    """Exactly one of: ``absolute`` (the statistic after may not cross this value), ``delta``
    (it may move this much, in the metric's units, in the bad direction from the baseline), or
    ``ratio`` (it may move this fraction of the baseline: 0.2 allows +20 %)."""

    absolute: float | None = None
    delta: float | None = None
    ratio: float | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.absolute, self.delta, self.ratio) if v is not None]
        if len(given) != 1:
            raise ValueError("a threshold is exactly one of absolute, delta or ratio")
        if not all(math.isfinite(v) for v in given):
            raise ValueError("a threshold must be a finite number")
        if (self.delta is not None and self.delta < 0) or (
            self.ratio is not None and self.ratio < 0
        ):
            raise ValueError("a delta or ratio threshold must not be negative")

    def limit(self, baseline: float, direction: Direction) -> float:
        """The worst value the statistic after may take."""
        sign = 1.0 if direction is Direction.UP else -1.0
        if self.absolute is not None:
            return self.absolute
        if self.delta is not None:
            return baseline + sign * self.delta
        assert self.ratio is not None
        return baseline + sign * abs(baseline) * self.ratio

    def describe(self, direction: Direction, unit: str = "") -> str:
        sign = "+" if direction is Direction.UP else "-"
        if self.absolute is not None:
            return f"limit {_num(self.absolute)}{unit}"
        if self.delta is not None:
            # A change in a percentage is in percentage points, not per cent of itself.
            return f"limit {sign}{_num(self.delta)}{' pp' if unit.strip() == '%' else unit}"
        assert self.ratio is not None
        return f"limit {sign}{_num(self.ratio * 100)} %"


@dataclass(frozen=True)
class QueryJudgement:
    """One query's verdict with what it was judged on, for people and for the chart."""

    outcome: Outcome
    statistic: str
    baseline: float | None
    after: float | None
    limit: float | None
    # How far the statistic after is from the limit, positive on the good side.
    margin: float | None
    p_value: float | None
    baseline_points: int
    after_points: int
    reason: str


def finite(values: Sequence[float]) -> list[float]:
    """The samples that are numbers: a gap in the series is simply absent, and NaN or ±inf
    (a division by zero in PromQL, a stale marker) is dropped rather than judged."""
    return [float(v) for v in values if math.isfinite(v)]


def counter_increases(values: Sequence[float]) -> list[float]:
    """Per-sample increases of a raw counter. A fall means the process restarted and its
    counter began again from zero, so the increase is the new value itself (as Prometheus's
    rate() reads a reset), never a negative jump."""
    clean = finite(values)
    return [b - a if b >= a else b for a, b in itertools.pairwise(clean)]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's
    default), of a non-empty sequence."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError("a percentile is between 0 and 100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def judge(
    baseline: Sequence[float],
    after: Sequence[float],
    *,
    direction: Direction,
    threshold: Threshold,
    statistic: float = 50.0,
    min_points: int = 3,
    significance: float | None = None,
    name: str = "query",
    unit: str = "",
) -> QueryJudgement:
    """The verdict on one query. ``statistic`` is the percentile summarising each window (50:
    the median). ``unit`` is printed after numbers in the reason (" %" reads a delta as
    percentage points). ``significance``, when given, is the p-value below which Mann-Whitney U must
    also find "after" worse than the baseline for the query to fail."""
    before, post = finite(baseline), finite(after)
    label = "median" if statistic == 50 else f"p{_num(statistic)}"
    needs_baseline = threshold.absolute is None or significance is not None
    short = [
        f"{len(points)} point(s) {where}"
        for where, points, needed in (
            ("before", before, needs_baseline),
            ("after", post, True),
        )
        if needed and len(points) < min_points
    ]
    if short:
        return QueryJudgement(
            Outcome.INCONCLUSIVE,
            label,
            percentile(before, statistic) if before else None,
            percentile(post, statistic) if post else None,
            None,
            None,
            None,
            len(before),
            len(post),
            f"{name}: too few points to judge ({', '.join(short)}; at least {min_points})",
        )
    base = percentile(before, statistic) if before else math.nan
    now = percentile(post, statistic)
    limit = threshold.limit(base, direction)
    worse = now > limit if direction is Direction.UP else now < limit
    margin = (limit - now) if direction is Direction.UP else (now - limit)
    p_value = _worse_p(before, post, direction) if significance is not None else None
    significant = p_value is None or (significance is not None and p_value < significance)
    failed = worse and significant
    before_text = f"{_num(base)}{unit} before" if before else "no baseline"
    reason = (
        f"{name} {label} {_num(now)}{unit} after vs {before_text},"
        f" {threshold.describe(direction, unit)}"
    )
    if p_value is not None:
        reason += f", Mann-Whitney p={p_value:.3g}"
    if worse and not significant:
        reason += " (beyond the limit but not significantly worse)"
    return QueryJudgement(
        Outcome.FAILED if failed else Outcome.PASSED,
        label,
        base if before else None,
        now,
        limit,
        margin,
        p_value,
        len(before),
        len(post),
        reason,
    )


def _worse_p(before: list[float], after: list[float], direction: Direction) -> float:
    """One-sided Mann-Whitney U: the chance of "after" looking this much worse than "before"
    if nothing changed. Identical windows (every value tied) cannot be worse: p = 1."""
    if len(set(before) | set(after)) <= 1:
        return 1.0
    from scipy.stats import mannwhitneyu  # imported on use: only tests that ask need scipy

    alternative = "greater" if direction is Direction.UP else "less"
    return float(mannwhitneyu(after, before, alternative=alternative).pvalue)


def _num(v: float) -> str:
    """Short, readable numbers for reasons: 4.1, 0.003, 12000."""
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4g}"

"""A verification's result as it travels: the delegate writes it into the task's outputs, the
CLI (and later the console) reads it back. Plus the small text chart both print.

The outputs of a task are strings: ``verdict``, ``reason`` and ``report`` (this model as
JSON). The series are cut to :data:`MAX_CHART_POINTS` per window, so a report of the most
queries a spec may have stays far below the outputs' size limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MAX_CHART_POINTS", "QueryReport", "Report", "downsample", "sparkline"]

MAX_CHART_POINTS = 200
_BARS = "▁▂▃▄▅▆▇█"

Verdict = Literal["passed", "failed", "inconclusive"]


class _Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")


class QueryReport(_Model):
    name: str
    outcome: Verdict
    reason: str
    statistic: str
    threshold: str
    unit: str = ""
    baseline: float | None = None
    after: float | None = None
    limit: float | None = None
    margin: float | None = None
    p_value: float | None = None
    baseline_points: int = 0
    after_points: int = 0
    step_s: float = 0
    # [unix seconds, value] pairs; NaN and gaps are left out.
    baseline_series: list[tuple[float, float]] = Field(default_factory=list)
    after_series: list[tuple[float, float]] = Field(default_factory=list)


class Report(_Model):
    verdict: Verdict
    reason: str
    # What the task did with an inconclusive verdict (the spec's on_inconclusive).
    on_inconclusive: Literal["fail", "pass_with_warning"] = "fail"
    provider: str
    baseline_start: float
    baseline_end: float
    analysis_start: float
    analysis_end: float
    queries: list[QueryReport]


def downsample(points: Sequence[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
    """At most ``limit`` points, evenly picked (first and last kept), for a chart."""
    if len(points) <= limit:
        return list(points)
    if limit <= 1:
        return list(points[:limit])
    last = len(points) - 1
    return [points[round(i * last / (limit - 1))] for i in range(limit)]


def sparkline(
    values: Sequence[float], *, lo: float | None = None, hi: float | None = None, width: int = 30
) -> str:
    """A one-line chart of ``values`` (downsampled to ``width``); ``lo``/``hi`` share a scale
    between two series so baseline and after can be read against each other."""
    clean = [v for v in values if math.isfinite(v)]
    if not clean:
        return "(no data)"
    picked = [v for _, v in downsample([(0.0, v) for v in clean], width)]
    low = min(clean) if lo is None else lo
    high = max(clean) if hi is None else hi
    if high <= low:
        return _BARS[0] * len(picked)
    top = len(_BARS) - 1
    return "".join(_BARS[max(0, min(top, round((v - low) / (high - low) * top)))] for v in picked)

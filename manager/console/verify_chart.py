"""A verification's report drawn for the task page (issue 20): for each query, its baseline
and after windows over each other on one relative time axis (seconds from each window's
start), with the threshold's limit as a line, and the verdict with its reason.

Pure: it reads the report the task's outputs carry (shared.verify.report, as the CLI reads
it) and returns numbers and text; the template draws the SVG and escapes every text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import ValidationError

from shared.verify.report import QueryReport, Report

__all__ = ["HEIGHT", "PAD", "WIDTH", "QueryChart", "VerifyView", "verify_view"]

WIDTH, HEIGHT, PAD = 600.0, 180.0, 40.0


@dataclass(frozen=True, slots=True)
class QueryChart:
    query: QueryReport
    # "x,y x,y ..." polylines (empty: no point in that window)
    baseline: str
    after: str
    # The limit's height in the chart (None: no limit, or outside any number drawn)
    limit_y: float | None
    y_low: float
    y_high: float
    span_s: float


@dataclass(frozen=True, slots=True)
class VerifyView:
    report: Report | None
    charts: list[QueryChart]
    # Why no report is drawn (the task has none yet, or it is not one this manager reads).
    missing: str | None


def _num_range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high <= low:  # a flat line sits mid-chart
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.05
    return low - pad, high + pad


def _chart(q: QueryReport, base_start: float, after_start: float, span: float) -> QueryChart:
    values = [v for _, v in q.baseline_series + q.after_series if math.isfinite(v)]
    if q.limit is not None and math.isfinite(q.limit):
        values.append(q.limit)
    low, high = _num_range(values) if values else (0.0, 1.0)

    def y(v: float) -> float:
        return HEIGHT - PAD - (v - low) / (high - low) * (HEIGHT - 2 * PAD)

    def line(series: list[tuple[float, float]], start: float) -> str:
        return " ".join(
            f"{PAD + min(max((t - start) / span, 0.0), 1.0) * (WIDTH - 2 * PAD):.1f},{y(v):.1f}"
            for t, v in series
            if math.isfinite(t) and math.isfinite(v)
        )

    limit_y = y(q.limit) if q.limit is not None and math.isfinite(q.limit) else None
    return QueryChart(
        q,
        line(q.baseline_series, base_start),
        line(q.after_series, after_start),
        limit_y,
        low,
        high,
        span,
    )


def verify_view(outputs: dict[str, str]) -> VerifyView:
    """The report in a verify task's ``outputs``, with a chart per query."""
    raw = outputs.get("report")
    if raw is None:
        return VerifyView(None, [], "no report yet")
    try:
        report = Report.model_validate_json(raw)
    except ValidationError:
        return VerifyView(None, [], "the report could not be read")
    span = max(
        report.baseline_end - report.baseline_start,
        report.analysis_end - report.analysis_start,
        1.0,
    )
    charts = [_chart(q, report.baseline_start, report.analysis_start, span) for q in report.queries]
    return VerifyView(report, charts, None)

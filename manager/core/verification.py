"""Where a verification looks: the absolute windows of a deployment, pure arithmetic.

The analysis window starts when the deployment ended. The baseline is the same length, and
either ends when the deployment started (``before``: the deployment's own time is in
neither), or is the analysis window moved back a day or a week (``day``/``week``: for a
metric with a daily or weekly rhythm, the same hour is the fair comparison).
"""

from __future__ import annotations

from shared.protocol import VerifyWindow
from shared.verify.spec import VerifySpec

__all__ = ["QUERY_MARGIN_S", "timeout_for", "windows"]

_SHIFT = {"day": 86400.0, "week": 7 * 86400.0}
# Room for the delegate to fetch and judge once the window has ended, per query.
QUERY_MARGIN_S = 5.0


def windows(spec: VerifySpec, started_at: float, finished_at: float) -> VerifyWindow:
    length = spec.window.analysis
    analysis_start, analysis_end = finished_at, finished_at + length
    if spec.window.baseline == "before":
        baseline_start, baseline_end = started_at - length, started_at
    else:
        shift = _SHIFT[spec.window.baseline]
        baseline_start, baseline_end = analysis_start - shift, analysis_end - shift
    return VerifyWindow(
        baseline_start=baseline_start,
        baseline_end=baseline_end,
        analysis_start=analysis_start,
        analysis_end=analysis_end,
    )


def timeout_for(spec: VerifySpec, window: VerifyWindow, now: float) -> float:
    """A task timeout that covers the wait for the window's end and every query's two
    requests, from ``now`` (the submission)."""
    wait = max(0.0, window.analysis_end - now)
    fetch = len(spec.queries) * 2 * spec.provider.query_timeout_s
    return wait + fetch + len(spec.queries) * QUERY_MARGIN_S + 30.0

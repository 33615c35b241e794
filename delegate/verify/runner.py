"""Runs one verification: waits for the analysis window to end, asks the provider for both
windows of every query, judges each (shared.verify.stats) and says the verdict.

One log line per query carries its reason and a sparkline of both windows on one scale. The
result is a :class:`shared.verify.report.Report`; the executor turns it into the task's
outcome and outputs. A provider that fails makes its queries inconclusive with the failure
named, never the task's crash: "could not tell" is a verdict the spec decides about
(``on_inconclusive``).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from delegate.verify.provider import (
    PrometheusProvider,
    Provider,
    ProviderError,
    QueryError,
    choose_step,
)
from shared.protocol import VerifyPayload
from shared.verify.report import MAX_CHART_POINTS, QueryReport, Report, downsample, sparkline
from shared.verify.spec import ProviderSpec, QuerySpec, VerifySpec
from shared.verify.stats import Outcome, QueryJudgement, Threshold, judge

__all__ = ["SETTLE_S", "judge_query", "overall", "run_verification"]

# After the window ends, the last scrape may still be on its way into the provider.
SETTLE_S = 1.0

Series = list[tuple[float, float]]
ProviderFactory = Callable[[ProviderSpec, Mapping[str, str]], Provider]
Log = Callable[[str], Awaitable[None]]


def _scaled(threshold: Threshold, sensitivity: float) -> Threshold:
    """A relative allowance shrinks as sensitivity grows; an absolute limit is a limit."""
    if threshold.delta is not None:
        return replace(threshold, delta=threshold.delta / sensitivity)
    if threshold.ratio is not None:
        return replace(threshold, ratio=threshold.ratio / sensitivity)
    return threshold


def judge_query(
    query: QuerySpec, spec: VerifySpec, baseline: Series, after: Series, step: float
) -> QueryReport:
    """One query's report from its two fetched series: pure, no I/O."""
    threshold = _scaled(query.threshold.threshold(), spec.sensitivity)
    j = judge(
        [v for _, v in baseline],
        [v for _, v in after],
        direction=query.bad,
        threshold=threshold,
        statistic=query.statistic,
        min_points=query.min_points,
        significance=query.significance,
        name=query.name,
        unit=query.unit,
    )
    return _report(query, j, threshold, step, baseline, after)


def _report(
    query: QuerySpec,
    j: QueryJudgement,
    threshold: Threshold,
    step: float,
    baseline: Series,
    after: Series,
) -> QueryReport:
    return QueryReport(
        name=query.name,
        outcome=j.outcome.value,
        reason=j.reason,
        statistic=j.statistic,
        threshold=threshold.describe(query.bad, query.unit),
        unit=query.unit,
        baseline=j.baseline,
        after=j.after,
        limit=j.limit,
        margin=j.margin,
        p_value=j.p_value,
        baseline_points=j.baseline_points,
        after_points=j.after_points,
        step_s=step,
        baseline_series=downsample(_finite(baseline), MAX_CHART_POINTS),
        after_series=downsample(_finite(after), MAX_CHART_POINTS),
    )


def _inconclusive(query: QuerySpec, spec: VerifySpec, step: float, why: str) -> QueryReport:
    threshold = _scaled(query.threshold.threshold(), spec.sensitivity)
    return QueryReport(
        name=query.name,
        outcome="inconclusive",
        reason=f"{query.name}: {why}",
        statistic="median" if query.statistic == 50 else f"p{query.statistic:g}",
        threshold=threshold.describe(query.bad, query.unit),
        unit=query.unit,
        step_s=step,
    )


def _finite(series: Series) -> Series:
    return [(t, v) for t, v in series if v == v and abs(v) != float("inf")]


def overall(queries: list[QueryReport]) -> tuple[Outcome, str]:
    """Failed if any query failed; else inconclusive if any could not be judged; else passed.
    The reason is the deciding queries' reasons."""
    for outcome in (Outcome.FAILED, Outcome.INCONCLUSIVE):
        deciding = [q.reason for q in queries if q.outcome == outcome.value]
        if deciding:
            return outcome, "; ".join(deciding)
    return Outcome.PASSED, "; ".join(q.reason for q in queries)


def chart_line(q: QueryReport) -> str:
    """The query's two windows as sparklines on one scale."""
    values = [v for _, v in q.baseline_series] + [v for _, v in q.after_series]
    lo, hi = (min(values), max(values)) if values else (None, None)
    before = sparkline([v for _, v in q.baseline_series], lo=lo, hi=hi)
    after = sparkline([v for _, v in q.after_series], lo=lo, hi=hi)
    return f"before {before} | after {after}"


async def run_verification(
    payload: VerifyPayload,
    *,
    log: Log,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    providers: ProviderFactory = PrometheusProvider,
) -> Report:
    """Wait for the window to end, then fetch and judge. Cancel it by cancelling the task."""
    spec, window = payload.spec, payload.window
    wait = window.analysis_end + SETTLE_S - clock()
    if wait > 0:
        await log(f"waiting {wait:.0f} s for the analysis window to end")
        await sleep(wait)
    after_step = choose_step(window.analysis_end - window.analysis_start, spec.window.step)
    base_step = choose_step(window.baseline_end - window.baseline_start, spec.window.step)
    step = max(after_step, base_step)
    reports: list[QueryReport] = []
    try:
        provider = providers(spec.provider, {str(k): v for k, v in payload.credentials.items()})
    except (ssl.SSLError, ValueError, OSError) as exc:
        # A PEM that does not load: the type and the library's reason, never the PEM.
        why = getattr(exc, "reason", None) or type(exc).__name__
        name = f"{spec.provider.kind} client"
        provider = None
        reports = [
            _inconclusive(q, spec, step, f"{name}: TLS credentials: {why}") for q in spec.queries
        ]
    if provider is not None:
        try:
            for query in spec.queries:
                reports.append(await _one(provider, query, spec, payload, step))
        finally:
            await provider.aclose()
    for q in reports:
        await log(f"{q.outcome.upper()}: {q.reason} [{chart_line(q)}]")
    verdict, reason = overall(reports)
    return Report(
        verdict=verdict.value,
        reason=reason,
        on_inconclusive=spec.on_inconclusive,
        provider=getattr(provider, "name", spec.provider.kind),
        baseline_start=window.baseline_start,
        baseline_end=window.baseline_end,
        analysis_start=window.analysis_start,
        analysis_end=window.analysis_end,
        queries=reports,
    )


async def _one(
    provider: Provider, query: QuerySpec, spec: VerifySpec, payload: VerifyPayload, step: float
) -> QueryReport:
    w = payload.window
    try:
        baseline = await provider.range(query.query, w.baseline_start, w.baseline_end, step)
        after = await provider.range(query.query, w.analysis_start, w.analysis_end, step)
    except (ProviderError, QueryError) as exc:
        return _inconclusive(query, spec, step, str(exc))
    return judge_query(query, spec, baseline, after, step)

"""Charts drawn on the server as SVG: tasks per minute by outcome, dispatch latency
(p50/p95), and delegates connected over time.

Tasks come from the task list the caller may read (the API's own list handler), so a chart
shows only what that list would. Delegates connected are sampled once a minute into a
small in-memory series (24 hours; a restart starts it again): the manager keeps no history
of them otherwise.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = [
    "SAMPLES",
    "Bar",
    "Chart",
    "ConnectedSamples",
    "delegates_chart",
    "latency_chart",
    "outcome_chart",
    "percentile",
    "sampling",
]

WIDTH, HEIGHT, PAD = 600.0, 160.0, 30.0
OUTCOMES = ("succeeded", "failed", "other")


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    kind: str
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    bars: list[Bar]
    # (class, "x,y x,y ...") polylines
    lines: list[tuple[str, str]]
    y_max: float
    unit: str
    legend: list[tuple[str, str]]
    empty: bool


def _y(value: float, top: float) -> float:
    return HEIGHT - PAD - (value / top) * (HEIGHT - 2 * PAD) if top > 0 else HEIGHT - PAD


def _nice(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10.0 ** math.floor(math.log10(value))
    return next(m * exp for m in (1, 2, 5, 10) if m * exp >= value)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = max(0, math.ceil(q * len(ordered)) - 1)
    return float(ordered[k])


def _outcome(state: str) -> str:
    return state if state in ("succeeded", "failed") else "other"


def outcome_chart(tasks: list[dict[str, Any]], now: float, minutes: int = 60) -> Chart:
    counts = [dict.fromkeys(OUTCOMES, 0) for _ in range(minutes)]
    for t in tasks:
        done = t.get("finished_at")
        if done is None:
            continue
        i = minutes - 1 - int((now - done) // 60)
        if 0 <= i < minutes:
            counts[i][_outcome(t["state"])] += 1
    top = _nice(max((sum(c.values()) for c in counts), default=0))
    slot = (WIDTH - 2 * PAD) / minutes
    bars = []
    for i, c in enumerate(counts):
        base = 0
        for kind in OUTCOMES:
            if c[kind]:
                y0, y1 = _y(base, top), _y(base + c[kind], top)
                mins = minutes - 1 - i
                bars.append(
                    Bar(
                        PAD + i * slot,
                        y1,
                        max(slot - 1, 1),
                        y0 - y1,
                        kind,
                        f"{c[kind]} {kind}, {mins} min ago",
                    )
                )
                base += c[kind]
    return Chart(
        "Tasks finished per minute, by outcome (last hour)",
        bars,
        [],
        top,
        "tasks",
        [(k, k) for k in OUTCOMES],
        not bars,
    )


def latency_chart(tasks: list[dict[str, Any]], now: float, buckets: int = 12) -> Chart:
    """Queue to start (started_at - created_at), per 5 minutes of the last hour."""
    width = 3600 / buckets
    waits: list[list[float]] = [[] for _ in range(buckets)]
    for t in tasks:
        started = t.get("started_at")
        if started is None:
            continue
        i = buckets - 1 - int((now - started) // width)
        if 0 <= i < buckets:
            waits[i].append(max(0.0, started - t["created_at"]))
    p50 = [percentile(w, 0.5) if w else None for w in waits]
    p95 = [percentile(w, 0.95) if w else None for w in waits]
    top = _nice(max((v for v in p95 if v is not None), default=0.0))
    slot = (WIDTH - 2 * PAD) / buckets
    lines = []
    for kind, series in (("p50", p50), ("p95", p95)):
        points = " ".join(
            f"{PAD + (i + 0.5) * slot:.1f},{_y(v, top):.1f}"
            for i, v in enumerate(series)
            if v is not None
        )
        if points:
            lines.append((kind, points))
    return Chart(
        "Dispatch latency, queued to started (p50 and p95 per 5 minutes, last hour)",
        [],
        lines,
        top,
        "seconds",
        [("p50", "p50"), ("p95", "p95")],
        not lines,
    )


class ConnectedSamples:
    """How many delegates were connected (stream or polling), once a minute, 24 hours."""

    def __init__(self, count: Callable[[], int], *, clock: Callable[[], float] = time.time) -> None:
        self._count = count
        self._clock = clock
        self.samples: deque[tuple[float, int]] = deque(maxlen=24 * 60)

    def sample(self) -> None:
        self.samples.append((self._clock(), self._count()))

    def series(self) -> list[tuple[float, int]]:
        return [*self.samples, (self._clock(), self._count())]


SAMPLES: web.AppKey[ConnectedSamples] = web.AppKey("tether_console_samples", ConnectedSamples)


def sampling(
    samples: ConnectedSamples, every: float = 60.0
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context: samples from the app's start to its end."""

    async def run() -> None:
        while True:
            samples.sample()
            await asyncio.sleep(every)

    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run(), name="console-samples")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return ctx


def delegates_chart(series: list[tuple[float, int]], now: float, hours: float = 24.0) -> Chart:
    span = hours * 3600
    shown = [(ts, n) for ts, n in series if now - ts <= span]
    top = _nice(max((n for _, n in shown), default=0))
    points = " ".join(
        f"{PAD + (1 - (now - ts) / span) * (WIDTH - 2 * PAD):.1f},{_y(n, top):.1f}"
        for ts, n in shown
    )
    return Chart(
        "Delegates connected (sampled each minute since the manager started; last 24 hours)",
        [],
        [("connected", points)] if points else [],
        top,
        "delegates",
        [("connected", "connected")],
        not shown,
    )

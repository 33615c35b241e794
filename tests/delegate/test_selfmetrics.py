"""The figures a delegate reports about itself ride in its heartbeats."""

from __future__ import annotations

from delegate.selfmetrics import self_metrics
from shared.protocol import Heartbeat, parse_delegate_frame


def state() -> tuple[list[str], int, float]:
    return ["task_1", "task_2"], 2, 0.5


def test_self_metrics_report_load_and_resources() -> None:
    collect = self_metrics(state, started=100.0, clock=lambda: 160.0)
    figures = collect()
    assert figures["running_tasks"] == 2.0
    assert figures["free_slots"] == 2.0
    assert figures["uptime_seconds"] == 60.0
    assert figures["peak_rss_bytes"] > 1_000_000
    assert figures["cpu_seconds"] > 0


def test_self_metrics_fit_the_heartbeat_frame() -> None:
    figures = self_metrics(state, started=0.0)()
    frame = Heartbeat(seq=1, running=[], free_slots=1, metrics=figures)
    parsed = parse_delegate_frame(frame.model_dump_json())
    assert isinstance(parsed, Heartbeat)
    assert parsed.metrics == figures

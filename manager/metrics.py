"""Prometheus metrics of the manager, served at /metrics.

Counters and histograms are updated where things happen; gauges of live state (delegates
by mode, open tasks, what each delegate reports about itself) are read from memory at
scrape time, so a scrape never queries the database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics", "gauge"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        # A registry per app, not the process-global one: tests build many apps.
        self.registry = CollectorRegistry()
        r = self.registry
        self.api_requests = Counter(
            "tether_api_requests",
            "API requests by route and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.heartbeats = Counter(
            "tether_heartbeats", "Delegate heartbeats received", ["mode"], registry=r
        )
        # Log batches and results over delegate streams, by kind (logs, result) and the
        # status the HTTPS route would have answered: tether_api_requests counts HTTPS only.
        self.stream_requests = Counter(
            "tether_stream_requests",
            "Delegate requests over the stream by kind and status",
            ["kind", "status"],
            registry=r,
        )
        self.log_lines = Counter("tether_log_lines", "Task log lines stored", registry=r)
        self.log_bytes = Counter("tether_log_bytes", "Task log text stored, in bytes", registry=r)
        self.tasks_submitted = Counter("tether_tasks_submitted", "Tasks accepted", registry=r)
        self.tasks_finished = Counter(
            "tether_tasks_finished", "Tasks that reached a final state", ["state"], registry=r
        )
        self.dispatch_latency = Histogram(
            "tether_dispatch_latency_seconds",
            "From a task entering the queue to a delegate acquiring it",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            "tether_rate_limited", "Requests refused by a rate limit", ["route"], registry=r
        )

    def add_live(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self.registry.register(_Live(collect))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Live(Collector):
    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        return self._collect()


def gauge(
    name: str, doc: str, labels: list[str], samples: dict[tuple[str, ...], float]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples.items():
        family.add_metric(list(values), value)
    return family

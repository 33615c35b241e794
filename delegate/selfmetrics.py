"""What a delegate says about itself in its heartbeats: cheap figures, no scraping port."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable

__all__ = ["self_metrics"]


def self_metrics(
    heartbeat_state: Callable[[], tuple[list[str], int, float]],
    *,
    started: float,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[], dict[str, float]]:
    def collect() -> dict[str, float]:
        running, free, _ = heartbeat_state()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        load1, _, _ = os.getloadavg()
        return {
            "running_tasks": float(len(running)),
            "free_slots": float(free),
            # ru_maxrss is in KiB on Linux.
            "peak_rss_bytes": float(usage.ru_maxrss * 1024),
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "host_load1": load1,
            "uptime_seconds": clock() - started,
        }

    return collect

"""What sealing costs per log line, in-process: ``python -m manager.bench.sealing``.

Lines of 100 bytes through a task's data key: sealed one at a time, and in batches of 1,000
as the manager seals a log batch (one AESGCM object, one call for the nonces), then opened
as a log page opens them; with and without the record conversion of manager.tasks.sealing.
Figures are CPU time (``time.process_time``), which a shared machine disturbs less than
wall time; the median of five rounds.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable

from manager.keys.data_keys import DataKey
from manager.records import LogRecord
from manager.tasks.sealing import open_line, seal_lines

__all__ = ["measure"]

LINES = 20_000
BATCH = 1_000


def _cpu_us_per_line(fn: Callable[[], object], lines: int) -> float:
    rounds = []
    for _ in range(5):
        start = time.process_time()
        fn()
        rounds.append((time.process_time() - start) * 1e6 / lines)
    return round(statistics.median(rounds), 3)


def measure(line_bytes: int = 100) -> dict[str, float]:
    key = DataKey("task:task_bench", os.urandom(32))
    text = "x" * line_bytes
    plain = text.encode()
    records = [("log:1:stdout", seq, plain) for seq in range(LINES)]
    one = [key.seal(f, s, p) for f, s, p in records]
    logs = [LogRecord(1, seq, "stdout", 1.0, text) for seq in range(LINES)]
    sealed_logs = [
        ln for i in range(0, LINES, BATCH) for ln in seal_lines(key, logs[i : i + BATCH])
    ]

    def seal_each() -> None:
        for f, s, p in records:
            key.seal(f, s, p)

    def seal_batches() -> None:
        for i in range(0, LINES, BATCH):
            key.seal_many(records[i : i + BATCH])

    def open_each() -> None:
        for (f, s, _), blob in zip(records, one, strict=True):
            key.open(f, s, blob)

    def seal_log_batches() -> None:
        for i in range(0, LINES, BATCH):
            seal_lines(key, logs[i : i + BATCH])

    def open_log_page() -> None:
        for ln in sealed_logs:
            open_line(key, ln)

    return {
        "line_bytes": line_bytes,
        "seal_one_us": _cpu_us_per_line(seal_each, LINES),
        "seal_batch_us": _cpu_us_per_line(seal_batches, LINES),
        "open_us": _cpu_us_per_line(open_each, LINES),
        "seal_log_batch_us": _cpu_us_per_line(seal_log_batches, LINES),
        "open_log_line_us": _cpu_us_per_line(open_log_page, LINES),
        "loadavg_1m": os.getloadavg()[0],
    }


if __name__ == "__main__":
    json.dump(measure(), sys.stdout)
    sys.stdout.write("\n")

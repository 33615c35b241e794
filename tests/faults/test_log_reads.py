"""Eight readers at once of a log of long lines: the manager's memory stays within its bound
and /healthz keeps answering.

Before log pages were bounded in bytes, one page could hold 5,000 lines of 16 KiB: eight
readers of such a log took a manager from 100 MiB to 2.4 GiB. Now at most
LOG_READS_AT_ONCE pages of MAX_LOG_PAGE_BYTES are in flight; their text twice over is the
bound asserted here (the measured growth is a fraction of it: docs/benchmarks.md).
"""

from __future__ import annotations

import sys

import pytest

from manager.bench import LogReadOptions, run_log_read_bench
from manager.tasks.reads import LOG_READS_AT_ONCE
from shared.limits import MAX_LOG_PAGE_BYTES


@pytest.mark.skipif(sys.platform != "linux", reason="the peak RSS is read from /proc")
async def test_eight_readers_of_long_lines_stay_within_the_memory_bound() -> None:
    # 1,000 lines of 16 KiB: 16 MiB, so a reader's pages stop on bytes, not lines.
    out = await run_log_read_bench(LogReadOptions(readers=8, lines=1000))
    assert out["lines_per_reader"] == 1000
    assert out["pages_per_reader"] >= 4
    rss = out["manager_rss_mib"]
    bound = 2 * LOG_READS_AT_ONCE * MAX_LOG_PAGE_BYTES / 2**20
    assert rss["peak"] - rss["before"] < bound, rss
    assert out["healthz_probes"] >= 1

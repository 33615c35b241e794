"""``tether bench``: the task path under load, measured end to end.

- :mod:`~manager.bench.sim`: N simulated delegates in this process speak the real protocol
  over TLS and finish each task at once, so the figures are the manager's own cost; with
  ``--idle`` they only heartbeat, for memory and CPU at rest.
- :mod:`~manager.bench.real`: real ``tether-delegate`` processes run real shell tasks.
- :mod:`~manager.bench.masker`: output masking throughput, in-process.
- :mod:`~manager.bench.logreads`: concurrent readers of one large log: the manager's peak
  memory and ``/healthz`` latency while they read.

Managers are started by the bench (one, or ``--replicas`` on one PostgreSQL) unless
``--manager-url`` names one. ``docs/benchmarks.md`` has the figures and how to read them.
"""

from manager.bench.cli import main_bench
from manager.bench.logreads import run_log_read_bench
from manager.bench.masker import run_masker_bench
from manager.bench.options import BenchOptions, LogReadOptions, MaskerOptions
from manager.bench.runner import run_bench

__all__ = [
    "BenchOptions",
    "LogReadOptions",
    "MaskerOptions",
    "main_bench",
    "run_bench",
    "run_log_read_bench",
    "run_masker_bench",
]

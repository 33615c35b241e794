"""``tether bench``: arguments, repeated runs, and the one JSON line it prints."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import aiohttp

from manager.bench.masker import run_masker_bench
from manager.bench.options import (
    AssignerOptions,
    BenchOptions,
    LogReadOptions,
    MaskerOptions,
    validate,
    validate_assigner,
    validate_log_reads,
    validate_masker,
)

__all__ = ["bench_parser", "main_bench", "median_of"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tether bench",
        description="Measure the task path end to end; the last line printed is one JSON object.",
    )
    p.add_argument("--delegates", type=int, default=10, help="simulated delegates (default 10)")
    p.add_argument("--tasks", type=int, default=1000, help="no-op tasks to submit (default 1000)")
    p.add_argument("--concurrency", type=int, default=50, help="submitters at once (default 50)")
    p.add_argument(
        "--rate",
        type=float,
        metavar="PER_S",
        help="pace submissions at this many tasks/s, to measure latency below saturation",
    )
    p.add_argument("--mode", choices=("stream", "poll"), default="stream")
    p.add_argument("--capacity", type=int, default=50, help="slots per delegate (default 50)")
    p.add_argument(
        "--idle", type=float, metavar="SECONDS", help="only hold the delegates this long"
    )
    p.add_argument(
        "--real-delegates",
        type=int,
        default=0,
        metavar="N",
        help="start N real tether-delegate processes instead of simulated delegates",
    )
    p.add_argument(
        "--script", default="true", help="with --real-delegates: the shell task (default true)"
    )
    p.add_argument(
        "--interpreter",
        choices=("bash", "sh"),
        default="bash",
        help="with --real-delegates: the shell that runs --script (default bash)",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="with --real-delegates: submit each task once the one before has finished, and"
        " report submit -> result on this client's clock (one task alone)",
    )
    p.add_argument(
        "--results",
        choices=("wait", "follow"),
        default="wait",
        help="with --real-delegates: await each task by a submit that waits for it (default),"
        " or submit and then follow it (counts its log lines)",
    )
    p.add_argument(
        "--replicas", type=int, default=1, help="managers to start on one --database (default 1)"
    )
    p.add_argument("--database", help="postgresql://... for the managers started, not SQLite")
    p.add_argument("--manager-url", help="use this manager instead of starting one")
    p.add_argument("--api-key", help="with --manager-url: an API key that may create tokens")
    p.add_argument("--ca-file", type=Path, help="with --manager-url: its CA")
    p.add_argument("--time-scale", type=float, default=1.0, help="timings of started processes")
    p.add_argument(
        "--timeout", type=float, default=600.0, help="longest wait for a run's tasks (s)"
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="runs; every figure is their median (default 1)"
    )
    m = p.add_argument_group("masking benchmark (--masker)")
    m.add_argument("--masker", action="store_true", help="measure output masking, in-process")
    m.add_argument("--secrets", type=int, default=1000, help="secrets to mask (default 1000)")
    m.add_argument("--megabytes", type=float, default=50.0, help="log text (default 50 MiB)")
    m.add_argument("--chunk", type=int, default=64 * 1024, help="bytes per write (default 64 KiB)")
    a = p.add_argument_group("assigner (--assigner)")
    a.add_argument(
        "--assigner",
        action="store_true",
        help="CPU per task of the assignment of tasks to --delegates, in-process",
    )
    a.add_argument(
        "--classes", type=int, default=5, help="eligibility classes of delegates (default 5)"
    )
    r = p.add_argument_group("log reads (--log-reads)")
    r.add_argument(
        "--log-reads",
        action="store_true",
        help="concurrent readers of one large log: manager memory and /healthz latency",
    )
    r.add_argument("--readers", type=int, default=8, help="readers at once (default 8)")
    r.add_argument("--lines", type=int, default=20_000, help="lines in the log (default 20000)")
    r.add_argument("--line-bytes", type=int, default=16 * 1024, help="bytes a line (default 16384)")
    return p


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several: every number is the median of the runs' values."""
    first = runs[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        values = [r.get(key) for r in runs]
        if isinstance(value, dict):
            out[key] = median_of([v for v in values if isinstance(v, dict)])
        elif isinstance(value, int | float) and not isinstance(value, bool):
            numbers = [v for v in values if isinstance(v, int | float)]
            m = statistics.median(numbers)
            out[key] = round(m, 3) if isinstance(m, float) else m
        else:
            out[key] = value
    return out


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if len(runs) == 1:
        return runs[0]
    out = median_of(runs)
    out["runs"] = len(runs)
    for key in ("tasks_per_s", "mb_per_s"):
        if key in runs[0]:
            out[f"{key}_runs"] = [r[key] for r in runs]
    return out


def main_bench(argv: list[str]) -> int:
    from manager.bench.runner import fd_problem, run_bench
    from shared.runtime import run

    args = bench_parser().parse_args(argv)
    if args.repeat < 1:
        print("error: --repeat must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    runs: list[dict[str, Any]] = []
    if args.masker:
        mopts = MaskerOptions(secrets=args.secrets, megabytes=args.megabytes, chunk=args.chunk)
        problem = validate_masker(mopts)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_USAGE
        runs = [run_masker_bench(mopts) for _ in range(args.repeat)]
        print(json.dumps(_aggregate(runs)), flush=True)
        return 0
    if args.assigner:
        from manager.bench.assigner import run_assigner_bench

        aopts = AssignerOptions(
            delegates=args.delegates,
            tasks=args.tasks,
            capacity=args.capacity,
            classes=args.classes,
        )
        problem = validate_assigner(aopts)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_USAGE
        runs = [run_assigner_bench(aopts) for _ in range(args.repeat)]
        print(json.dumps(_aggregate(runs)), flush=True)
        return 0
    if args.log_reads:
        from manager.bench.logreads import run_log_read_bench

        lopts = LogReadOptions(
            readers=args.readers,
            lines=args.lines,
            line_bytes=args.line_bytes,
            database=args.database,
        )
        problem = validate_log_reads(lopts)

        def once() -> dict[str, Any]:
            return run(run_log_read_bench(lopts))
    else:
        fields = set(BenchOptions.__dataclass_fields__)
        opts = BenchOptions(**{k: v for k, v in vars(args).items() if k in fields})
        problem = validate(opts) or fd_problem(opts)

        def once() -> dict[str, Any]:
            return run(run_bench(opts))

    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        for _ in range(args.repeat):
            runs.append(once())
            if args.repeat > 1:
                # Each run on its own line; the last line stays the one summary.
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    except (OSError, RuntimeError, aiohttp.ClientError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        # The run's own clean-up (stopping the managers it started) has run by now.
        return EXIT_INTERRUPTED
    print(json.dumps(_aggregate(runs)), flush=True)
    return 0

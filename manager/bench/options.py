"""What a benchmark run is asked to do, and the checks that say a request makes sense."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "AssignerOptions",
    "BenchOptions",
    "LogReadOptions",
    "MaskerOptions",
    "validate",
    "validate_assigner",
    "validate_log_reads",
    "validate_masker",
]


@dataclass
class BenchOptions:
    """One run of the task path: simulated delegates, or real ``tether-delegate`` processes."""

    delegates: int = 10
    tasks: int = 1000
    concurrency: int = 50
    mode: str = "stream"
    manager_url: str | None = None
    api_key: str | None = None
    ca_file: Path | None = None
    database: str | None = None
    idle: float | None = None
    capacity: int = 50
    # Passed to managers (and real delegates) the bench starts itself; 1.0 is production.
    time_scale: float = 1.0
    # Manager processes started on one data dir and one PostgreSQL database.
    replicas: int = 1
    # Submissions per second; None submits as fast as the concurrency allows (saturation).
    rate: float | None = None
    # Real tether-delegate processes instead of simulated delegates, running this script.
    real_delegates: int = 0
    script: str = "true"
    # The shell that runs it. make bench-peers passes sh: Celery's job is subprocess.run(...,
    # shell=True), which is /bin/sh, and bash costs about twice sh's start-up.
    interpreter: Literal["bash", "sh"] = "bash"
    # With real delegates: one task at a time, each submitted once the one before finished.
    sequential: bool = False
    # With real delegates, how each task's end is awaited: its submit waits for it
    # (?wait=), or it is submitted and then followed (its log lines counted).
    results: Literal["wait", "follow"] = "wait"
    # No run waits longer than this for its tasks to finish.
    timeout: float = 600.0


@dataclass
class MaskerOptions:
    """The masking benchmark: how fast a delegate can mask a task's output."""

    secrets: int = 1000
    megabytes: float = 50.0
    # Bytes per write fed to the masking stream (a pipe read is up to 64 KiB).
    chunk: int = 64 * 1024
    seed: int = 7


@dataclass
class AssignerOptions:
    """The assigner's CPU per task, in-process: N delegates over ``classes`` eligibility
    classes, saturated and not."""

    delegates: int = 10
    tasks: int = 1000
    capacity: int = 50
    classes: int = 5
    seed: int = 7


@dataclass
class LogReadOptions:
    """Concurrent readers of one large log: the manager's memory and /healthz meanwhile."""

    readers: int = 8
    lines: int = 20_000
    line_bytes: int = 16 * 1024
    database: str | None = None


def validate_log_reads(opts: LogReadOptions) -> str | None:
    if min(opts.readers, opts.lines, opts.line_bytes) < 1:
        return "--readers, --lines and --line-bytes must be positive"
    if opts.line_bytes > 512 * 1024:
        return "--line-bytes: at most 512 KiB (a log batch is at most 1 MiB)"
    if opts.database and not opts.database.startswith(("postgresql://", "postgres://")):
        return "--database takes a postgresql:// URL"
    return None


def validate(opts: BenchOptions) -> str | None:
    """Why ``opts`` cannot run, or None when it can."""
    if opts.manager_url and not opts.api_key:
        return "--manager-url needs --api-key"
    if opts.manager_url and opts.replicas > 1:
        return "--replicas starts managers; it does not go with --manager-url"
    if opts.replicas < 1:
        return "--replicas must be at least 1"
    if opts.replicas > 1 and not opts.database:
        return "--replicas above 1 needs --database postgresql://... (replicas share one database)"
    if opts.database and not opts.database.startswith(("postgresql://", "postgres://")):
        return "--database takes a postgresql:// URL"
    if min(opts.delegates, opts.concurrency, opts.capacity) < 1:
        return "--delegates, --concurrency and --capacity must be positive"
    if opts.tasks < 1 and not opts.idle:
        return "--tasks must be positive"
    if opts.rate is not None and opts.rate <= 0:
        return "--rate must be positive"
    if opts.idle is not None and opts.idle <= 0:
        return "--idle must be positive"
    if opts.time_scale <= 0 or opts.timeout <= 0:
        return "--time-scale and --timeout must be positive"
    if opts.real_delegates < 0:
        return "--real-delegates must not be negative"
    if opts.real_delegates and opts.idle:
        return "--idle holds simulated delegates; it does not go with --real-delegates"
    if opts.sequential and not opts.real_delegates:
        return "--sequential is for --real-delegates"
    if opts.results != "wait" and not opts.real_delegates:
        return "--results is for --real-delegates"
    if opts.sequential and opts.rate is not None:
        return "--sequential paces itself; it does not go with --rate"
    if opts.real_delegates and opts.mode != "stream":
        return "--mode is for simulated delegates; real ones choose their own channel"
    return None


def validate_assigner(opts: AssignerOptions) -> str | None:
    if min(opts.delegates, opts.tasks, opts.capacity, opts.classes) < 1:
        return "--delegates, --tasks, --capacity and --classes must be positive"
    return None


def validate_masker(opts: MaskerOptions) -> str | None:
    if opts.secrets < 1 or opts.megabytes <= 0 or opts.chunk < 1:
        return "--secrets, --megabytes and --chunk must be positive"
    return None

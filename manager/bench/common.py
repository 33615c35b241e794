"""What every task-path benchmark shares: the managers it runs against, submitting tasks,
and the statistics it reports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

from manager.bench.options import BenchOptions

__all__ = [
    "BIN",
    "Managers",
    "connected_delegates",
    "load_average",
    "percentiles",
    "raise_fd_limit",
    "results_by_way",
    "start_managers",
    "submit_tasks",
]

BIN = Path(sys.executable).parent
# A manager that has not said where it listens by then is not going to.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "p50": round(statistics.median(ordered), 3),
        "p95": round(pick(0.95), 3),
        "p99": round(pick(0.99), 3),
    }


def load_average() -> float:
    """The 1-minute load average: on a shared machine, the context of every figure."""
    return round(os.getloadavg()[0], 2)


def raise_fd_limit(needed: int) -> int:
    """Lift the soft limit on open files towards the hard one when ``needed`` is above it, and
    return the limit now in force (managers started afterwards inherit it).

    The limit is per process: N delegates are N sockets in the bench and N in the manager.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return needed if soft == resource.RLIM_INFINITY else soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    return max(soft, target)


@dataclass
class Managers:
    """The managers under test: started here (one or several replicas), or one given by URL."""

    urls: list[str]
    api_key: str
    ca_file: Path | None
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    _drains: list[asyncio.Task[None]] = field(default_factory=list)
    _ps: list[psutil.Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                self._ps.append(psutil.Process(proc.pid))

    @property
    def started(self) -> bool:
        return bool(self.procs)

    def cpu_s(self) -> float:
        """User and system CPU of every manager process so far."""
        return sum(sum(p.cpu_times()[:2]) for p in self._ps)

    def rss_mib(self) -> list[float]:
        return [round(p.memory_info().rss / 2**20, 1) for p in self._ps]

    async def stop(self) -> None:
        async def stop_one(proc: asyncio.subprocess.Process) -> None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

        await asyncio.gather(*(stop_one(p) for p in self.procs))
        for t in self._drains:
            t.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)


def _manager_argv(opts: BenchOptions, data_dir: Path) -> list[str]:
    argv = [
        str(BIN / "tether-manager"),
        "serve",
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
        "--log-level",
        "warning",
        "--log-format",
        "json",
        "--time-scale",
        str(opts.time_scale),
    ]
    if opts.database:
        argv += ["--database", opts.database]
    return argv


async def _drain(stream: asyncio.StreamReader) -> None:
    # A full pipe would block the manager; nothing more on stdout is of interest.
    while await stream.read(65536):
        pass


async def _start_one(
    opts: BenchOptions, data_dir: Path, log_path: Path
) -> tuple[asyncio.subprocess.Process, str, asyncio.Task[None]]:
    with log_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *_manager_argv(opts, data_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)).decode()
    except TimeoutError:
        line = ""
    if "listening on" not in line:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        tail = (await asyncio.to_thread(log_path.read_text, errors="replace"))[-2000:]
        raise RuntimeError(f"manager did not start: {line!r}\n{tail}")
    return proc, line.split()[-1], asyncio.create_task(_drain(proc.stdout))


async def start_managers(opts: BenchOptions, root: Path) -> Managers:
    """Start ``opts.replicas`` managers on one data dir (``root/manager``).

    The first one makes the data dir's TLS material, master key and admin key; the others
    start once it listens, so they all serve the same certificate and share those keys.
    """
    data_dir = root / "manager"
    started: list[tuple[asyncio.subprocess.Process, str, asyncio.Task[None]]] = []
    logs = [root / f"manager-{i}.log" for i in range(opts.replicas)]
    try:
        started.append(await _start_one(opts, data_dir, logs[0]))
        started += await asyncio.gather(*(_start_one(opts, data_dir, log) for log in logs[1:]))
    except BaseException:
        procs, drains = [p for p, _, _ in started], [t for *_, t in started]
        await Managers([], "", None, procs, [], drains).stop()
        raise
    return Managers(
        urls=[url for _, url, _ in started],
        api_key=(data_dir / "admin-api-key").read_text().strip(),
        ca_file=data_dir / "tls" / "ca.pem",
        procs=[p for p, _, _ in started],
        logs=logs,
        _drains=[t for *_, t in started],
    )


async def submit_tasks(
    http: aiohttp.ClientSession,
    urls: list[str],
    headers: dict[str, str],
    body: dict[str, Any],
    *,
    tasks: int,
    concurrency: int,
    rate: float | None,
    on_submitted: Callable[[str, float], None],
    wait: float | None = None,
    on_answer: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Submit ``tasks`` tasks with ``concurrency`` submitters spread round-robin over ``urls``.

    With ``rate``, task i is sent no earlier than i/rate seconds after the start (an open
    schedule, so latency is measured below saturation); without, as fast as answers come.
    ``on_submitted(task_id, sent)`` gets each task with the ``perf_counter`` it was sent at.
    ``wait``: each submit asks to be answered once its task is final (``?wait=``), and
    ``on_answer`` gets the task each answer holds.
    """
    params = None if wait is None else {"wait": repr(wait)}
    indices = iter(range(tasks))
    start = time.perf_counter()

    async def submitter(k: int) -> None:
        url = f"{urls[k % len(urls)]}/api/v1/tasks"
        for i in indices:
            if rate is not None:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent = time.perf_counter()
            async with http.post(url, json=body, headers=headers, params=params) as resp:
                if resp.status != 201:
                    text = await resp.text()
                    raise RuntimeError(f"submit failed: HTTP {resp.status}: {text[:300]}")
                answer = await resp.json()
            on_submitted(answer["id"], sent)
            if on_answer is not None:
                on_answer(answer)

    await asyncio.gather(*(submitter(k) for k in range(concurrency)))


# The HTTPS route a delegate reports a result on, as the request counter labels it.
_RESULT_ROUTE = "/api/v1/delegate/tasks/{task_id}/result"


async def results_by_way(
    http: aiohttp.ClientSession, urls: list[str], headers: dict[str, str]
) -> dict[str, int]:
    """Results the managers took so far, on delegate streams and over HTTPS, from their
    ``/metrics``: a result over HTTPS is a whole request of its own at the manager."""
    counts = {"stream": 0, "https": 0}
    for url in urls:
        async with http.get(f"{url}/metrics", headers=headers) as resp:
            resp.raise_for_status()
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "tether_stream_requests_total" and labels["kind"] == "result":
                    counts["stream"] += int(sample.value)
                elif (
                    sample.name == "tether_api_requests_total"
                    and labels["route"] == _RESULT_ROUTE
                    and labels["method"] == "POST"
                ):
                    counts["https"] += int(sample.value)
    return counts


async def connected_delegates(
    http: aiohttp.ClientSession, urls: list[str], headers: dict[str, str], prefix: str
) -> int:
    """This run's delegates (names starting with ``prefix``) connected or polling on any
    replica. Each replica sees its own at once; a database reused from an earlier run may
    still list that run's delegates for a while, hence the prefix."""
    ids: set[str] = set()
    for url in urls:
        async with http.get(f"{url}/api/v1/delegates", headers=headers) as resp:
            resp.raise_for_status()
            rows = (await resp.json())["delegates"]
        ids.update(
            d["id"]
            for d in rows
            if d["status"] in ("connected", "polling") and d["name"].startswith(prefix)
        )
    return len(ids)

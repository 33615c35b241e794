"""What concurrent readers of a large log cost the manager: its peak memory, and how long
``/healthz`` takes to answer while they read.

A manager is started, a simulated delegate fills one task's log with long lines over the
delegate API (heartbeats keep its lease), then ``readers`` clients page through the whole
log at once, each asking for the most lines a page may hold. Meanwhile the manager's RSS is
sampled and ``/healthz`` probed on a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from manager.bench.common import Managers, load_average, percentiles, start_managers
from manager.bench.options import BenchOptions, LogReadOptions
from manager.bench.sim import SimBench, SimDelegate
from shared.limits import MAX_LOG_BATCH_BYTES, MAX_LOG_BATCH_LINES
from shared.tls import client_context

__all__ = ["run_log_read_bench"]

# The most lines a page may hold (manager.api.tasks.LOG_PAGE_MAX): the worst case for memory.
PAGE_LINES = 5000
# Log batches posted at once while filling.
FILLERS = 4
SAMPLE_S = 0.02
PROBE_S = 0.1


async def run_log_read_bench(opts: LogReadOptions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        managers = await start_managers(BenchOptions(database=opts.database), Path(tmp))
        try:
            return await _measure(opts, managers)
        finally:
            await managers.stop()


async def _measure(opts: LogReadOptions, managers: Managers) -> dict[str, Any]:
    bench = SimBench(BenchOptions(capacity=1), managers)
    try:
        url = managers.urls[0]
        await bench.create_token()
        delegate = SimDelegate(f"{bench.prefix}logs", bench, url)
        await delegate.register()
        fill_start = time.perf_counter()
        task_id = await _fill(bench, delegate, opts)
        fill_s = time.perf_counter() - fill_start
    finally:
        await bench.close()
    proc = psutil.Process(managers.procs[0].pid)
    before = proc.memory_info().rss
    out: dict[str, Any] = {
        "bench": "log_reads",
        "database": "postgresql" if opts.database else "sqlite",
        "readers": opts.readers,
        "lines": opts.lines,
        "line_bytes": opts.line_bytes,
        "log_mib": round(opts.lines * opts.line_bytes / 2**20, 1),
        "fill_s": round(fill_s, 1),
        "loadavg_1m": {"start": load_average()},
    }
    peak = [before]
    # The kernel's own high-water mark, from here on: a peak between two samples counts too.
    exact = _reset_peak(proc.pid)
    latencies: list[float] = []
    done = asyncio.Event()
    ssl = client_context(managers.ca_file)
    headers = {"Authorization": f"Bearer {managers.api_key}"}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl, limit=1)) as probe,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl, limit=opts.readers),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=300),
        ) as http,
    ):
        watchers = [
            asyncio.create_task(_sample(proc, peak, done)),
            asyncio.create_task(_probe(probe, url, latencies, done)),
        ]
        start = time.perf_counter()
        try:
            results = await asyncio.gather(
                *(_read_all(http, url, headers, task_id) for _ in range(opts.readers))
            )
        finally:
            elapsed = time.perf_counter() - start
            done.set()
            await asyncio.gather(*watchers)
    if exact:
        peak[0] = max(peak[0], _peak(proc.pid) or 0)
    mib = 2**20
    read = sum(r["bytes"] for r in results)
    out.update(
        {
            "read_s": round(elapsed, 2),
            "read_mib_per_s": round(read / mib / elapsed, 1),
            "pages_per_reader": results[0]["pages"],
            "lines_per_reader": results[0]["lines"],
            "manager_rss_mib": {
                "before": round(before / mib, 1),
                "peak": round(peak[0] / mib, 1),
                "after": round(proc.memory_info().rss / mib, 1),
            },
            "healthz_ms": {**percentiles(latencies), "max": round(max(latencies, default=0), 1)},
            "healthz_probes": len(latencies),
        }
    )
    out["loadavg_1m"]["end"] = load_average()
    if any(r["lines"] != opts.lines for r in results):
        raise RuntimeError(f"a reader got {[r['lines'] for r in results]} lines, not {opts.lines}")
    return out


async def _fill(bench: SimBench, delegate: SimDelegate, opts: LogReadOptions) -> str:
    """One running task with ``opts.lines`` lines of ``opts.line_bytes`` characters each."""
    url = delegate.url
    auth = {"Authorization": f"Bearer {delegate.credential}"}
    body = {"payload": {"type": "shell", "script": "true"}, "selectors": ["bench"]}
    async with bench.http.post(f"{url}/api/v1/tasks", json=body, headers=bench.user()) as resp:
        if resp.status != 201:
            raise RuntimeError(f"submit failed: HTTP {resp.status}: {await resp.text()}")
        task_id: str = (await resp.json())["id"]
    base = f"{url}/api/v1/delegate/tasks/{task_id}"
    async with bench.http.post(f"{base}/acquire", headers=auth) as resp:
        if resp.status != 200:
            raise RuntimeError(f"acquire failed: HTTP {resp.status}: {await resp.text()}")
        attempt = (await resp.json())["attempt"]
    beats = asyncio.create_task(_heartbeats(bench, delegate, task_id))
    per_batch = max(1, min(MAX_LOG_BATCH_LINES, MAX_LOG_BATCH_BYTES // (opts.line_bytes + 100)))
    batches = iter(range(0, opts.lines, per_batch))

    async def filler() -> None:
        for first in batches:
            seqs = range(first, min(first + per_batch, opts.lines))
            lines = [
                {"seq": s, "stream": "stdout", "ts": time.time(), "text": _text(s, opts)}
                for s in seqs
            ]
            async with bench.http.post(
                f"{base}/logs", json={"attempt": attempt, "lines": lines}, headers=auth
            ) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"log batch refused: HTTP {resp.status}")

    try:
        await asyncio.gather(*(filler() for _ in range(FILLERS)))
        result = {"attempt": attempt, "status": "succeeded", "exit_code": 0}
        async with bench.http.post(f"{base}/result", json=result, headers=auth) as resp:
            if resp.status != 200:
                raise RuntimeError(f"result refused: HTTP {resp.status}")
    finally:
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats
    return task_id


def _text(seq: int, opts: LogReadOptions) -> str:
    return f"line {seq} ".ljust(opts.line_bytes, "x")


async def _heartbeats(bench: SimBench, delegate: SimDelegate, task_id: str) -> None:
    """What keeps the task's lease while its log is filled."""
    seq = 0
    auth = {"Authorization": f"Bearer {delegate.credential}", "Content-Type": "application/json"}
    while True:
        seq += 1
        beat = {"type": "heartbeat", "seq": seq, "running": [task_id], "free_slots": 0}
        async with bench.http.post(
            f"{delegate.url}/api/v1/delegate/heartbeat", data=json.dumps(beat), headers=auth
        ) as resp:
            await resp.read()
        await asyncio.sleep(delegate.heartbeat_s / 2)


async def _read_all(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], task_id: str
) -> dict[str, int]:
    """Page through the whole log as ``tether task logs`` does, as fast as answers come."""
    cursor = ""
    pages = lines = size = 0
    while True:
        params = {"limit": str(PAGE_LINES), **({"after": cursor} if cursor else {})}
        async with http.get(
            f"{url}/api/v1/tasks/{task_id}/logs", params=params, headers=headers
        ) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"log page refused: HTTP {resp.status}: {raw[:300]!r}")
        page = json.loads(raw)
        if not page["lines"]:
            return {"pages": pages, "lines": lines, "bytes": size}
        pages += 1
        lines += len(page["lines"])
        size += len(raw)
        cursor = page["cursor"]


def _reset_peak(pid: int) -> bool:
    """Start the process's peak RSS (VmHWM) afresh: Linux only, as its owner."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak(pid: int) -> int | None:
    """The process's peak RSS in bytes (VmHWM), or None where there is none."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for row in status.splitlines():
        if row.startswith("VmHWM:"):
            return int(row.split()[1]) * 1024
    return None


async def _sample(proc: psutil.Process, peak: list[int], done: asyncio.Event) -> None:
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), SAMPLE_S)


async def _probe(
    http: aiohttp.ClientSession, url: str, latencies: list[float], done: asyncio.Event
) -> None:
    while not done.is_set():
        sent = time.perf_counter()
        async with http.get(f"{url}/healthz") as resp:
            await resp.read()
        latencies.append((time.perf_counter() - sent) * 1000)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), PROBE_S)

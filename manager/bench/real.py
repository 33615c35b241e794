"""Real ``tether-delegate`` processes running real shell tasks: the whole path.

The figure includes what simulated delegates skip: spawning the task's process, masking
its output, shipping its log and result. Completion is awaited through the public API: by
default each submit waits for its task (``POST /api/v1/tasks?wait=``, answered with the
final task: one request a task, as a caller that wants the result makes it); with
``--results follow`` each task is submitted, then followed (``GET
/api/v1/tasks/{id}/logs/follow``, whose last line carries the finished task), the way to
count its log lines too. Latencies come from the task's own timestamps, all on the
manager's clock:

    started: created_at -> started_at (acquired)     result: created_at -> finished_at

With ``--sequential`` each task is submitted once the one before has finished, and
``sequential_result_ms`` is submit -> result on this client's clock: one task alone, as the
caller of a plain task queue sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from manager.api.task_wait import MAX_WAIT_S
from manager.bench.common import (
    BIN,
    Managers,
    connected_delegates,
    load_average,
    percentiles,
    results_by_way,
    submit_tasks,
)
from manager.bench.options import BenchOptions
from shared.protocol import FINAL_STATES
from shared.tls import client_context

__all__ = ["run_real"]

CONNECT_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

_FINAL = frozenset(state.value for state in FINAL_STATES)


@dataclass
class RealDelegate:
    """One ``tether-delegate run`` child; connected once it logs its channel mode."""

    name: str
    proc: asyncio.subprocess.Process
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    mode: str = ""
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=30))
    pump: asyncio.Task[None] | None = None

    async def read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.tail.append(text)
            if not self.connected.is_set() and '"channel mode"' in text:
                with contextlib.suppress(ValueError):
                    self.mode = str(json.loads(text).get("mode", ""))
                self.connected.set()

    async def until_connected(self) -> None:
        assert self.pump is not None
        waiter = asyncio.ensure_future(self.connected.wait())
        done, _ = await asyncio.wait(
            {waiter, self.pump}, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if not self.connected.is_set():
            waiter.cancel()
            what = "exited" if self.pump in done else "did not connect"
            raise RuntimeError(f"delegate {self.name} {what}:\n" + "\n".join(self.tail))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.pump is not None:
            self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.pump


class RealBench:
    def __init__(self, opts: BenchOptions, managers: Managers, root: Path) -> None:
        self.opts = opts
        self.managers = managers
        self.root = root
        # Tasks go to this run's delegates only, whatever else the manager has connected.
        self.selector = f"bench-real-{secrets.token_hex(4)}"
        self.delegates: list[RealDelegate] = []
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                ssl=client_context(managers.ca_file), limit=2 * opts.concurrency + 20
            ),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=60),
        )

    def user(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.managers.api_key}"}

    async def _token(self, name: str) -> str:
        async with self.http.post(
            f"{self.managers.urls[0]}/api/v1/tokens", json={"name": name}, headers=self.user()
        ) as resp:
            resp.raise_for_status()
            return str((await resp.json())["token"])

    async def start_delegate(self, i: int) -> RealDelegate:
        name = f"{self.selector}-{i}"
        urls = self.managers.urls
        argv = [
            str(BIN / "tether-delegate"),
            "run",
            "--manager-url",
            urls[i % len(urls)],
            "--name",
            name,
            "--selector",
            self.selector,
            "--max-tasks",
            str(self.opts.capacity),
            "--data-dir",
            str(self.root / f"delegate-{i}"),
            "--log-format",
            "json",
            "--log-level",
            "info",
            "--time-scale",
            str(self.opts.time_scale),
            # A benchmark host has no task users; the tasks are the benchmark's own script.
            "--shared-user",
        ]
        if self.managers.ca_file is not None:
            argv += ["--ca-file", str(self.managers.ca_file)]
        env = {**os.environ, "TETHER_TOKEN": await self._token(name)}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        delegate = RealDelegate(name, proc)
        self.delegates.append(delegate)
        delegate.pump = asyncio.create_task(delegate.read_stderr())
        return delegate

    async def submit(self, url: str, body: dict[str, Any], *, wait: bool) -> dict[str, Any]:
        """The submit's answer: the task as queued, or with ``wait`` as it is once final (or
        when the longest wait ran out)."""
        params = {"wait": repr(MAX_WAIT_S)} if wait else None
        async with self.http.post(
            f"{url}/api/v1/tasks", json=body, headers=self.user(), params=params
        ) as resp:
            if resp.status != 201:
                raise RuntimeError(f"submit failed: HTTP {resp.status}: {await resp.text()}")
            answer: dict[str, Any] = await resp.json()
            return answer

    async def finished(
        self, url: str, answer: dict[str, Any], stats: dict[str, int]
    ) -> dict[str, Any]:
        """The final view of the task a submit answered: that answer when it is final
        already (a submit that waited), else the end of a follow."""
        if answer["state"] in _FINAL:
            return answer
        return await self.follow(str(answer["id"]), url, stats)

    async def follow(self, task_id: str, url: str, stats: dict[str, int]) -> dict[str, Any]:
        """Wait for ``task_id`` to finish; its final view, with its log lines counted."""
        async with self.http.get(
            f"{url}/api/v1/tasks/{task_id}/logs/follow", headers=self.user()
        ) as resp:
            resp.raise_for_status()
            task: dict[str, Any] | None = None
            # Read on to the stream's end (the server closes it right after the end line):
            # a response left unread closes its connection, and the next request would pay
            # a new TLS handshake on both sides.
            async for raw in resp.content:
                frame = json.loads(raw)
                if frame["kind"] == "log":
                    stats["log_lines"] += 1
                    stats["log_bytes"] += len(frame["line"]["text"].encode())
                elif frame["kind"] == "end":
                    task = frame["task"]
        if task is None:
            raise RuntimeError(f"the follow stream of {task_id} ended before the task did")
        return task

    async def close(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.delegates))
        await self.http.close()


async def run_real(opts: BenchOptions, managers: Managers, root: Path) -> dict[str, Any]:
    bench = RealBench(opts, managers, root)
    try:
        return await _measure(bench, opts, managers)
    finally:
        await bench.close()


async def _measure(bench: RealBench, opts: BenchOptions, managers: Managers) -> dict[str, Any]:
    delegates = [await bench.start_delegate(i) for i in range(opts.real_delegates)]
    await asyncio.gather(*(d.until_connected() for d in delegates))
    ps = [psutil.Process(d.proc.pid) for d in delegates]
    me = psutil.Process()

    def delegate_cpu() -> tuple[float, float]:
        # (the delegates' own, their tasks' processes': counted once they are reaped)
        times = [p.cpu_times() for p in ps]
        own = sum(t.user + t.system for t in times)
        return own, sum(t.children_user + t.children_system for t in times)

    out: dict[str, Any] = {
        "bench": "real",
        "real_delegates": opts.real_delegates,
        "delegate_modes": sorted({d.mode for d in delegates}),
        "capacity": opts.capacity,
        "script": opts.script,
        "interpreter": opts.interpreter,
        "replicas": len(managers.urls),
        "database": "postgresql" if opts.database else "sqlite",
        "loadavg_1m": {"start": load_average()},
    }
    ways0 = await results_by_way(bench.http, managers.urls, bench.user())
    cpu0, dcpu0, bcpu0 = managers.cpu_s(), delegate_cpu(), sum(me.cpu_times()[:2])
    payload = {"type": "shell", "script": opts.script, "interpreter": opts.interpreter}
    body = {"payload": payload, "selectors": [bench.selector]}
    stats = {"log_lines": 0, "log_bytes": 0}
    out["results"] = opts.results
    if opts.sequential:
        views, seen = await _one_at_a_time(bench, body, stats, opts)
        out["sequential_result_ms"] = percentiles(seen)
    else:
        answers: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(opts.timeout):
                await submit_tasks(
                    bench.http,
                    managers.urls,
                    bench.user(),
                    body,
                    tasks=opts.tasks,
                    concurrency=opts.concurrency,
                    rate=opts.rate,
                    on_submitted=lambda _task_id, _sent: None,
                    wait=MAX_WAIT_S if opts.results == "wait" else None,
                    on_answer=answers.append,
                )
        except TimeoutError:
            raise RuntimeError(
                f"the tasks were not all submitted within {opts.timeout:g} s"
            ) from None
        views = await _finish_all(bench, answers, stats, opts)
    manager_cpu = managers.cpu_s() - cpu0
    created = [v["created_at"] for v in views]
    span = max(v["finished_at"] for v in views) - min(created)
    succeeded = sum(1 for v in views if v["state"] == "succeeded")
    out.update(
        tasks=opts.tasks,
        concurrency=opts.concurrency,
        completed=len(views),
        succeeded=succeeded,
        elapsed_s=round(span, 3),
        tasks_per_s=round(len(views) / span, 1) if span > 0 else 0.0,
        started_latency_ms=percentiles(
            [(v["started_at"] - v["created_at"]) * 1000 for v in views if v["started_at"]]
        ),
        result_latency_ms=percentiles([(v["finished_at"] - v["created_at"]) * 1000 for v in views]),
        log_lines=stats["log_lines"],
        log_mib=round(stats["log_bytes"] / 2**20, 2),
        delegates_connected=await connected_delegates(
            bench.http, managers.urls, bench.user(), bench.selector
        ),
    )
    ways = await results_by_way(bench.http, managers.urls, bench.user())
    # How the results came: over HTTPS, each is a request of its own at the manager.
    out["results_over"] = {way: ways[way] - ways0[way] for way in ways}
    if opts.rate is not None:
        out["rate"] = opts.rate
    if managers.started:
        out["manager_rss_mib"] = round(sum(managers.rss_mib()), 1)
        out["manager_cpu_s"] = round(manager_cpu, 2)
    own, tasks = (now - then for now, then in zip(delegate_cpu(), dcpu0, strict=True))
    out["delegate_cpu_s"] = round(own + tasks, 2)
    # Per task: the delegates' own work (the figure to cut), apart from what the tasks'
    # processes themselves cost (the shell running the script).
    out["delegate_own_cpu_ms_per_task"] = round(own * 1000 / max(1, len(views)), 2)
    out["task_processes_cpu_ms_per_task"] = round(tasks * 1000 / max(1, len(views)), 2)
    out["delegate_rss_mib"] = round(sum(p.memory_info().rss for p in ps) / 2**20, 1)
    out["bench_cpu_s"] = round(sum(me.cpu_times()[:2]) - bcpu0, 2)
    out["loadavg_1m"]["end"] = load_average()
    if succeeded != len(views):
        failed = next(v for v in views if v["state"] != "succeeded")
        out["first_failure"] = {"state": failed["state"], "error": failed.get("error")}
    return out


async def _one_at_a_time(
    bench: RealBench, body: dict[str, Any], stats: dict[str, int], opts: BenchOptions
) -> tuple[list[dict[str, Any]], list[float]]:
    """Each task submitted once the one before finished; submit -> result as this client
    sees it (ms), as a plain task queue's caller waiting on each result would."""
    url = bench.managers.urls[0]
    views: list[dict[str, Any]] = []
    seen: list[float] = []
    try:
        async with asyncio.timeout(opts.timeout):
            for _ in range(opts.tasks):
                sent = time.perf_counter()
                answer = await bench.submit(url, body, wait=opts.results == "wait")
                views.append(await bench.finished(url, answer, stats))
                seen.append((time.perf_counter() - sent) * 1000)
    except TimeoutError:
        raise RuntimeError(f"the tasks did not all finish within {opts.timeout:g} s") from None
    return views, seen


async def _finish_all(
    bench: RealBench, answers: list[dict[str, Any]], stats: dict[str, int], opts: BenchOptions
) -> list[dict[str, Any]]:
    """The final view of every task submitted: a waited answer as it came, the rest
    followed (all of them with ``--results follow``)."""
    urls = bench.managers.urls
    slots = asyncio.Semaphore(opts.concurrency)

    async def one(i: int, answer: dict[str, Any]) -> dict[str, Any]:
        async with slots:
            return await bench.finished(urls[i % len(urls)], answer, stats)

    try:
        return await asyncio.wait_for(
            asyncio.gather(*(one(i, a) for i, a in enumerate(answers))), opts.timeout
        )
    except TimeoutError:
        raise RuntimeError(f"the tasks did not all finish within {opts.timeout:g} s") from None

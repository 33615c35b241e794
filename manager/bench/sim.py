"""Simulated delegates: the manager's own cost of the task path.

N delegates in this process speak protocol v2 over TLS and finish every task the moment it is
assigned, so what is measured is the manager. They take the real delegate's paths: on the
stream (``--mode stream``) each assignment is acked and its result goes back as a stream
request, as ``tether-delegate`` sends it while its stream is up; a poller
(``--mode poll``) takes one assignment a long-poll and posts its result over HTTPS. Latencies
are taken on this process's clock:

    started: submit sent -> assignment received     result: submit sent -> result answered
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psutil
from websockets.asyncio.client import ClientConnection, connect

from manager.bench.common import (
    Managers,
    connected_delegates,
    load_average,
    percentiles,
    submit_tasks,
)
from manager.bench.options import BenchOptions
from shared.limits import MAX_FRAME_BYTES
from shared.protocol import PROTOCOL_VERSION
from shared.tls import client_context

__all__ = ["SimDelegate", "run_simulated"]

# Register and connect this many delegates at a time: a burst of thousands of TLS
# handshakes at once would measure the handshake queue, not the steady state.
WAVE = 200


@dataclass
class Timeline:
    submitted: dict[str, float] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)
    all_done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0
    # Assignments received, and those declined (a full delegate): one push per task is the
    # design, so more than that is the cost of declines.
    pushes: int = 0
    declines: int = 0
    # Results by the way they went: a refused one (any reply but a recorded result) is
    # counted, never retried, so a run with refusals does not finish.
    results_over: dict[str, int] = field(default_factory=lambda: {"stream": 0, "https": 0})
    refused: int = 0

    def submit(self, task_id: str, sent: float) -> None:
        self.submitted[task_id] = sent

    def done(self, task_id: str) -> None:
        self.finished[task_id] = time.perf_counter()
        if len(self.finished) >= self.expected:
            self.all_done.set()

    def latencies(self, ends: dict[str, float]) -> dict[str, float]:
        return percentiles(
            [(ends[t] - sent) * 1000 for t, sent in self.submitted.items() if t in ends]
        )


class SimBench:
    """What the simulated delegates share: the HTTP client, the token, the timeline."""

    def __init__(self, opts: BenchOptions, managers: Managers) -> None:
        self.opts = opts
        self.managers = managers
        self.ssl = client_context(managers.ca_file)
        self.token = ""
        # Names of this run's delegates start with it (a reused database has older ones).
        self.prefix = f"bench-{secrets.token_hex(4)}-"
        self.timeline = Timeline(expected=opts.tasks)
        self.background: set[asyncio.Task[None]] = set()
        polls = 2 * opts.delegates if opts.mode == "poll" else 0
        # Idle delegates only register over HTTPS: a small pool leaves the file descriptors
        # (one a stream, on each side) to the streams when their count nears the limit.
        pool = 32 if opts.idle else 2 * opts.concurrency + polls + 100
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl, limit=pool),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=60),
        )

    def user(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.managers.api_key}"}

    async def create_token(self) -> None:
        name = self.prefix.rstrip("-")
        async with self.http.post(
            f"{self.managers.urls[0]}/api/v1/tokens", json={"name": name}, headers=self.user()
        ) as resp:
            resp.raise_for_status()
            self.token = (await resp.json())["token"]

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def close(self) -> None:
        for t in list(self.background):
            t.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.http.close()


class SimDelegate:
    """Speaks protocol v2 to one replica and completes each task assigned with exit code 0."""

    def __init__(self, name: str, bench: SimBench, url: str) -> None:
        self.name = name
        self.bench = bench
        self.url = url
        self.credential = ""
        self.heartbeat_s = 10.0
        self.poll_wait_s = 25.0
        self.running: set[str] = set()
        self.connected = asyncio.Event()
        self.key = secrets.token_urlsafe(16)
        self.freed = asyncio.Event()
        # The stream while it is up, and its requests awaiting a reply (id -> task id).
        self.ws: ClientConnection | None = None
        self.requests: dict[int, str] = {}
        self.request_ids = itertools.count()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"}

    async def register(self) -> None:
        body = {
            "name": self.name,
            "hostname": "bench",
            "version": "bench",
            "protocol_version": PROTOCOL_VERSION,
            "selectors": ["bench"],
            "capacity": self.bench.opts.capacity,
            "task_types": ["shell"],
            "public_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        }
        async with self.bench.http.post(
            f"{self.url}/api/v1/delegate/register",
            json=body,
            headers={"Authorization": f"Bearer {self.bench.token}"},
        ) as resp:
            resp.raise_for_status()
            data = await resp.json()
        self.credential = data["session_token"]
        self.heartbeat_s = data["heartbeat_interval_s"]
        self.poll_wait_s = data["poll_wait_s"]

    def run(self) -> Coroutine[Any, Any, None]:
        return self.run_stream() if self.bench.opts.mode == "stream" else self.run_poll()

    def _heartbeat(self, seq: int) -> str:
        free = self.bench.opts.capacity - len(self.running)
        return json.dumps(
            {"type": "heartbeat", "seq": seq, "running": sorted(self.running), "free_slots": free}
        )

    async def run_stream(self) -> None:
        url = "wss://" + self.url.removeprefix("https://") + "/api/v1/delegate/stream"
        async with connect(
            url,
            ssl=self.bench.ssl,
            additional_headers=self._auth(),
            compression=None,
            ping_interval=None,
            max_size=MAX_FRAME_BYTES,
            open_timeout=60,
        ) as ws:
            await ws.send(json.dumps({"type": "hello", "key": self.key, "running": []}))
            await ws.recv()
            self.ws = ws
            self.connected.set()
            beats = asyncio.create_task(self._stream_beats(ws))
            try:
                async for raw in ws:
                    frame = json.loads(raw)
                    if frame["type"] == "reply":
                        self._replied(frame)
                    elif frame["type"] == "assignment":
                        handed = frame["assignment"]
                        task_id, attempt = handed["task"]["id"], handed["attempt"]
                        self.bench.timeline.pushes += 1
                        if self._take(task_id, attempt):
                            answer = {"type": "ack", "task_id": task_id, "attempt": attempt}
                        else:
                            self.bench.timeline.declines += 1
                            answer = {
                                "type": "decline",
                                "task_id": task_id,
                                "attempt": attempt,
                                "reason": "full",
                            }
                        await ws.send(json.dumps(answer))
            finally:
                self.ws = None
                beats.cancel()

    def _replied(self, frame: dict[str, Any]) -> None:
        task_id = self.requests.pop(frame["id"], None)
        if task_id is None:
            return
        self.running.discard(task_id)
        self.freed.set()
        if frame.get("result") is not None:
            self.bench.timeline.results_over["stream"] += 1
            self.bench.timeline.done(task_id)
        else:
            self.bench.timeline.refused += 1

    async def _stream_beats(self, ws: ClientConnection) -> None:
        seq = 0
        while True:
            await asyncio.sleep(self.heartbeat_s)
            seq += 1
            await ws.send(self._heartbeat(seq))

    async def run_poll(self) -> None:
        self.connected.set()
        beats = asyncio.create_task(self._poll_beats())
        try:
            while True:
                # A poll's answer is claimed for it: ask only with a free slot.
                while len(self.running) >= self.bench.opts.capacity:
                    self.freed.clear()
                    await self.freed.wait()
                async with self.bench.http.get(
                    f"{self.url}/api/v1/delegate/tasks/next",
                    params={"wait": str(self.poll_wait_s), "key": self.key},
                    headers=self._auth(),
                ) as resp:
                    if resp.status == 200:
                        handed = await resp.json()
                        self.bench.timeline.pushes += 1
                        self._take(handed["task"]["id"], handed["attempt"])
        finally:
            beats.cancel()

    async def _poll_beats(self) -> None:
        seq = 0
        while True:
            seq += 1
            async with self.bench.http.post(
                f"{self.url}/api/v1/delegate/heartbeat",
                data=self._heartbeat(seq),
                headers={**self._auth(), "Content-Type": "application/json"},
            ) as resp:
                await resp.read()
            await asyncio.sleep(self.heartbeat_s)

    def _take(self, task_id: str, attempt: int) -> bool:
        if task_id in self.running:
            return True  # pushed again after a lost ack: it runs here
        if len(self.running) >= self.bench.opts.capacity:
            return False
        self.running.add(task_id)
        self.bench.timeline.started.setdefault(task_id, time.perf_counter())
        self.bench.spawn(self._complete(task_id, attempt))
        return True

    async def _complete(self, task_id: str, attempt: int) -> None:
        base = f"{self.url}/api/v1/delegate/tasks/{task_id}"
        timeline = self.bench.timeline
        result = {"attempt": attempt, "status": "succeeded", "exit_code": 0}
        await asyncio.sleep(0)  # the ack goes out first
        ws = self.ws
        if ws is not None:
            # The slot frees when the reply comes (_replied), as the real delegate's does.
            request_id = next(self.request_ids)
            self.requests[request_id] = task_id
            frame = {"type": "result", "id": request_id, "task_id": task_id, "result": result}
            await ws.send(json.dumps(frame))
            return
        try:
            async with self.bench.http.post(
                f"{base}/result", json=result, headers=self._auth()
            ) as resp:
                if resp.status == 200:
                    timeline.results_over["https"] += 1
                    timeline.done(task_id)
                else:
                    timeline.refused += 1
        finally:
            self.running.discard(task_id)
            self.freed.set()


async def _until_connected(sim: SimDelegate, runner: asyncio.Task[None]) -> None:
    waiter = asyncio.ensure_future(sim.connected.wait())
    await asyncio.wait({waiter, runner}, return_when=asyncio.FIRST_COMPLETED)
    if not sim.connected.is_set():
        waiter.cancel()
        runner.result()  # its error, if it failed
        raise RuntimeError(f"{sim.name} stopped before it connected")


async def _connect(sims: list[SimDelegate]) -> list[asyncio.Task[None]]:
    runners: list[asyncio.Task[None]] = []
    try:
        for i in range(0, len(sims), WAVE):
            wave = sims[i : i + WAVE]
            await asyncio.gather(*(s.register() for s in wave))
            tasks = [asyncio.create_task(s.run()) for s in wave]
            runners += tasks
            await asyncio.gather(
                *(_until_connected(s, t) for s, t in zip(wave, tasks, strict=True))
            )
    except BaseException:
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        raise
    return runners


async def run_simulated(opts: BenchOptions, managers: Managers) -> dict[str, Any]:
    bench = SimBench(opts, managers)
    try:
        return await _measure(bench, opts, managers)
    finally:
        await bench.close()


async def _measure(bench: SimBench, opts: BenchOptions, managers: Managers) -> dict[str, Any]:
    await bench.create_token()
    urls = managers.urls
    sims = [
        SimDelegate(f"{bench.prefix}{i}", bench, urls[i % len(urls)]) for i in range(opts.delegates)
    ]
    runners = await _connect(sims)
    me = psutil.Process()
    out: dict[str, Any] = {
        "bench": "idle" if opts.idle else "simulated",
        "mode": opts.mode,
        "delegates": opts.delegates,
        "replicas": len(urls),
        "database": "postgresql" if opts.database else "sqlite",
        "loadavg_1m": {"start": load_average()},
    }
    cpu0, bench_cpu0 = managers.cpu_s(), sum(me.cpu_times()[:2])
    try:
        if opts.idle:
            await asyncio.sleep(opts.idle)
            out["idle_s"] = opts.idle
        else:
            out.update(await _submit_and_wait(bench, opts, urls))
        failed = sum(1 for r in runners if r.done() and not r.cancelled() and r.exception())
        if failed:
            out["delegates_failed"] = failed
        out["delegates_connected"] = await connected_delegates(
            bench.http, urls, bench.user(), bench.prefix
        )
        if managers.started:
            rss = managers.rss_mib()
            out["manager_rss_mib"] = round(sum(rss), 1)
            out["manager_cpu_s"] = round(managers.cpu_s() - cpu0, 2)
            if len(rss) > 1:
                out["replica_rss_mib"] = rss
        out["bench_cpu_s"] = round(sum(me.cpu_times()[:2]) - bench_cpu0, 2)
        out["loadavg_1m"]["end"] = load_average()
    finally:
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
    return out


async def _submit_and_wait(bench: SimBench, opts: BenchOptions, urls: list[str]) -> dict[str, Any]:
    tl = bench.timeline
    body = {"payload": {"type": "shell", "script": "true"}, "selectors": ["bench"]}
    start = time.perf_counter()
    await submit_tasks(
        bench.http,
        urls,
        bench.user(),
        body,
        tasks=opts.tasks,
        concurrency=opts.concurrency,
        rate=opts.rate,
        on_submitted=tl.submit,
    )
    try:
        await asyncio.wait_for(tl.all_done.wait(), opts.timeout)
    except TimeoutError:
        raise RuntimeError(
            f"only {len(tl.finished)} of {opts.tasks} tasks finished within {opts.timeout:g} s"
        ) from None
    elapsed = time.perf_counter() - start
    out: dict[str, Any] = {
        "tasks": opts.tasks,
        "concurrency": opts.concurrency,
        "completed": len(tl.finished),
        "elapsed_s": round(elapsed, 3),
        "tasks_per_s": round(opts.tasks / elapsed, 1),
        "started_latency_ms": tl.latencies(tl.started),
        "result_latency_ms": tl.latencies(tl.finished),
        "pushes_per_task": round(tl.pushes / opts.tasks, 2),
        "declines": tl.declines,
        "results_over": tl.results_over,
    }
    if tl.refused:
        out["results_refused"] = tl.refused
    if opts.rate is not None:
        out["rate"] = opts.rate
    return out

"""``tether bench``: the task path under load, measured end to end.

N simulated delegates in this process speak the real protocol over TLS (register, the
WebSocket stream or HTTPS polling, acquire, result) and finish every task at once, so the
figures are the manager's own cost. M no-op tasks are submitted at concurrency C through
the public API. Latencies are taken on this process's clock:

    started: submit sent -> acquire answered     result: submit sent -> result answered

The last line printed is one JSON object. ``--idle S`` instead holds N delegates that only
heartbeat for S seconds and reports the manager's memory and CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import secrets
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from websockets.asyncio.client import connect

from shared.limits import MAX_FRAME_BYTES
from shared.protocol import PROTOCOL_VERSION
from shared.tls import client_context

__all__ = ["BenchOptions", "run_bench"]


@dataclass
class BenchOptions:
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
    # Passed to a manager the bench starts itself (heartbeats as in production by default).
    time_scale: float = 1.0


@dataclass
class Timeline:
    submitted: dict[str, float] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)
    all_done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    def done(self, task_id: str) -> None:
        self.finished[task_id] = time.perf_counter()
        if len(self.finished) >= self.expected:
            self.all_done.set()


class SimDelegate:
    """Speaks protocol v1 and completes each task it wins with exit code 0."""

    def __init__(self, name: str, bench: Bench) -> None:
        self.name = name
        self.bench = bench
        self.credential = ""
        self.heartbeat_s = 10.0
        self.poll_wait_s = 25.0
        self.running: set[str] = set()
        self.connected = asyncio.Event()

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
            f"{self.bench.url}/api/v1/delegate/register",
            json=body,
            headers={"Authorization": f"Bearer {self.bench.token}"},
        ) as resp:
            resp.raise_for_status()
            data = await resp.json()
        self.credential = data["session_token"]
        self.heartbeat_s = data["heartbeat_interval_s"]
        self.poll_wait_s = data["poll_wait_s"]

    def _heartbeat(self, seq: int) -> str:
        free = self.bench.opts.capacity - len(self.running)
        return json.dumps(
            {"type": "heartbeat", "seq": seq, "running": sorted(self.running), "free_slots": free}
        )

    async def run_stream(self) -> None:
        url = "wss://" + self.bench.url.removeprefix("https://") + "/api/v1/delegate/stream"
        async with connect(
            url,
            ssl=self.bench.ssl,
            additional_headers=self._auth(),
            compression=None,
            ping_interval=None,
            max_size=MAX_FRAME_BYTES,
            open_timeout=60,
        ) as ws:
            await ws.send(json.dumps({"type": "hello", "running": []}))
            await ws.recv()
            self.connected.set()
            beats = asyncio.create_task(self._stream_beats(ws))
            try:
                async for raw in ws:
                    frame = json.loads(raw)
                    if frame["type"] == "task_available":
                        self._spawn(frame["task_id"])
            finally:
                beats.cancel()

    async def _stream_beats(self, ws: Any) -> None:
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
                async with self.bench.http.get(
                    f"{self.bench.url}/api/v1/delegate/tasks/next",
                    params={"wait": str(self.poll_wait_s)},
                    headers=self._auth(),
                ) as resp:
                    if resp.status == 200:
                        self._spawn((await resp.json())["task_id"])
        finally:
            beats.cancel()

    async def _poll_beats(self) -> None:
        seq = 0
        while True:
            seq += 1
            async with self.bench.http.post(
                f"{self.bench.url}/api/v1/delegate/heartbeat",
                data=self._heartbeat(seq),
                headers={**self._auth(), "Content-Type": "application/json"},
            ) as resp:
                await resp.read()
            await asyncio.sleep(self.heartbeat_s)

    def _spawn(self, task_id: str) -> None:
        if task_id in self.running or len(self.running) >= self.bench.opts.capacity:
            return
        self.running.add(task_id)
        task = asyncio.get_running_loop().create_task(self._complete(task_id))
        self.bench.background.add(task)
        task.add_done_callback(self.bench.background.discard)

    async def _complete(self, task_id: str) -> None:
        base = f"{self.bench.url}/api/v1/delegate/tasks/{task_id}"
        try:
            async with self.bench.http.post(f"{base}/acquire", headers=self._auth()) as resp:
                if resp.status != 200:
                    return
                attempt = (await resp.json())["attempt"]
            self.bench.timeline.started[task_id] = time.perf_counter()
            result = {"attempt": attempt, "status": "succeeded", "exit_code": 0}
            async with self.bench.http.post(
                f"{base}/result", json=result, headers=self._auth()
            ) as resp:
                if resp.status == 200:
                    self.bench.timeline.done(task_id)
        finally:
            self.running.discard(task_id)


class Bench:
    def __init__(self, opts: BenchOptions, url: str, api_key: str, ssl_ctx: Any) -> None:
        self.opts = opts
        self.url = url
        self.api_key = api_key
        self.ssl = ssl_ctx
        self.token = ""
        self.timeline = Timeline(expected=opts.tasks)
        self.background: set[asyncio.Task[None]] = set()
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=max(100, opts.concurrency * 2)),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=60),
        )

    def user(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    async def create_token(self) -> None:
        name = f"bench-{secrets.token_hex(4)}"
        async with self.http.post(
            f"{self.url}/api/v1/tokens", json={"name": name}, headers=self.user()
        ) as resp:
            resp.raise_for_status()
            self.token = (await resp.json())["token"]

    async def submit_all(self) -> float:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(self.opts.tasks):
            queue.put_nowait(i)
        body = {"payload": {"type": "shell", "script": "true"}, "selectors": ["bench"]}

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                sent = time.perf_counter()
                async with self.http.post(
                    f"{self.url}/api/v1/tasks", json=body, headers=self.user()
                ) as resp:
                    task_id = (await resp.json())["id"]
                self.timeline.submitted[task_id] = sent

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(self.opts.concurrency)))
        await self.timeline.all_done.wait()
        return time.perf_counter() - start


def _percentiles(values: list[float]) -> dict[str, float]:
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


async def _start_manager(
    opts: BenchOptions, data_dir: Path
) -> tuple[asyncio.subprocess.Process, str]:
    argv = [
        str(Path(sys.executable).parent / "tether-manager"),
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
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    if "listening on" not in line:
        raise RuntimeError(f"manager did not start: {line!r}")
    return proc, line.split()[-1]


async def run_bench(opts: BenchOptions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        proc = None
        if opts.manager_url:
            url, api_key, ca = opts.manager_url, opts.api_key or "", opts.ca_file
        else:
            proc, url = await _start_manager(opts, Path(tmp))
            api_key = (Path(tmp) / "admin-api-key").read_text().strip()
            ca = Path(tmp) / "tls" / "ca.pem"
        manager_ps = psutil.Process(proc.pid) if proc else None
        bench = Bench(opts, url, api_key, client_context(ca))
        try:
            return await _measure(bench, opts, manager_ps)
        finally:
            for t in list(bench.background):
                t.cancel()
            await bench.http.close()
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 30)


async def _measure(
    bench: Bench, opts: BenchOptions, manager: psutil.Process | None
) -> dict[str, Any]:
    await bench.create_token()
    sims = [SimDelegate(f"bench-{i}", bench) for i in range(opts.delegates)]
    # Register and connect in waves: a burst of thousands of TLS handshakes at once would
    # measure the handshake queue, not the steady state.
    for i in range(0, len(sims), 200):
        await asyncio.gather(*(s.register() for s in sims[i : i + 200]))
    runners = [
        asyncio.create_task(s.run_stream() if opts.mode == "stream" else s.run_poll()) for s in sims
    ]
    for i in range(0, len(sims), 200):
        await asyncio.gather(*(s.connected.wait() for s in sims[i : i + 200]))
    cpu0 = sum(manager.cpu_times()[:2]) if manager else 0.0
    out: dict[str, Any] = {
        "mode": opts.mode,
        "delegates": opts.delegates,
        "database": opts.database or "sqlite",
    }
    try:
        if opts.idle:
            await asyncio.sleep(opts.idle)
            out["idle_s"] = opts.idle
        else:
            elapsed = await bench.submit_all()
            tl = bench.timeline
            out.update(
                tasks=opts.tasks,
                concurrency=opts.concurrency,
                tasks_per_s=round(opts.tasks / elapsed, 1),
                started_latency_ms=_percentiles(
                    [(tl.started[t] - s) * 1000 for t, s in tl.submitted.items() if t in tl.started]
                ),
                result_latency_ms=_percentiles(
                    [
                        (tl.finished[t] - s) * 1000
                        for t, s in tl.submitted.items()
                        if t in tl.finished
                    ]
                ),
            )
        out["delegates_connected"] = await _connected(bench)
        if manager is not None:
            out["manager_rss_mib"] = round(manager.memory_info().rss / 2**20, 1)
            out["manager_cpu_s"] = round(sum(manager.cpu_times()[:2]) - cpu0, 2)
    finally:
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
    return out


async def _connected(bench: Bench) -> int:
    async with bench.http.get(f"{bench.url}/api/v1/delegates", headers=bench.user()) as resp:
        rows = (await resp.json())["delegates"]
    return sum(1 for d in rows if d["status"] in ("connected", "polling"))


def bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tether bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--delegates", type=int, default=10, help="simulated delegates (default 10)")
    p.add_argument("--tasks", type=int, default=1000, help="no-op tasks to submit (default 1000)")
    p.add_argument("--concurrency", type=int, default=50, help="submitters at once (default 50)")
    p.add_argument("--mode", choices=("stream", "poll"), default="stream")
    p.add_argument("--capacity", type=int, default=50, help="slots per simulated delegate")
    p.add_argument("--manager-url", help="use this manager instead of starting one")
    p.add_argument("--api-key", help="with --manager-url: an API key that may create tokens")
    p.add_argument("--ca-file", type=Path, help="with --manager-url: its CA")
    p.add_argument("--database", help="with a started manager: postgresql://... instead of SQLite")
    p.add_argument(
        "--idle", type=float, metavar="SECONDS", help="only hold the delegates this long"
    )
    p.add_argument("--time-scale", type=float, default=1.0, help="timings of a started manager")
    return p


def main_bench(argv: list[str]) -> int:
    from shared.runtime import run

    args = bench_parser().parse_args(argv)
    if args.manager_url and not args.api_key:
        print("error: --manager-url needs --api-key", file=sys.stderr)
        return 2
    if min(args.delegates, args.concurrency, args.capacity) < 1 or args.tasks < 0:
        print("error: --delegates, --concurrency and --capacity must be positive", file=sys.stderr)
        return 2
    opts = BenchOptions(**{k: v for k, v in vars(args).items()})
    try:
        result = run(run_bench(opts))
    except (OSError, RuntimeError, aiohttp.ClientError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0

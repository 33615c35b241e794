"""Manager CPU per task for what a delegate reports, over HTTPS vs over its stream.

    .venv/bin/python bench/stream_requests_cost.py [--tasks 500] [--concurrency 16]
        [--database postgresql://...]

Starts one manager (production timings), registers one raw delegate, and for each way in
turn submits ``--tasks`` tasks and acquires them all over HTTPS (not measured). Then it
measures the manager process's user+system CPU while the delegate reports each task: one
log batch of 3 lines and the result, ``--concurrency`` tasks at a time, over HTTPS
(``POST .../logs`` and ``.../result`` on keep-alive connections) or over the stream
(StreamLogs and StreamResult frames answered by StreamReply). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from websockets.asyncio.client import ClientConnection, connect

from manager.bench.common import Managers, load_average, start_managers
from manager.bench.options import BenchOptions
from shared.limits import MAX_FRAME_BYTES, MAX_STREAM_REQUESTS
from shared.protocol import PROTOCOL_VERSION
from shared.tls import client_context

Json = dict[str, Any]


class Reporter:
    def __init__(self, url: str, http: aiohttp.ClientSession, credential: str) -> None:
        self.url = url
        self.http = http
        self.headers = {"Authorization": f"Bearer {credential}"}
        self.ws: ClientConnection | None = None
        self.replies: dict[int, asyncio.Future[Json]] = {}
        self.ids = itertools.count()
        self.held: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def post(self, path: str, body: Json | None) -> Json:
        async with self.http.post(
            f"{self.url}/api/v1/delegate{path}", json=body, headers=self.headers
        ) as resp:
            answer: Json = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{path}: HTTP {resp.status}: {answer}")
            return answer

    async def open_stream(self, ca_file: Path) -> None:
        self.ws = await connect(
            self.url.replace("https://", "wss://") + "/api/v1/delegate/stream",
            ssl=client_context(ca_file),
            additional_headers=self.headers,
            max_size=MAX_FRAME_BYTES,
            compression=None,
            ping_interval=None,
        )
        hello = {"type": "hello", "key": secrets.token_urlsafe(12), "running": []}
        await self.ws.send(json.dumps(hello))
        await self.ws.recv()
        self.tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._beat())]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.ws is not None:
            await self.ws.close()

    async def _read(self) -> None:
        assert self.ws is not None
        async for raw in self.ws:
            frame = json.loads(raw)
            if frame["type"] == "reply":
                self.replies.pop(frame["id"]).set_result(frame)

    async def _beat(self) -> None:
        assert self.ws is not None
        for seq in itertools.count(1):
            await asyncio.sleep(5)
            # The held tasks' leases stay renewed while they wait to be reported.
            frame = {"type": "heartbeat", "seq": seq, "running": self.held[-1000:], "free_slots": 0}
            await self.ws.send(json.dumps(frame))

    async def request(self, frame: Json) -> Json:
        assert self.ws is not None
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self.replies[frame["id"]] = future
        await self.ws.send(json.dumps(frame))
        reply = await future
        if "error" in reply:
            raise RuntimeError(f"stream request refused: {reply}")
        return reply

    async def report_https(self, task_id: str, attempt: int) -> None:
        await self.post(f"/tasks/{task_id}/logs", _batch(attempt))
        await self.post(f"/tasks/{task_id}/result", _result(attempt))

    async def report_stream(self, task_id: str, attempt: int) -> None:
        batch = {"type": "logs", "id": next(self.ids), "task_id": task_id, "batch": _batch(attempt)}
        await self.request(batch)
        result = {"type": "result", "id": next(self.ids), "task_id": task_id}
        await self.request({**result, "result": _result(attempt)})


def _batch(attempt: int) -> Json:
    lines = [{"seq": i, "stream": "stdout", "ts": 1.0, "text": f"line {i}"} for i in range(3)]
    return {"attempt": attempt, "lines": lines}


def _result(attempt: int) -> Json:
    return {"attempt": attempt, "status": "succeeded", "exit_code": 0, "last_seq": 2}


async def _in_parallel(
    items: list[tuple[str, int]], concurrency: int, call: Callable[[str, int], Awaitable[None]]
) -> None:
    queue = iter(items)

    async def worker() -> None:
        for task_id, attempt in queue:
            await call(task_id, attempt)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _held_tasks(
    managers: Managers, http: aiohttp.ClientSession, r: Reporter, name: str, tasks: int
) -> list[tuple[str, int]]:
    url = managers.urls[0]
    admin = {"Authorization": f"Bearer {managers.api_key}"}
    body = {"payload": {"type": "shell", "script": "true"}, "selectors": [name]}
    ids: list[str] = []
    for _ in range(tasks):
        async with http.post(f"{url}/api/v1/tasks", json=body, headers=admin) as resp:
            ids.append((await resp.json())["id"])
    held = []
    for task_id in ids:
        answer = await r.post(f"/tasks/{task_id}/acquire", None)
        held.append((task_id, int(answer["attempt"])))
        r.held.append(task_id)
    return held


async def main(opts: argparse.Namespace) -> Json:
    with tempfile.TemporaryDirectory() as tmp:
        managers = await start_managers(
            BenchOptions(database=opts.database, time_scale=1.0), Path(tmp)
        )
        try:
            return await _measure(managers, opts)
        finally:
            await managers.stop()


async def _measure(managers: Managers, opts: argparse.Namespace) -> Json:
    url = managers.urls[0]
    assert managers.ca_file is not None
    connector = aiohttp.TCPConnector(ssl=client_context(managers.ca_file), limit=64)
    admin = {"Authorization": f"Bearer {managers.api_key}"}
    out: Json = {"tasks": opts.tasks, "concurrency": opts.concurrency}
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(f"{url}/api/v1/tokens", json={"name": "bench"}, headers=admin) as resp:
            token = (await resp.json())["token"]
        key = X25519PrivateKey.generate().public_key().public_bytes_raw()
        name = "cost"
        registration = {
            "name": name,
            "hostname": "bench",
            "version": "bench",
            "protocol_version": PROTOCOL_VERSION,
            "selectors": [name],
            "capacity": 1000,
            "task_types": ["shell"],
            "public_key": base64.b64encode(key).decode(),
        }
        async with http.post(
            f"{url}/api/v1/delegate/register",
            json=registration,
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            credential = (await resp.json())["session_token"]
        r = Reporter(url, http, credential)
        await r.open_stream(managers.ca_file)
        for way, call in (("https", r.report_https), ("stream", r.report_stream)):
            held = await _held_tasks(managers, http, r, name, opts.tasks)
            await asyncio.sleep(1)  # the hints and acquires' after-work settle
            cpu0, wall0 = managers.cpu_s(), time.perf_counter()
            await _in_parallel(held, opts.concurrency, call)
            cpu, wall = managers.cpu_s() - cpu0, time.perf_counter() - wall0
            r.held = []
            out[way] = {
                "manager_cpu_ms_per_task": round(cpu * 1000 / opts.tasks, 3),
                "tasks_per_s": round(opts.tasks / wall, 1),
            }
        await r.close()
    out["load_1m"] = load_average()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--database", default=None)
    args = parser.parse_args()
    if not 1 <= args.concurrency <= MAX_STREAM_REQUESTS:
        parser.error(f"--concurrency: 1 to {MAX_STREAM_REQUESTS} (the stream's bound)")
    print(json.dumps(asyncio.run(main(args))))

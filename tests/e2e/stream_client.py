"""A raw delegate for tests of the stream's requests: registered over HTTPS, a WebSocket
over TLS of its own (protocol v2 hello, with its key), heartbeats listing what it holds.

It speaks the wire format by hand, so a test sends exactly the frames it means to (a stale
attempt, an oversized batch) and reads every frame the manager sends back. Tasks reach it
as the manager pushes them over its stream (acked here), or through the HTTPS acquire route
before its stream is open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from websockets.asyncio.client import ClientConnection, connect

from manager.schemas.tasks import TaskSubmit
from manager.store.factory import SQLITE_FILE
from shared.limits import MAX_FRAME_BYTES
from shared.protocol import PROTOCOL_VERSION, ShellPayload
from shared.tls import client_context
from tests.e2e.conftest import PG, on_store
from tests.e2e.harness import WAIT, Cluster
from tests.faults.support import client, token

Json = dict[str, Any]


class RawDelegate:
    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.key = X25519PrivateKey.generate()
        self.credential = ""
        self.delegate_id = ""
        self.token = ""
        self.heartbeat_interval = 10.0
        self.held: list[str] = []
        self.ws: ClientConnection | None = None
        self.replies: dict[int, asyncio.Future[Json]] = {}
        # Every frame read from the manager, in order (hints and acks included).
        self.frames: list[Json] = []
        self.received = asyncio.Event()
        # Told of every frame read (a test routes replies to a transport under test).
        self.on_frame: Callable[[Json], None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    @property
    def registration(self) -> Json:
        return {
            "name": self.name,
            "hostname": "test",
            "version": "test",
            "protocol_version": PROTOCOL_VERSION,
            "selectors": [self.name],
            "capacity": 100,
            "task_types": ["shell"],
            "public_key": base64.b64encode(self.key.public_key().public_bytes_raw()).decode(),
        }

    async def __aenter__(self) -> RawDelegate:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(self.cluster.ca_file))
        )
        self.token = await token(self.cluster, self.name)
        status, body = await self._post("/register", self.registration, bearer=self.token)
        assert status == 200, body
        self.credential = body["session_token"]
        self.delegate_id = body["delegate_id"]
        self.heartbeat_interval = body["heartbeat_interval_s"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close_stream()
        if self._http is not None:
            await self._http.close()

    # -- HTTPS ----------------------------------------------------------------------------

    async def _post(self, path: str, body: Json | None, *, bearer: str = "") -> tuple[int, Json]:
        assert self._http is not None
        headers = {"Authorization": f"Bearer {bearer or self.credential}"}
        data = None
        if body is not None:
            # A stream of bytes: aiohttp warns of a large body sent from memory at once.
            data = io.BytesIO(json.dumps(body).encode())
            headers["Content-Type"] = "application/json"
        async with self._http.post(
            f"{self.cluster.url}/api/v1/delegate{path}", data=data, headers=headers
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def acquire(self, task_id: str) -> int:
        """The attempt handed to this delegate (its lease is renewed by the heartbeats):
        with its stream open, the assignment the manager pushed, acked; without, the task
        taken through the HTTPS acquire route."""
        if self.ws is not None:
            frame = await self.wait_frame(
                lambda f: f["type"] == "assignment" and f["assignment"]["task"]["id"] == task_id
            )
            attempt = int(frame["assignment"]["attempt"])
            await self.send({"type": "ack", "task_id": task_id, "attempt": attempt})
            self.held.append(task_id)
            return attempt
        status, body = await self._post(f"/tasks/{task_id}/acquire", None)
        assert status == 200, body
        self.held.append(task_id)
        return int(body["attempt"])

    async def https(self, kind: str, task_id: str, body: Json) -> tuple[int, Json]:
        """POST .../logs or .../result: the status and the answer's JSON."""
        return await self._post(f"/tasks/{task_id}/{kind}", body)

    # -- the stream -----------------------------------------------------------------------

    async def open_stream(self) -> None:
        url = self.cluster.url.replace("https://", "wss://") + "/api/v1/delegate/stream"
        self.ws = await connect(
            url,
            ssl=client_context(self.cluster.ca_file),
            additional_headers={"Authorization": f"Bearer {self.credential}"},
            max_size=MAX_FRAME_BYTES,
            compression=None,
            ping_interval=None,
        )
        await self.send({"type": "hello", "key": secrets.token_urlsafe(12), "running": []})
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._beat())]
        await self.wait_frame(lambda f: f["type"] == "heartbeat_ack")

    async def close_stream(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.ws is not None:
            await self.ws.close()
            self.ws = None

    async def send(self, frame: Json) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(frame))

    async def request(self, frame: Json) -> Json:
        """Send a request frame (its ``id`` set) and wait for its reply."""
        future = self.expect(frame["id"])
        await self.send(frame)
        async with asyncio.timeout(WAIT):
            return await future

    def expect(self, id_: int) -> asyncio.Future[Json]:
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self.replies[id_] = future
        return future

    async def wait_frame(self, check: Any) -> Json:
        async with asyncio.timeout(WAIT):
            while True:
                found = next((f for f in self.frames if check(f)), None)
                if found is not None:
                    return found
                self.received.clear()
                await self.received.wait()

    async def _read(self) -> None:
        assert self.ws is not None
        async for raw in self.ws:
            frame = json.loads(raw)
            self.frames.append(frame)
            self.received.set()
            if self.on_frame is not None:
                self.on_frame(frame)
            if frame["type"] == "reply":
                future = self.replies.get(frame["id"])
                if future is not None and not future.done():
                    future.set_result(frame)

    async def _beat(self) -> None:
        seq = 0
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            seq += 1
            await self.send(
                {"type": "heartbeat", "seq": seq, "running": self.held, "free_slots": 1}
            )


def logs_frame(id_: int, task_id: str, attempt: int, texts: list[str], first: int = 0) -> Json:
    lines = [
        {"seq": first + i, "stream": "stdout", "ts": 1.0, "text": text}
        for i, text in enumerate(texts)
    ]
    return {"type": "logs", "id": id_, "task_id": task_id, "batch": _batch(attempt, lines)}


def _batch(attempt: int, lines: list[Json]) -> Json:
    return {"attempt": attempt, "lines": lines}


def result_body(attempt: int, status: str = "succeeded") -> Json:
    return {"attempt": attempt, "status": status, "exit_code": 0, "last_seq": -1}


def result_frame(id_: int, task_id: str, attempt: int, status: str = "succeeded") -> Json:
    return {"type": "result", "id": id_, "task_id": task_id, "result": result_body(attempt, status)}


@pytest.fixture(params=["sqlite", "postgres"])
async def manager(cluster: Cluster, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """A manager on each store, at production timings: no lease runs out while a test waits
    on a loaded machine."""
    cluster.time_scale = 1.0
    async with on_store(cluster, request) as started:
        yield started


async def submit(c: Cluster, selector: str) -> str:
    async with client(c) as api:
        view = await api.submit_task(
            TaskSubmit(payload=ShellPayload(script="true"), selectors=[selector])
        )
    return view.id


async def metrics_text(c: Cluster) -> str:
    connector = aiohttp.TCPConnector(ssl=client_context(c.ca_file))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(c.url + "/metrics", headers={"Authorization": f"Bearer {c.admin_key}"}) as resp,
    ):
        assert resp.status == 200
        return await resp.text()


@asynccontextmanager
async def store_locked(c: Cluster, task_id: str) -> AsyncIterator[None]:
    """Writes of the task wait (the test's own lock on the store) until the block ends."""
    if c.database is None:
        conn = sqlite3.connect(c.data_dir / SQLITE_FILE, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")  # the one writer's lock: the manager's writes wait
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    schema = parse_qs(urlsplit(c.database).query)["search_path"][0]
    pg = await asyncpg.connect(PG, server_settings={"search_path": schema})
    try:
        tx = pg.transaction()
        await tx.start()
        # append_logs takes the task's row FOR SHARE: it waits for this.
        await pg.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        try:
            yield
        finally:
            await tx.rollback()
    finally:
        await pg.close()

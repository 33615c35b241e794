"""A reader that hangs up while its log page or follow is being written is the end of that
answer, logged as nothing: aiohttp raises ``ConnectionError("Connection lost")`` (not a
``ConnectionResetError``) when the client leaves while a write waits for room, and each such
request logged an "unhandled error" with its traceback (an attack on a running manager
filled the log so)."""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol

from manager.access.tokens import create_api_key, create_token
from manager.api import tasks as task_routes
from manager.api.http import Handler
from manager.schemas.grants import ADMIN_GROUP
from manager.server.app import ManagerConfig, build_app, open_store
from tests.manager.api.test_api import registration


class _Served:
    def __init__(self, url: str, key: str, task_id: str, done: asyncio.Queue[int]) -> None:
        self.url, self.key, self.task_id, self.done = url, key, task_id, done


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[_Served]:
    """A manager served as `serve` does (a runner: handlers are not cancelled when their
    client goes), with a running task whose log is larger than the socket buffers hold."""
    store = open_store(tmp_path)
    await store.open()
    app, _ = await build_app(ManagerConfig(data_dir=tmp_path), store)
    done: asyncio.Queue[int] = asyncio.Queue()

    @web.middleware
    async def answered(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Outermost: a log request's handler has returned, with what status.
        response = await handler(request)
        if request.method == "GET" and "/logs" in request.path:
            done.put_nowait(response.status)
        return response

    app.middlewares.insert(0, answered)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    # Small send buffers on the connections it accepts: an answer's writes soon wait.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"
    _, key = await create_api_key(store, "test", groups=(ADMIN_GROUP,))
    _, token = await create_token(store, "tok")
    try:
        async with aiohttp.ClientSession() as http:
            auth = {"Authorization": f"Bearer {key}"}
            made = await http.post(
                f"{url}/api/v1/tasks",
                json={"payload": {"type": "shell", "script": "yes"}},
                headers=auth,
            )
            task_id = (await made.json())["id"]
            reg = await http.post(
                f"{url}/api/v1/delegate/register",
                json=registration(public_key=base64.b64encode(b"g" * 32).decode()),
                headers={"Authorization": f"Bearer {token}"},
            )
            cred = {"Authorization": f"Bearer {(await reg.json())['session_token']}"}
            got = await http.post(f"{url}/api/v1/delegate/tasks/{task_id}/acquire", headers=cred)
            assert got.status == 200, await got.text()
            for page in range(4):
                lines = [
                    {"seq": page * 1000 + i, "stream": "stdout", "ts": 1.0, "text": "y" * 900}
                    for i in range(1000)
                ]
                posted = await http.post(
                    f"{url}/api/v1/delegate/tasks/{task_id}/logs",
                    json={"attempt": 1, "lines": lines},
                    headers=cred,
                )
                assert posted.status == 200, await posted.text()
        yield _Served(url, key, task_id, done)
    finally:
        await runner.cleanup()
        await store.close()


@pytest.mark.parametrize("route", ["logs?limit=5000", "logs/follow"])
async def test_a_reader_gone_mid_answer_is_no_error(
    served: _Served, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    paused = asyncio.Event()
    real_pause = BaseProtocol.pause_writing

    def pause_writing(self: BaseProtocol) -> None:
        # The answer's writes now wait for room: the reader's hang-up lands in that wait.
        real_pause(self)
        paused.set()

    monkeypatch.setattr(BaseProtocol, "pause_writing", pause_writing)
    monkeypatch.setattr(task_routes, "LOG_WRITE_S", 3600.0)  # never "too slow" here
    host, port = served.url.removeprefix("http://").split(":")
    with structlog.testing.capture_logs() as logs:
        _, writer = await asyncio.open_connection(host, int(port))
        # A small receive window: the answer's writes wait for room at once.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.write(
            f"GET /api/v1/tasks/{served.task_id}/{route} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {served.key}\r\n\r\n".encode()
        )
        await writer.drain()
        async with asyncio.timeout(30):
            await paused.wait()
            # The answer is under way and nothing is read: its writes wait. Hang up hard.
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            await served.done.get()
    assert [e for e in logs if e.get("log_level") in ("error", "critical")] == []

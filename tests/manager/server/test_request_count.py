"""The request counter (manager.server.app.counting): one count per request, the answer the
client got."""

from __future__ import annotations

import contextlib

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from manager.api.http import error_middleware
from manager.metrics import Metrics
from manager.server.app import counting


async def test_a_handler_that_raises_after_its_answer_started_is_counted_once() -> None:
    metrics = Metrics()

    async def streaming(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"line\n")
        raise RuntimeError("the store broke mid-stream")

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/stream", streaming)
    app.router.add_get("/plain", plain)
    app.on_response_prepare.append(counting(metrics))
    async with TestClient(TestServer(app)) as client:
        async with client.get("/plain") as resp:
            assert resp.status == 200
        # What follows the broken stream is not for the client to read (aiohttp writes the
        # error middleware's answer after it); only the count matters here.
        with contextlib.suppress(aiohttp.ClientError):
            async with client.get("/stream") as resp:
                assert resp.status == 200
                await resp.read()

    text = metrics.render().decode()
    assert 'tether_api_requests_total{method="GET",route="/stream",status="200"} 1.0' in text
    assert 'route="/stream",status="500"' not in text
    assert 'tether_api_requests_total{method="GET",route="/plain",status="200"} 1.0' in text

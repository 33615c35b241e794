"""A client that goes away in the middle of its body (a delegate killed while it sends a
result) is a 400 nobody reads, never an "unhandled error" with a traceback in the log."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
import structlog
from aiohttp import web

from manager.api.http import Handler, error_middleware, parse_body
from shared.protocol import TaskResult


@pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
@pytest.mark.parametrize("reset", [True, False], ids=["rst", "fin"])
async def test_a_body_cut_short_by_the_client_is_a_quiet_400(reset: bool, form: bool) -> None:
    answered: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    reading = asyncio.Event()

    async def post(request: web.Request) -> web.StreamResponse:
        reading.set()
        if form:
            await request.post()  # the console's and the SSO routes' way
        else:
            await parse_body(request, TaskResult)
        return web.Response(text="read")

    @web.middleware
    async def answer_of(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Outside the error middleware: what it answered (nobody can read it on the wire).
        response = await handler(request)
        answered.set_result(response.status)
        return response

    app = web.Application(middlewares=[answer_of, error_middleware])
    app.router.add_post("/result", post)
    # As the manager serves (manager.server.app.serve): a runner, whose handlers are not
    # cancelled when their client goes (aiohttp's test server cancels them).
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = _listening()
    await web.SockSite(runner, sock).start()
    host, port = sock.getsockname()[:2]
    with structlog.testing.capture_logs() as logs:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.write(
                b"POST /result HTTP/1.1\r\nHost: x\r\nContent-Type: "
                + (b"application/x-www-form-urlencoded" if form else b"application/json")
                + b"\r\n"
                b'Content-Length: 1000\r\n\r\n{"status": "succ'
            )
            await writer.drain()
            # Cut once the handler reads: before, aiohttp never calls it.
            await asyncio.wait_for(reading.wait(), 30)
            if reset:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            status = await asyncio.wait_for(answered, 30)
        finally:
            await runner.cleanup()
    assert status == 400
    assert [e for e in logs if e.get("log_level") in ("error", "critical")] == []


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock

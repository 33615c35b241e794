"""A TLS-terminating reverse proxy for tests that can refuse WebSocket upgrades.

It stands where a corporate proxy or a load balancer would: HTTPS passes through, and the
stream's upgrade is refused with 503 while ``allow_upgrade`` is False.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType, web

from shared.tls import client_context, issue_certificate, server_context

_HOP_HEADERS = ("Authorization", "Content-Type")


class UpgradeBlockingProxy:
    def __init__(
        self, upstream: str, manager_data_dir: Path, workdir: Path, *, client_ca: Path | None = None
    ) -> None:
        self.upstream = upstream
        self.allow_upgrade = False
        self.refused = 0
        tls = manager_data_dir / "tls"
        cert, key = workdir / "proxy.pem", workdir / "proxy-key.pem"
        issue_certificate(tls / "ca.pem", tls / "ca-key.pem", cert, key, ["127.0.0.1", "localhost"])
        # With client_ca, the proxy demands a client certificate (mTLS at the edge).
        self._server_ssl = server_context(cert, key, client_ca=client_ca)
        self._client_ssl = client_context(tls / "ca.pem")
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> str:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._client_ssl))
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._server_ssl)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {h: request.headers[h] for h in _HOP_HEADERS if h in request.headers}
        target = self.upstream + request.rel_url.path_qs
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if not self.allow_upgrade:
                self.refused += 1
                return web.Response(status=503, text="upgrades refused by this proxy")
            return await self._websocket(request, target, headers)
        async with self._session.request(
            request.method, target, data=await request.read(), headers=headers
        ) as resp:
            body = await resp.read()
            return web.Response(
                status=resp.status, body=body, content_type=resp.content_type if body else None
            )

    async def _websocket(
        self, request: web.Request, target: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        assert self._session is not None
        try:
            upstream = await self._session.ws_connect(
                target.replace("https://", "wss://"), headers=headers
            )
        except aiohttp.WSServerHandshakeError as exc:
            return web.Response(status=exc.status, text="upstream refused the upgrade")
        downstream = web.WebSocketResponse()
        await downstream.prepare(request)

        async def pump(
            src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
            dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        ) -> None:
            async for msg in src:
                if msg.type is WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                else:
                    break
            code = src.close_code or 1000
            with contextlib.suppress(Exception):
                await dst.close(code=code)

        await asyncio.gather(
            pump(upstream, downstream), pump(downstream, upstream), return_exceptions=True
        )
        await upstream.close()
        return downstream

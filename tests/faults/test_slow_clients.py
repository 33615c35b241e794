"""Slow and idle clients, and too many unauthenticated ones, against a real manager.

Clients here are raw TLS sockets speaking HTTP/1.1 by hand, so each can be exactly as slow
as the case needs. Every verdict is an event: the server closing the socket, an answer, a
log line. Timeouts are small (a fraction of a second), and each wait for a close is bounded
by the harness's generous WAIT: without the timeouts under test, nothing would close.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import resource
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from websockets.asyncio.client import connect

from shared.protocol import PROTOCOL_VERSION
from shared.tls import client_context
from tests.e2e.harness import WAIT, Cluster
from tests.faults.support import token

HEADER_S = 1.0
IDLE_S = 1.0
FAST = ("--header-timeout", str(HEADER_S), "--idle-timeout", str(IDLE_S))

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open(c: Cluster) -> Conn:
    return await asyncio.open_connection("127.0.0.1", c.port, ssl=client_context(c.ca_file))


async def _closed_by_server(reader: asyncio.StreamReader) -> None:
    """Until the server ends the connection (whatever it sends before)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


async def _exchange(
    conn: Conn, method: str, path: str, key: str | None = None, body: bytes = b""
) -> tuple[int, bytes]:
    """One keep-alive request on ``conn``: the answer's status and body."""
    reader, writer = conn
    head = f"{method} {path} HTTP/1.1\r\nHost: manager\r\nContent-Length: {len(body)}\r\n"
    if key:
        head += f"Authorization: Bearer {key}\r\n"
    if body:
        head += "Content-Type: application/json\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    answer = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
    length = re.search(r"content-length: *(\d+)", answer)
    assert length is not None, answer
    return int(answer.split(" ", 2)[1]), await reader.readexactly(int(length[1]))


async def _request(conn: Conn, path: str, key: str | None = None) -> tuple[int, Any]:
    """A GET: the status and the body's JSON."""
    status, body = await _exchange(conn, "GET", path, key)
    return status, json.loads(body)


async def _healthz(c: Cluster) -> int:
    reader, writer = await _open(c)
    try:
        return (await _request((reader, writer), "/healthz"))[0]
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def _bounded() -> AsyncIterator[None]:
    async with asyncio.timeout(WAIT):
        yield


async def test_slow_headers_and_idle_connections_are_closed_while_healthz_answers(
    cluster: Cluster,
) -> None:
    await cluster.start_manager(*FAST)
    slow_closed: list[float] = []
    idle_closed: list[float] = []

    async def slow() -> None:
        # Taken before connecting: the server's clock for it starts later, never earlier.
        opened = time.monotonic()
        reader, writer = await _open(cluster)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: manager\r\nX-Slow: ")
        closing = asyncio.ensure_future(_closed_by_server(reader))
        # A byte every 50 ms, a head that never ends: only the header timeout closes it.
        while not closing.done():
            with contextlib.suppress(ConnectionError):
                writer.write(b"x")
            await asyncio.wait({closing}, timeout=0.05)
        slow_closed.append(time.monotonic() - opened)
        writer.close()

    async def idle() -> None:
        reader, writer = await _open(cluster)
        asked = time.monotonic()  # before the answer that starts the server's clock
        assert (await _request((reader, writer), "/healthz"))[0] == 200
        await _closed_by_server(reader)
        idle_closed.append(time.monotonic() - asked)
        writer.close()

    async with _bounded():
        clients = [asyncio.ensure_future(slow()) for _ in range(20)]
        clients += [asyncio.ensure_future(idle()) for _ in range(20)]
        # The manager answers others while they hold their connections.
        assert [await _healthz(cluster) for _ in range(5)] == [200] * 5
        await asyncio.gather(*clients)
    assert len(slow_closed) == len(idle_closed) == 20
    # Never before the bound (after it: as soon as the machine gets round to it). asyncio
    # runs a timer up to one clock resolution early, and the client's clock starts a hair
    # after the server's: a millisecond's slack, not a scaled allowance.
    assert min(slow_closed) >= HEADER_S - 0.001
    assert min(idle_closed) >= IDLE_S - 0.001
    report = await cluster.manager.wait_event("connections closed or refused")  # type: ignore[union-attr]
    assert report["header_timeout"] >= 1


async def test_a_delegate_stream_is_not_cut_by_the_idle_or_header_timeout(
    cluster: Cluster,
) -> None:
    # Unscaled timings: the delegate heartbeats every 10 s, so its stream is silent far
    # longer than the idle timeout between two heartbeats.
    cluster.time_scale = 1.0
    manager = await cluster.start_manager("--header-timeout", "0.5", "--idle-timeout", "0.5")
    delegate = await cluster.start_delegate("steady", token=await token(cluster, "steady"))
    seen = len(delegate.events())
    # A raw stream too, registered and then silent after its hello.
    raw_token = await token(cluster, "raw")
    conn = await _open(cluster)
    key = X25519PrivateKey.generate().public_key().public_bytes_raw()
    register = {
        "name": "raw",
        "hostname": "test",
        "version": "test",
        "protocol_version": PROTOCOL_VERSION,
        "selectors": ["raw"],
        "capacity": 1,
        "task_types": ["shell"],
        "public_key": base64.b64encode(key).decode(),
    }
    credential = await _register(conn, raw_token, register)
    conn[1].close()
    url = cluster.url.replace("https://", "wss://") + "/api/v1/delegate/stream"
    async with (
        _bounded(),
        connect(
            url,
            ssl=client_context(cluster.ca_file),
            additional_headers={"Authorization": f"Bearer {credential}"},
            ping_interval=None,
        ) as ws,
    ):
        await ws.send(json.dumps({"type": "hello", "key": "process-key-1", "running": []}))
        await ws.recv()
        # Two idle connections closed one after the other: the idle timeout has passed
        # twice over while both streams were open.
        for _ in range(2):
            reader, writer = await _open(cluster)
            assert (await _request((reader, writer), "/healthz"))[0] == 200
            await _closed_by_server(reader)
            writer.close()
        pong = await ws.ping()
        await pong
        assert not [e for e in manager.events() if e.get("event") == "stream closed"]
    assert not [e for e in delegate.events()[seen:] if e.get("event") == "channel mode"]
    res = await cluster.tether("task", "run", "--selector", "steady", "--", "echo", "still here")
    assert (res.code, res.stdout.strip()) == (0, "still here")


async def _register(conn: Conn, token: str, body: dict[str, object]) -> str:
    status, raw = await _exchange(
        conn, "POST", "/api/v1/delegate/register", token, json.dumps(body).encode()
    )
    assert status == 200, raw
    return str(json.loads(raw)["session_token"])


async def test_unauthenticated_connections_past_the_cap_are_refused_politely(
    cluster: Cluster,
) -> None:
    manager = await cluster.start_manager("--max-unauthenticated", "4", "--header-timeout", "60")
    admin = await _open(cluster)
    assert (await _request(admin, "/api/v1/tasks", cluster.admin_key))[0] == 200
    waiting = [await _open(cluster) for _ in range(4)]

    async with _bounded():
        # Until the manager counts the four (its side of each handshake ends a little after
        # the client's), read on the authenticated connection, which the cap does not count.
        while await _gauge(admin, cluster.admin_key) < 4:
            pass
        refused = await _open(cluster)
        status, body = await _request(refused, "/healthz")
        assert (status, body["error"]["code"]) == (503, "busy")
        await _closed_by_server(refused[0])
        report = await manager.wait_event("connections closed or refused")
        assert report["refused_unauthenticated"] == 1
        # One of the four authenticates: a new connection is let in again.
        assert (await _request(waiting[0], "/api/v1/tasks", cluster.admin_key))[0] == 200
        while await _gauge(admin, cluster.admin_key) > 3:
            pass
        assert await _healthz(cluster) == 200
    for _, writer in [admin, *waiting]:
        writer.close()


async def _gauge(admin: Conn, key: str) -> float:
    """tether_connections{state="unauthenticated"} from /metrics, over ``admin``."""
    status, raw = await _exchange(admin, "GET", "/metrics", key)
    assert status == 200
    found = re.search(rb'^tether_connections\{state="unauthenticated"\} (\S+)$', raw, re.M)
    assert found is not None, "no tether_connections gauge in /metrics"
    return float(found[1])


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs resource.prlimit (Linux)")
async def test_open_files_near_the_limit_are_logged(cluster: Cluster) -> None:
    manager = await cluster.start_manager("--fd-check-interval", "0.1")
    # The limit set a little above what the manager holds now: 17 connections pass 80% of
    # it without reaching it (a descriptor or two it opens meanwhile leaves room still).
    limit = len(os.listdir(f"/proc/{manager.pid}/fd")) + 20
    _, hard = resource.prlimit(manager.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(manager.pid, resource.RLIMIT_NOFILE, (limit, hard))
    async with _bounded():
        conns = [await _open(cluster) for _ in range(17)]
    warning = await manager.wait_event(
        "open files near the limit: new clients will be refused by the system"
    )
    assert warning["limit"] == limit
    assert warning["open_files"] >= 0.8 * limit
    for _, writer in conns:
        writer.close()

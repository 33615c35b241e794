"""The fault proxy itself, against a plain echo server: each mode does what it says."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.faults.tcpproxy import Direction, Mode, ProxyStats, TcpProxy


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture
async def tcp(echo_port: int) -> AsyncIterator[TcpProxy]:
    async with TcpProxy("127.0.0.1", echo_port) as p:
        yield p


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connect = Callable[[], Awaitable[Stream]]


@pytest.fixture
async def connect(tcp: TcpProxy) -> AsyncIterator[Connect]:
    """Open a client connection through the proxy; every one is closed at the end."""
    writers: list[asyncio.StreamWriter] = []

    async def open_one() -> Stream:
        r, w = await asyncio.open_connection(tcp.host, tcp.port)
        writers.append(w)
        return r, w

    yield open_one
    for w in writers:
        w.close()


async def _roundtrip(r: asyncio.StreamReader, w: asyncio.StreamWriter, data: bytes) -> bytes:
    w.write(data)
    await w.drain()
    return await asyncio.wait_for(r.readexactly(len(data)), 5)


async def test_pass_forwards_both_ways_and_counts_connections(
    tcp: TcpProxy, connect: Connect
) -> None:
    r, w = await connect()
    assert await _roundtrip(r, w, b"hello") == b"hello"
    assert tcp.stats.accepted == 1
    assert tcp.stats.active == 1
    w.close()
    await tcp.wait_until(lambda s: s.active == 0, "the connection to end")


async def test_drop_closes_connections_and_refuses_new_ones_until_restored(
    tcp: TcpProxy, connect: Connect
) -> None:
    r, w = await connect()
    assert await _roundtrip(r, w, b"x") == b"x"
    await tcp.set_mode(Mode.DROP)
    assert await asyncio.wait_for(r.read(), 5) == b""
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(tcp.host, tcp.port)
    await tcp.set_mode(Mode.PASS)
    r2, w2 = await connect()
    assert await _roundtrip(r2, w2, b"back") == b"back"
    w2.close()


async def test_reset_aborts_connections_with_an_rst(tcp: TcpProxy, connect: Connect) -> None:
    r, w = await connect()
    assert await _roundtrip(r, w, b"x") == b"x"
    await tcp.set_mode(Mode.RESET)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(r.read(), 5)
    r2, _ = await connect()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(r2.read(), 5)
    assert tcp.stats.reset == 1
    assert tcp.stats.refused == 1


@pytest.mark.parametrize("direction", [Direction.BOTH, Direction.TO_CLIENT, Direction.TO_UPSTREAM])
async def test_stall_swallows_bytes_keeps_the_connection_and_resets_it_after(
    tcp: TcpProxy, connect: Connect, direction: Direction
) -> None:
    r, w = await connect()
    assert await _roundtrip(r, w, b"x") == b"x"
    await tcp.set_mode(Mode.STALL, direction)
    w.write(b"lost")
    await w.drain()
    first = Direction.TO_UPSTREAM if Direction.TO_UPSTREAM in direction else Direction.TO_CLIENT

    def swallowed(s: ProxyStats) -> bool:
        return s.swallowed[first] >= 4

    await tcp.wait_until(swallowed, f"bytes swallowed {first}")
    assert tcp.stats.active == 1
    assert not w.is_closing()
    await tcp.set_mode(Mode.PASS)
    # The stream that lost bytes is reset; a new connection works.
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(r.read(), 5)
    r2, w2 = await connect()
    assert await _roundtrip(r2, w2, b"fresh") == b"fresh"
    w2.close()

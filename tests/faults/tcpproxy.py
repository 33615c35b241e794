"""A TCP proxy for fault injection, standing between a delegate and the manager on loopback.

It forwards raw bytes, so TLS runs end to end: the delegate connects to
``https://127.0.0.1:<proxy port>`` and checks the manager's own certificate, whose SANs
include 127.0.0.1. The mode can be switched at any time:

    pass   forward both ways
    drop   close every connection (FIN both ways) and stop listening: new connects are
           refused by the kernel, as with a host that went away
    reset  abort every connection with an RST (SO_LINGER 0), and reset new ones at once
    stall  keep every connection open but swallow the bytes (and the FIN) going one or
           both ways, as a path that silently loses packets does; new connections too

Leaving ``stall`` resets the connections that lost bytes: their byte streams are no longer
consistent (TLS could only fail on them), and a middlebox that lost a flow's state ends it
the same way. Connections that lost nothing carry on.

Every wait is on the proxy's own counters (:meth:`TcpProxy.wait_until`), never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["Direction", "Mode", "ProxyStats", "TcpProxy"]

_CHUNK = 64 * 1024
_LINGER_ZERO = struct.pack("ii", 1, 0)


class Mode(enum.StrEnum):
    PASS = "pass"
    DROP = "drop"
    RESET = "reset"
    STALL = "stall"


class Direction(enum.Flag):
    TO_UPSTREAM = enum.auto()  # client (delegate) -> upstream (manager)
    TO_CLIENT = enum.auto()  # upstream (manager) -> client (delegate)
    BOTH = TO_UPSTREAM | TO_CLIENT


@dataclass
class ProxyStats:
    accepted: int = 0  # connections from clients that were forwarded
    active: int = 0  # open now
    closed: int = 0  # closed by the proxy (drop)
    reset: int = 0  # reset by the proxy (reset mode, or leaving a stall)
    refused: int = 0  # reset on arrival (reset mode, or the upstream was unreachable)
    forwarded: dict[Direction, int] = field(
        default_factory=lambda: {Direction.TO_UPSTREAM: 0, Direction.TO_CLIENT: 0}
    )
    swallowed: dict[Direction, int] = field(
        default_factory=lambda: {Direction.TO_UPSTREAM: 0, Direction.TO_CLIENT: 0}
    )


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    lost_bytes: bool = False
    done: bool = False

    def close(self) -> None:
        self.done = True
        for w in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                w.close()

    def reset(self) -> None:
        self.done = True
        for w in (self.client, self.upstream):
            _rst(w)


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    writer.transport.abort()


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``; see the module doc."""

    def __init__(
        self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port
        self.stats = ProxyStats()
        self._mode = Mode.PASS
        self._stalled = Direction(0)
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> TcpProxy:
        await self._listen()
        return self

    async def close(self) -> None:
        for conn in list(self._conns):
            conn.close()
        await self._stop_listening()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def stalled(self) -> Direction:
        return self._stalled if self._mode is Mode.STALL else Direction(0)

    # -- faults ---------------------------------------------------------------------------

    async def set_mode(self, mode: Mode, direction: Direction = Direction.BOTH) -> None:
        """Switch to ``mode``; ``direction`` says which way a stall swallows bytes."""
        was = self._mode
        self._mode = mode
        self._stalled = direction if mode is Mode.STALL else Direction(0)
        if mode is Mode.DROP:
            for conn in list(self._conns):
                conn.close()
                self.stats.closed += 1
            await self._stop_listening()
        elif mode is Mode.RESET:
            for conn in list(self._conns):
                conn.reset()
                self.stats.reset += 1
        elif was is Mode.STALL:
            for conn in list(self._conns):
                if conn.lost_bytes:
                    conn.reset()
                    self.stats.reset += 1
        if mode is not Mode.DROP and self._server is None:
            await self._listen()
        self._notify()

    async def wait_until(
        self, check: Callable[[ProxyStats], bool], what: str, timeout: float = 30.0
    ) -> None:
        """Wait until ``check(stats)`` holds; every counter change wakes the check."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    if check(self.stats):
                        return
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"proxy: timed out waiting for {what}: {self.stats}") from None

    # -- plumbing -------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()

    async def _listen(self) -> None:
        # The port stays the same across a drop: delegates keep their manager URL.
        self._server = await asyncio.start_server(
            self._on_client, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode in (Mode.RESET, Mode.DROP):
            _rst(writer)
            self.stats.refused += 1
            self._notify()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _rst(writer)
            self.stats.refused += 1
            self._notify()
            return
        conn = _Conn(client=writer, upstream=up_writer)
        self._conns.add(conn)
        self.stats.accepted += 1
        self.stats.active += 1
        self._notify()
        try:
            await asyncio.gather(
                self._pump(conn, reader, up_writer, Direction.TO_UPSTREAM),
                self._pump(conn, up_reader, writer, Direction.TO_CLIENT),
            )
        finally:
            conn.close()
            self._conns.discard(conn)
            self.stats.active -= 1
            self._notify()

    async def _pump(
        self,
        conn: _Conn,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        direction: Direction,
    ) -> None:
        try:
            while chunk := await src.read(_CHUNK):
                if direction in self.stalled:
                    conn.lost_bytes = True
                    self.stats.swallowed[direction] += len(chunk)
                    self._notify()
                    continue
                dst.write(chunk)
                await dst.drain()
                self.stats.forwarded[direction] += len(chunk)
                self._notify()
        except OSError:
            # One side broke: a real middlebox would tear the whole flow down.
            conn.reset()
            return
        if conn.done:
            return
        if direction in self.stalled:
            conn.lost_bytes = True  # the FIN is lost with the bytes
            return
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()

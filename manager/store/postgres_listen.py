"""LISTEN on one dedicated PostgreSQL connection, reconnected when it drops.

A pooled connection cannot LISTEN: the pool resets it (``UNLISTEN *``) on release. So each
store keeps one connection of its own for every channel it listens on, and a supervising task
that reconnects it with backoff and LISTENs again on every channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import structlog

from shared.aio import cancel_and_wait

__all__ = ["LISTEN_ERRORS", "Listener"]

log = structlog.get_logger("tether.store")

# Any of these ends the LISTEN connection; the supervisor then reconnects.
LISTEN_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


class Listener:
    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        *,
        timeout: float = 10.0,
        reconnect_delays: Sequence[float] = (0.1, 0.5, 1.0, 2.0, 5.0),
        check_interval: float | None = 30.0,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        """``check_interval``: how often an idle connection is probed, so one that died
        without a word (a network partition, no FIN) is noticed; None turns that off."""
        self._connect = connect
        self._timeout = timeout
        self._check_interval = check_interval
        self._delays = tuple(reconnect_delays) or (1.0,)
        self._on_reconnect = on_reconnect
        self._callbacks: dict[str, list[Callable[[str], None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._listening: set[str] = set()
        self._up = asyncio.Event()
        # Serialises LISTENs: one connection runs one command at a time.
        self._lock = asyncio.Lock()

    @property
    def server_pid(self) -> int | None:
        """The backend serving the LISTEN connection, when it is up."""
        return None if self._conn is None else int(self._conn.get_server_pid())

    async def listen(self, channel: str, callback: Callable[[str], None]) -> bool:
        """Register ``callback``; True once the LISTEN is active, False (and the callback
        forgotten) when that took over ``timeout``."""
        self._callbacks.setdefault(channel, []).append(callback)
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name="pg-listen")
        try:
            async with asyncio.timeout(self._timeout):
                while not await self._listen_on(channel):
                    pass
        except TimeoutError:
            self._callbacks[channel].remove(callback)
            return False
        return True

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._callbacks.clear()

    async def _listen_on(self, channel: str) -> bool:
        await self._up.wait()
        async with self._lock:
            conn = self._conn
            if conn is None:
                return False
            if channel not in self._listening:
                try:
                    await conn.add_listener(channel, self._dispatch)
                except LISTEN_ERRORS as exc:
                    # The supervisor reconnects and listens on every registered channel.
                    log.warning("postgres LISTEN failed", channel=channel, error=str(exc))
                    self._drop(conn)
                    return False
                self._listening.add(channel)
        return True

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        connected_before = False
        while True:
            conn: Any = None
            up_since: float | None = None
            try:
                conn = await self._connect()
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                async with self._lock:
                    channels = set(self._callbacks)
                    for channel in channels:
                        await conn.add_listener(channel, self._dispatch)
                    self._conn, self._listening = conn, channels
                self._up.set()
                up_since = loop.time()
                if connected_before:
                    log.info("postgres LISTEN connection restored")
                    _call_safely(self._on_reconnect)
                connected_before = True
                await self._watch(conn, lost)
                log.warning("postgres LISTEN connection lost")
            except LISTEN_ERRORS as exc:
                log.warning("postgres LISTEN connection failed", error=str(exc))
            except Exception:
                # Not a database error: log it loudly, but keep listening.
                log.exception("postgres LISTEN supervisor failed")
            finally:
                if conn is not None:
                    self._drop(conn)
            # Back off after a lost connection too, not only after a failed connect: a server
            # that accepts and then drops us must not be hammered in a hot loop.
            if up_since is not None and loop.time() - up_since >= self._delays[-1]:
                failures = 0
            await asyncio.sleep(self._delays[min(failures, len(self._delays) - 1)])
            failures += 1

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        """Return when the connection is lost; raise when a probe fails or times out."""
        interval = self._check_interval
        while not lost.is_set():
            if interval is None:
                await lost.wait()
                return
            try:
                async with asyncio.timeout(interval):
                    await lost.wait()
            except TimeoutError:
                async with self._lock, asyncio.timeout(interval):
                    await conn.fetchval("SELECT 1")

    def _drop(self, conn: Any) -> None:
        if self._conn is conn:
            self._conn, self._listening = None, set()
            self._up.clear()
        conn.terminate()

    def _dispatch(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        for callback in list(self._callbacks.get(channel, ())):
            _call_safely(callback, payload)


def _call_safely(callback: Callable[..., None] | None, *args: Any) -> None:
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        log.exception("notification callback failed")

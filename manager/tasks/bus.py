"""Events between manager replicas: what one replica did that the others must know.

A replica keeps in memory the queue index, snapshots of open tasks, who to send a cancel
to, and who follows a task's log. When it changes one of these through the store, the
other replicas hear of it here. One replica alone (SQLite) needs nothing: :class:`LocalBus`
drops every event. On PostgreSQL, :class:`PostgresBus` sends them with NOTIFY, batched into
as few notifications as the traffic allows and sent off the request path.

Events are only notices: each replica also reconciles its
queue index with the store now and then (``TaskService.reconcile``), so a notification lost
while a LISTEN connection was down costs time, never a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog

from manager.store.postgres import PostgresStore
from shared.aio import cancel_and_wait

__all__ = ["Bus", "EventKind", "LocalBus", "PostgresBus"]

log = structlog.get_logger("tether.bus")

# "revoked" names a delegate token, "env" an environment, the others a task.
EventKind = Literal["queued", "dequeued", "cancel", "changed", "finished", "revoked", "env"]
_KINDS = frozenset(("queued", "dequeued", "cancel", "changed", "finished", "revoked", "env"))
Handler = Callable[[EventKind, str], Awaitable[None]]
CHANNEL = "tether_events"
# NOTIFY payloads are limited to 8000 bytes; stay well under it.
_MAX_PAYLOAD = 7000


class Bus:
    async def start(self, handler: Handler) -> None:
        """Deliver other replicas' events to ``handler``."""

    def publish(self, kind: EventKind, task_id: str) -> None:
        """Tell the other replicas; never blocks the caller."""

    async def close(self) -> None:
        """Send what is pending and stop."""

    @property
    def shared(self) -> bool:
        """True when other replicas may exist."""
        return False


class LocalBus(Bus):
    """One manager process: there is nobody to tell."""


class PostgresBus(Bus):
    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._me = secrets.token_hex(6)
        self._pending: deque[str] = deque()
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._handler: Handler | None = None
        self._inbox: asyncio.Queue[tuple[EventKind, str]] = asyncio.Queue()
        self._receiver: asyncio.Task[None] | None = None

    @property
    def shared(self) -> bool:
        return True

    async def start(self, handler: Handler) -> None:
        self._handler = handler
        await self._store.listen(CHANNEL, self._received)
        self._sender = asyncio.create_task(self._send_loop(), name="bus-send")
        self._receiver = asyncio.create_task(self._receive_loop(), name="bus-receive")

    def publish(self, kind: EventKind, task_id: str) -> None:
        self._pending.append(f"{kind}:{task_id}")
        self._wake.set()

    def _received(self, payload: str) -> None:
        sender, _, body = payload.partition("|")
        if sender == self._me:
            return
        for item in body.split("\n"):
            kind, _, task_id = item.partition(":")
            if kind in _KINDS and task_id:
                self._inbox.put_nowait((kind, task_id))  # type: ignore[arg-type]

    async def _receive_loop(self) -> None:
        assert self._handler is not None
        while True:
            kind, task_id = await self._inbox.get()
            try:
                await self._handler(kind, task_id)
            except Exception:  # one bad event must not stop the others
                log.exception("replica event failed", kind=kind, task_id=task_id)

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        while self._pending:
            batch, size = [], 0
            while self._pending and size + len(self._pending[0]) < _MAX_PAYLOAD:
                item = self._pending.popleft()
                batch.append(item)
                size += len(item) + 1
            try:
                await self._store.notify(CHANNEL, f"{self._me}|" + "\n".join(batch))
            except Exception as exc:
                # The other replicas reconcile with the store; losing a hint costs time only.
                log.warning("replica events not sent", count=len(batch), error=str(exc))

    async def close(self) -> None:
        await cancel_and_wait(self._sender, self._receiver)
        with contextlib.suppress(Exception):
            await self._flush()

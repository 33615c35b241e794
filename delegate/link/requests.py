"""Log batches and results over the stream while it is up, over HTTPS otherwise.

:class:`StreamRequests` is the outbox's way to the manager (:class:`Transport`): a request
goes on the stream as a :class:`~shared.protocol.StreamLogs` or
:class:`~shared.protocol.StreamResult` frame with a fresh id, and its
:class:`~shared.protocol.StreamReply` is awaited. When there is no stream, when it closes
with the request pending, or when no reply comes within the HTTPS client's request timeout,
the same request goes over HTTPS instead (:class:`~delegate.link.api.ManagerApi`). Sending
twice is safe: the manager stores lines by (task, attempt, seq), and a result it already
recorded is answered ``recorded: false`` with the task's state, never recorded again.

A refusal in a reply raises what the HTTPS route's status raises
(:func:`delegate.link.policy.meaning`): :class:`Rejected` for the task's own refusals (stale
attempt, not found, too large), :class:`Unreachable` for 429 and 5xx. The credential's own
refusals (401, 426) go over HTTPS, whose client registers again or stops the delegate.

A request counts against :data:`~shared.limits.MAX_STREAM_REQUESTS`, and its frame's
characters against :data:`~shared.limits.MAX_STREAM_REQUEST_CHARS`, until its reply comes
or the stream ends, even after its caller stopped waiting: the manager may still be working
on it, and a stream holding that much stops being read there. Past either bound requests go
over HTTPS, so the stream's heartbeats are not held up behind store work.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import structlog

from delegate.link.api import ManagerApi, Rejected, Unreachable
from delegate.link.policy import Meaning, meaning
from shared.limits import (
    MAX_FRAME_BYTES,
    MAX_STREAM_REQUEST_CHARS,
    MAX_STREAM_REQUESTS,
    stream_requests_full,
)
from shared.protocol import (
    LogBatch,
    LogBatchAck,
    ResultAck,
    StreamLogs,
    StreamReply,
    StreamResult,
    TaskResult,
)

__all__ = ["StreamRequests", "Transport"]

log = structlog.get_logger("tether.requests")

T = TypeVar("T")
Send = Callable[[str], Awaitable[None]]


class Transport(Protocol):
    """How the outbox reaches the manager (ManagerApi: HTTPS only)."""

    async def post_logs(self, task_id: str, batch: LogBatch) -> LogBatchAck: ...

    async def post_result(self, task_id: str, result: TaskResult) -> ResultAck: ...


class StreamRequests:
    """Requests over the stream the channel holds, with HTTPS as the fallback."""

    def __init__(
        self,
        api: ManagerApi,
        *,
        timeout: float | None = None,
        limit: int = MAX_STREAM_REQUESTS,
        budget: int = MAX_STREAM_REQUEST_CHARS,
    ) -> None:
        self._api = api
        # How long a reply may take: as long as the HTTPS client waits for its answer.
        self._timeout = api.request_timeout if timeout is None else timeout
        self._limit = limit
        self._budget = budget
        self._send: Send | None = None
        # Request id -> its reply (None once the stream it went on has ended) and its frame's
        # characters; their sum is the manager's other bound.
        self._pending: dict[int, tuple[asyncio.Future[StreamReply | None], int]] = {}
        self._chars = 0
        # Never reused in this process: a late reply can only match its own request.
        self._ids = itertools.count()
        # Requests answered on the stream, and sent over HTTPS instead (tests read them).
        self.counts = {"stream": 0, "https": 0}

    @property
    def in_flight(self) -> int:
        """Requests sent on the stream whose reply has not come."""
        return len(self._pending)

    @property
    def attached(self) -> bool:
        """A stream is held: requests go on it."""
        return self._send is not None

    # -- the channel's side ---------------------------------------------------------------

    def attach(self, send: Send) -> None:
        """A stream answered a hello: requests go on it through ``send``."""
        self.detach()
        self._send = send

    def detach(self) -> None:
        """The stream ended: what waits for a reply goes over HTTPS at once."""
        self._send = None
        pending, self._pending, self._chars = self._pending, {}, 0
        for future, _ in pending.values():
            if not future.done():
                future.set_result(None)

    def on_reply(self, frame: StreamReply) -> None:
        future = self._drop(frame.id)
        if future is None:
            log.debug("reply to no pending request dropped", id=frame.id)
        elif not future.done():
            future.set_result(frame)

    # -- the outbox's side ----------------------------------------------------------------

    async def post_logs(self, task_id: str, batch: LogBatch) -> LogBatchAck:
        reply = await self._exchange(
            lambda id_: StreamLogs(id=id_, task_id=task_id, batch=batch).model_dump_json()
        )
        if reply is not None and reply.logs is not None:
            return reply.logs
        return await self._otherwise(reply, lambda: self._api.post_logs(task_id, batch))

    async def post_result(self, task_id: str, result: TaskResult) -> ResultAck:
        reply = await self._exchange(
            lambda id_: StreamResult(id=id_, task_id=task_id, result=result).model_dump_json()
        )
        if reply is not None and reply.result is not None:
            return reply.result
        return await self._otherwise(reply, lambda: self._api.post_result(task_id, result))

    # -- plumbing -------------------------------------------------------------------------

    async def _exchange(self, frame: Callable[[int], str]) -> StreamReply | None:
        """The reply to the frame, or None when it must go over HTTPS instead."""
        send = self._send
        if send is None or len(self._pending) >= self._limit:
            return None
        id_ = next(self._ids)
        text = frame(id_)
        if _too_big(text) or stream_requests_full(
            len(self._pending), self._chars, len(text), limit=self._limit, budget=self._budget
        ):
            return None
        future: asyncio.Future[StreamReply | None] = asyncio.get_running_loop().create_future()
        self._pending[id_] = (future, len(text))
        self._chars += len(text)
        try:
            await send(text)
        except Exception as exc:
            # Whatever the stream's send raises (websockets' ConnectionClosed, a transport
            # error): it is closing, and the channel's read loop sees it too and detaches.
            # This request does not wait for that.
            log.debug("request not sent on the stream", error=f"{type(exc).__name__}")
            self._forget(id_, future)
            return None
        try:
            async with asyncio.timeout(self._timeout):
                # Shielded: a timeout leaves the future pending, so the request keeps its
                # slot until the manager answers or the stream ends.
                reply = await asyncio.shield(future)
        except TimeoutError:
            log.info("no reply on the stream; sending over HTTPS", id=id_)
            return None
        if reply is not None:
            self.counts["stream"] += 1
        return reply

    def _forget(self, id_: int, future: asyncio.Future[StreamReply | None]) -> None:
        held = self._pending.get(id_)
        if held is not None and held[0] is future:
            self._drop(id_)
        if not future.done():
            future.cancel()

    def _drop(self, id_: int) -> asyncio.Future[StreamReply | None] | None:
        """Request ``id_`` no longer in flight: its future, and its characters given back."""
        held = self._pending.pop(id_, None)
        if held is None:
            return None
        self._chars -= held[1]
        return held[0]

    async def _otherwise(self, reply: StreamReply | None, https: Callable[[], Awaitable[T]]) -> T:
        """Without an answer on the stream: over HTTPS, or the refusal raised as the HTTPS
        client raises it."""
        if reply is None:
            self.counts["https"] += 1
            return await https()
        if reply.error is None or reply.status is None:
            raise Unreachable("unexpected reply from the manager: neither an answer nor an error")
        status, code, message = reply.status, reply.error.code, reply.error.message
        what = meaning(status, code)
        if what is Meaning.REJECTED:
            raise Rejected(status, code, message)
        if what is Meaning.RETRY:
            raise Unreachable(f"manager answered {status}: {message}")
        # The credential or the protocol: the HTTPS client registers again, or raises
        # FatalAuth / UnsupportedProtocol for the delegate to stop.
        log.info("stream request refused; asking over HTTPS", status=status, code=code)
        self.counts["https"] += 1
        return await https()


def _too_big(text: str) -> bool:
    """A frame the manager's stream would refuse (and close): such a request takes HTTPS."""
    if len(text) * 4 <= MAX_FRAME_BYTES:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES

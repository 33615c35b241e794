"""Log batches and results that arrive on a delegate's stream (protocol v2), answered there.

Each is handled exactly as its HTTPS route (``POST .../logs`` and ``.../result`` in
:mod:`manager.api.delegate_plane`) would handle it: the same size limit, the same service
call with the stream's session (so the same fencing by attempt and delegate), and the same
refusals, sent back as a :class:`~shared.protocol.StreamReply` whose ``status`` is the HTTP
status the route would have answered. The stream was authenticated at its upgrade; its
session's token is checked against the revocations held in memory at every request, as a
heartbeat is.

Requests run beside the read loop, so heartbeats keep flowing while the store commits. A
reply is written only once the service returned, and the services return only after their
commit: nothing is acknowledged before it is durable.

At most ``MAX_STREAM_REQUESTS`` requests of one stream, of ``MAX_STREAM_REQUEST_CHARS``
characters of frames in all, are in flight (received, reply not yet written); a frame past
either waits for requests to end, and the read loop with it (``shared.limits.
stream_requests_full``, the rule the delegate keeps to). Not a
429 answer: a reply is itself a write to a peer that may not be reading, so answering a flood
would let it grow the manager's send buffers without bound, where waiting bounds the memory
one stream holds and pushes back through TCP. A delegate keeps under the bound on its own
(delegate.link.requests), so a well-behaved one waits here at most for the moment a reply
takes to be written.
"""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from manager.api.context import Context
from manager.api.http import ApiProblem, status_of
from manager.errors import DomainError
from manager.store.base import BadData, DiskFull, StoreError
from manager.store.health import DISK_FULL
from manager.tasks.hub import Session
from shared.limits import (
    MAX_API_BODY_BYTES,
    MAX_LOG_BATCH_BYTES,
    MAX_STREAM_REQUEST_CHARS,
    MAX_STREAM_REQUESTS,
    stream_requests_full,
)
from shared.protocol import ErrorDetail, StreamLogs, StreamReply, StreamResult

__all__ = ["StreamRequests"]

log = structlog.get_logger("tether.stream_requests")

# Requests still running after their stream ended (their replies are dropped): held here so
# the event loop does not collect them before they finish.
_running: set[asyncio.Task[None]] = set()


class StreamRequests:
    """The requests of one stream: started by the read loop, answered on the same stream."""

    def __init__(
        self,
        c: Context,
        session: Session,
        ws: web.WebSocketResponse,
        *,
        limit: int = MAX_STREAM_REQUESTS,
        budget: int = MAX_STREAM_REQUEST_CHARS,
    ) -> None:
        self._c = c
        self._session = session
        self._ws = ws
        self._limit = limit
        self._budget = budget
        self._in_flight = 0
        self._chars = 0
        self._freed: asyncio.Event | None = None

    async def take(self, frame: StreamLogs | StreamResult, raw: str) -> None:
        """Start answering ``frame`` (``raw``: its text as received); returns once it runs,
        after waiting for requests to end when the stream has no room for it."""
        size = len(raw)
        if self._full(size):
            # A delegate keeps under the bound by itself: this one does not, or the store
            # is slow. Its heartbeats wait behind the frame too.
            log.warning(
                "stream paused: requests in flight at the bound",
                delegate_id=self._session.id,
                limit=self._limit,
                in_flight=self._in_flight,
                chars=self._chars,
            )
            while self._full(size):
                if self._freed is None:
                    self._freed = asyncio.Event()
                await self._freed.wait()
        self._in_flight += 1
        self._chars += size
        # The HTTPS route checks its body, the batch; here the frame's few bytes of its own
        # count too: never more lenient than HTTPS. A result's route bounds its bodies by the
        # application's client_max_size.
        limit = MAX_LOG_BATCH_BYTES if isinstance(frame, StreamLogs) else MAX_API_BODY_BYTES
        task = asyncio.create_task(self._serve(frame, _exceeds(raw, limit), size))
        _running.add(task)
        task.add_done_callback(_running.discard)

    def _full(self, size: int) -> bool:
        return stream_requests_full(
            self._in_flight, self._chars, size, limit=self._limit, budget=self._budget
        )

    async def _serve(self, frame: StreamLogs | StreamResult, too_large: bool, size: int) -> None:
        try:
            reply = await self._answer(frame, too_large)
            self._c.metrics.stream_requests.labels(frame.type, str(reply.status or 200)).inc()
            if not self._ws.closed:
                # Awaited, and the slot held meanwhile: a peer that does not read its replies
                # fills its own slots and stops its own stream, never the manager's memory.
                await self._ws.send_str(reply.model_dump_json())
        except ConnectionError as exc:
            # The stream closed under the reply ("cannot write to closing transport").
            # What was committed stays; the delegate resends over HTTPS and is told so there.
            log.debug("reply not sent", delegate_id=self._session.id, error=str(exc))
        finally:
            self._in_flight -= 1
            self._chars -= size
            freed, self._freed = self._freed, None
            if freed is not None:
                freed.set()

    async def _answer(self, frame: StreamLogs | StreamResult, too_large: bool) -> StreamReply:
        """The reply: what the service answered, or its refusal as the route maps it."""
        session = self._session
        try:
            return await self._handle(frame, too_large)
        except ApiProblem as p:
            return _refusal(frame, p.status, p.code, p.message, p.field)
        except DomainError as e:
            return _refusal(frame, status_of(e), e.code, e.message, e.field)
        except BadData as exc:
            return _refusal(frame, 422, "bad_data", str(exc))
        except DiskFull:
            return _refusal(frame, 503, "disk_full", DISK_FULL)
        except StoreError as exc:
            log.warning("store error", delegate_id=session.id, error=str(exc))
            return _refusal(frame, 503, "unavailable", "the database is unavailable; try again")
        except Exception:
            # As the HTTPS error middleware: the traceback in the manager's log, never in
            # the answer.
            log.exception("unhandled error", delegate_id=session.id, kind=frame.type)
            return _refusal(frame, 500, "internal", "internal error")

    async def _handle(self, frame: StreamLogs | StreamResult, too_large: bool) -> StreamReply:
        c = self._c
        session = self._session
        # A revoked token's streams are being closed (Hub.revoke); a frame read before the
        # close is refused as the HTTPS route would refuse it.
        if session.delegate.token_id in c.hub.revoked_tokens:
            raise ApiProblem(401, "token_revoked", "the delegate token was revoked")
        c.hub.seen(session)
        if isinstance(frame, StreamLogs):
            if too_large:
                raise ApiProblem(
                    413, "too_large", f"a log batch may carry at most {MAX_LOG_BATCH_BYTES} bytes"
                )
            logs = await c.tasks.append_logs(session, frame.task_id, frame.batch)
            return StreamReply(id=frame.id, logs=logs)
        if too_large:
            raise ApiProblem(
                413, "too_large", f"a result may carry at most {MAX_API_BODY_BYTES} bytes"
            )
        result = await c.tasks.record_result(session, frame.task_id, frame.result)
        return StreamReply(id=frame.id, result=result)


def _refusal(
    frame: StreamLogs | StreamResult,
    status: int,
    code: str,
    message: str,
    field: str | None = None,
) -> StreamReply:
    return StreamReply(
        id=frame.id, status=status, error=ErrorDetail(code=code, message=message, field=field)
    )


def _exceeds(raw: str, limit: int) -> bool:
    """Whether ``raw`` takes more than ``limit`` bytes in UTF-8 (as it came on the wire)."""
    # A character takes 1 to 4 bytes: only text near the limit is encoded to be measured.
    if len(raw) > limit:
        return True
    if len(raw) * 4 <= limit:
        return False
    return len(raw.encode("utf-8", "surrogatepass")) > limit

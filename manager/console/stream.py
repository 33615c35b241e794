"""The console's server-sent event streams: the writing they share, and the live rows of a
list page (the tasks list, the delegates).

A stream is authorised once by the guards, as the page it serves (the same route
permission), then its cookie session is judged again each time it wakes, as the log's
stream (manager.console.follow) does through the API's follow loop: at once when a session
ends or a user is disabled on this replica, and at least every FOLLOW_RECHECK_S. When the
session has ended (or the user may no longer see the list), the stream sends ``refused``
(JSON: why, and where to go) and closes; the page's script does not reconnect.

The rows are rendered on the server by the page's own template, from the API's own handler
called for the principal as it is now (its filters and permission checks), and go out as
the escaped HTML fragment the page swaps in: the browser never builds markup from text.
Rows identical to the last sent are not sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from manager.api.context import ctx
from manager.api.guards import ACCESS, recheck
from manager.api.http import ApiProblem, status_of
from manager.api.tasks import FOLLOW_PING_S, FOLLOW_RECHECK_S
from manager.console.security import where_to
from manager.errors import DomainError
from shared.aio import first_of

__all__ = ["DEBOUNCE_S", "live_rows", "open_stream", "refused_event", "sse"]

# At most one rendering of a list per stream in this time, however many tasks change.
DEBOUNCE_S = 1.0


def sse(event: str, data: str, *, event_id: str | None = None) -> bytes:
    """One event. A line end inside ``data`` (any of the three the format knows) starts a
    new ``data:`` line, so no text inside can start a field of its own."""
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return (head + "".join(f"data: {line}\n" for line in lines) + "\n").encode()


def _gone(request: web.Request) -> bool:
    """The browser left (aiohttp does not cancel the handler): nothing more to draw."""
    return request.transport is None or request.transport.is_closing()


def refused_event(status: int, code: str, message: str) -> bytes:
    """The stream's last event: why it ends, and where the page goes (the login)."""
    return sse("refused", json.dumps({"message": message, "location": where_to(status, code)}))


async def open_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    return resp


async def live_rows(
    request: web.Request,
    rows: Callable[[], Awaitable[str]],
    *,
    wake: Callable[[], asyncio.Event] | None = None,
    every: float | None = None,
) -> web.StreamResponse:
    """``rows`` rendered as ``rows`` events until the session ends or the manager stops:
    with ``wake``, once at the start (what changed since the page was drawn), then after
    each ``wake`` event (debounced: DEBOUNCE_S apart at least); with ``every``, each
    ``every`` seconds from the start (the page was drawn just before)."""
    c = ctx(request)
    access = request.app[ACCESS]
    loop = asyncio.get_running_loop()
    resp = await open_stream(request)
    shown: str | None = None
    due: float | None = loop.time() if wake is not None or every is None else loop.time() + every
    last_render = last_sent = float("-inf")
    with contextlib.suppress(ConnectionError):  # the reader left (reset, or "Connection lost")
        while not c.stopping and not _gone(request):
            # Taken before the rendering, so a change during it wakes the next wait.
            changed = wake() if wake is not None else asyncio.Event()
            revoked = access.principals.changed()
            try:
                if due is not None and loop.time() >= due:
                    last_render = loop.time()
                    due = None if every is None else last_render + every
                    html = await rows()
                    if html != shown:
                        shown = html
                        await resp.write(sse("rows", html))
                        last_sent = loop.time()
                wait = FOLLOW_RECHECK_S if due is None else due - loop.time()
                await first_of(changed, revoked, timeout=max(0.0, min(wait, FOLLOW_RECHECK_S)))
                if changed.is_set():
                    soonest = last_render + DEBOUNCE_S
                    due = soonest if due is None else min(due, soonest)
                # The stream outlives the check that opened it (as manager.api.tasks'
                # follow_task): a session ended, expired or a user disabled ends it.
                await recheck(request, console=True)
            except (ApiProblem, DomainError) as p:
                status = p.status if isinstance(p, ApiProblem) else status_of(p)
                await resp.write(refused_event(status, p.code, p.message))
                break
            if loop.time() - last_sent >= FOLLOW_PING_S:
                await resp.write(b": ping\n\n")
                last_sent = loop.time()
        await resp.write_eof()
    return resp

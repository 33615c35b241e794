"""A task's live log for the page, as server-sent events (``text/event-stream``).

Built on the API's own follow stream (manager.api.tasks.follow_task): the same reads of the
same masked lines, the same wake-ups, the same end. Only the writing differs: each page of
lines goes out as the HTML the page shows (escaped by the same template as the tail), so
the browser's script inserts markup it never builds from text. The session is the console
cookie, judged again each time the stream wakes (and at once when a session ends on this
replica: logout, a user disabled); when it is gone the stream says why and closes, and the
page's script does not reconnect.

Events: ``lines`` (HTML; its id is the log cursor, which a reconnecting EventSource sends
back as Last-Event-ID), ``state`` (the task's new state), ``end`` (the log is complete),
``refused`` (JSON: why the stream ended, and where to go), and a comment when idle.
"""

from __future__ import annotations

import contextlib

from aiohttp import web

from manager.api.guards import recheck
from manager.api.tasks import FollowEvent, follow_task
from manager.console import logs
from manager.console.render import render_text
from manager.console.stream import open_stream, refused_event, sse

__all__ = ["follow_log"]


async def follow_log(request: web.Request) -> web.StreamResponse:
    task_id = request.match_info["task_id"]
    # A reconnecting EventSource says where it got to; the page's first request, ``after``.
    after = logs.parse_cursor(request.headers.get("Last-Event-ID") or request.query.get("after"))
    await logs.readable_task(request, task_id)  # the API's check: a 404 for a task not read
    resp = await open_stream(request)

    async def send(event: FollowEvent) -> None:
        if event.kind == "lines":
            last = event.lines[-1]
            html = render_text(
                request, "log_lines.html", {"lines": [logs.line_of(r) for r in event.lines]}
            )
            await resp.write(sse("lines", html, event_id=f"{last.attempt}:{last.seq}"))
        elif event.kind == "state":
            await resp.write(sse("state", event.state))
        elif event.kind == "end":
            await resp.write(sse("end", ""))
        elif event.kind == "error":
            await resp.write(refused_event(event.status, event.code, event.message))
        else:
            await resp.write(b": ping\n\n")

    with contextlib.suppress(ConnectionError):  # the reader left (reset, or "Connection lost")
        if await follow_task(request, task_id, after, send, lambda: recheck(request, console=True)):
            await resp.write_eof()
    return resp

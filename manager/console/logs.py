"""A task's log for the page: the tail, earlier blocks, and what arrived since a cursor.

Read through the same service read as the API's log pages (``TaskReads.log_page``: the
lines as the delegate masked them and the store keeps them, the same page bounds and the
same turn among concurrent readers), after the same check (``check_task``: a task the
caller may not read is a 404). A page holds at most ``BLOCK`` lines, whatever the log's
length, so a 100,000-line log costs the browser what a 1,000-line one does; earlier blocks
come on request.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from aiohttp import web

from manager.access.places import places
from manager.api.context import ctx
from manager.api.guards import ACCESS
from manager.api.task_access import check_task
from manager.api.tasks import _parse_cursor
from manager.console.ansi import Span, spans
from manager.records import LogRecord, TaskRecord

__all__ = ["BLOCK", "Line", "LogBlock", "line_of", "readable_task", "tail_before"]

BLOCK = 1000
_PAGE = 5000  # the API's largest page (manager.api.tasks.LOG_PAGE_MAX)

Cursor = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Line:
    attempt: int
    seq: int
    stream: str
    spans: list[Span]


@dataclass(frozen=True, slots=True)
class LogBlock:
    lines: list[Line]
    # The position of the last line read (where to follow from), and whether older lines
    # exist before the first one shown.
    end: Cursor | None
    earlier: bool


def line_of(rec: LogRecord) -> Line:
    return Line(rec.attempt, rec.seq, rec.stream, spans(rec.text))


def parse_cursor(raw: str | None) -> Cursor | None:
    """A log cursor as the API's log pages take it (and refuse it)."""
    return _parse_cursor(raw)


async def readable_task(request: web.Request, task_id: str) -> TaskRecord:
    where = await places(request.app[ACCESS].directory)
    return check_task(request, await ctx(request).task_reads.get(task_id), where, "read", task_id)


async def tail_before(request: web.Request, task_id: str, before: Cursor | None) -> LogBlock:
    """The last BLOCK lines before ``before`` (None: the end of the log)."""
    reads = ctx(request).task_reads
    kept: deque[LogRecord] = deque(maxlen=BLOCK + 1)
    pos: Cursor | None = None
    while True:
        async with reads.log_page(task_id, after=pos, limit=_PAGE) as page:
            batch = list(page)
        if not batch:
            break
        for rec in batch:
            if before is not None and (rec.attempt, rec.seq) >= before:
                return _block(kept, pos)
            kept.append(rec)
        pos = (batch[-1].attempt, batch[-1].seq)
    return _block(kept, pos)


def _block(kept: deque[LogRecord], end: Cursor | None) -> LogBlock:
    earlier = len(kept) > BLOCK
    lines = list(kept)[-BLOCK:]
    return LogBlock([line_of(r) for r in lines], end, earlier)

"""What a log follow reads: a wake with no new log line (a state change, an unrelated notify)
reads no log page, and a line added at any moment is still read before the task ends,
including one noted while the stream was between its wake and its next listen."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import ClientResponse

from manager.api import guards
from manager.api.context import CTX
from tests.manager.api import test_log_bytes
from tests.manager.api.test_api import Api
from tests.manager.api.test_log_bytes import running_task

# A manager over each store, with an admin key (the log bytes tests' own).
api = test_log_bytes.api


class _Counted:
    """The follow's task reads and log-page reads, counted; ``read`` is set at each task read
    (a wake handled)."""

    def __init__(self, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
        c = api.client.app[CTX]
        self.gets = 0
        self.pages = 0
        self.read = asyncio.Event()
        real_get: Callable[[str], Awaitable[Any]] = c.task_reads.get
        real_page: Callable[..., AbstractAsyncContextManager[Any]] = c.task_reads.log_page

        async def get(task_id: str) -> Any:
            self.gets += 1
            self.read.set()
            return await real_get(task_id)

        def log_page(task_id: str, **kw: Any) -> AbstractAsyncContextManager[Any]:
            self.pages += 1
            return real_page(task_id, **kw)

        monkeypatch.setattr(c.task_reads, "get", get)
        monkeypatch.setattr(c.task_reads, "log_page", log_page)

    async def woken(self) -> None:
        """Until the stream has read the task again (it woke and handled the wake)."""
        async with asyncio.timeout(30):
            await self.read.wait()
        self.read.clear()


async def _next(resp: ClientResponse) -> dict[str, Any]:
    async with asyncio.timeout(30):
        line: dict[str, Any] = json.loads(await resp.content.readline())
        return line


@dataclass
class _Follow:
    task_id: str
    cred: dict[str, str]
    counted: _Counted
    resp: ClientResponse


@contextlib.asynccontextmanager
async def _following(
    api: Api, monkeypatch: pytest.MonkeyPatch, *, recheck: float = 3600.0
) -> AsyncIterator[_Follow]:
    """A follow of a running task, its reads counted, past its first line (the state); woken
    only by notifies unless ``recheck`` (its re-check timer, FOLLOW_RECHECK_S) is short."""
    task_id, cred = await running_task(api)
    counted = _Counted(api, monkeypatch)
    monkeypatch.setattr("manager.api.tasks.FOLLOW_RECHECK_S", recheck)
    resp = await api.client.get(f"/api/v1/tasks/{task_id}/logs/follow", headers=api.auth())
    assert resp.status == 200
    try:
        assert await _next(resp) == {"kind": "state", "state": "running"}
        yield _Follow(task_id, cred, counted, resp)
    finally:
        resp.close()


async def _post_line(api: Api, task_id: str, cred: dict[str, str], seq: int) -> None:
    line = {"seq": seq, "stream": "stdout", "ts": 1.0, "text": f"line {seq}"}
    got = await api.client.post(
        f"/api/v1/delegate/tasks/{task_id}/logs",
        json={"attempt": 1, "lines": [line]},
        headers=cred,
    )
    assert got.status == 200, await got.text()


async def _finish(api: Api, task_id: str, cred: dict[str, str], last_seq: int) -> None:
    done = await api.client.post(
        f"/api/v1/delegate/tasks/{task_id}/result",
        json={"attempt": 1, "status": "succeeded", "exit_code": 0, "last_seq": last_seq},
        headers=cred,
    )
    assert done.status == 200, await done.text()


async def test_a_wake_with_no_new_log_line_reads_no_log_page(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = api.client.app[CTX]
    async with _following(api, monkeypatch) as f:
        assert f.counted.pages == 1  # the first read: the whole log so far (none)
        for _ in range(5):  # woken by changes that add no line (a list's, a state's)
            c.events.notify(f.task_id, listed=True)
            await f.counted.woken()
        await _post_line(api, f.task_id, f.cred, 0)
        assert (await _next(f.resp))["line"]["text"] == "line 0"
        await _finish(api, f.task_id, f.cred, 0)
        while (last := await _next(f.resp))["kind"] != "end":
            pass
        assert last["task"]["state"] == "succeeded"
    # The first read, the one after the line and its empty follow-up page: none for the five
    # wakes without a line (each read a page before). With replicas (PostgreSQL) one more
    # after the final state: another replica's word of its last lines may come after it.
    assert f.counted.pages == (4 if c.bus.shared else 3), f.counted.pages


async def test_a_wake_after_another_replicas_word_reads_the_task_to_the_end(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the permission check at the start reads the task of a follow whose changes are
    all made here (next test); once another replica spoke of it, every wake reads it."""
    c = api.client.app[CTX]
    async with _following(api, monkeypatch) as f:
        assert f.counted.gets == 1  # the permission check's read, taken as the first
        f.counted.read.clear()
        await c.tasks.on_remote("changed", f.task_id)  # as the bus delivers it
        await f.counted.woken()
        assert f.counted.gets == 2
        await _finish(api, f.task_id, f.cred, -1)
        while (last := await _next(f.resp))["kind"] != "end":
            pass
        assert last["task"]["state"] == "succeeded"
        # The final state written here, yet read: it may be older than the other's word.
        assert f.counted.gets == 3


async def test_a_follow_ends_on_the_final_state_written_here_without_reading_the_task(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone (SQLite). With replicas (PostgreSQL) the store is read at each wake: answers to
    writes of one task come back in the order they committed only through SQLite's one
    write queue, and another replica's word may be lost on the way."""
    shared = api.client.app[CTX].bus.shared
    async with _following(api, monkeypatch) as f:
        await _post_line(api, f.task_id, f.cred, 0)
        assert (await _next(f.resp))["line"]["text"] == "line 0"
        # Lines are no change of the task, but not written by a task write here either: the
        # stream read the task again after them (its wake, and the page that had a line).
        before = f.counted.gets
        assert before > 1
        await _finish(api, f.task_id, f.cred, 0)
        assert await _next(f.resp) == {"kind": "state", "state": "succeeded"}
        last = await _next(f.resp)
        assert last["kind"] == "end", last
        assert last["task"]["state"] == "succeeded"
        assert last["task"]["exit_code"] == 0
    assert f.counted.gets == before + (1 if shared else 0), f.counted.gets


async def test_a_line_noted_between_a_wake_and_the_next_listen_is_read_at_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log notify that lands after the stream woke (its wake event is used up) and before
    it listens again finds no event to set: the stream's tally still counts it, and the
    stream reads the line without waiting for another wake."""
    task_id, cred = await running_task(api)
    monkeypatch.setattr("manager.api.tasks.FOLLOW_RECHECK_S", 3600.0)
    c = api.client.app[CTX]
    real_recheck = guards.recheck
    add_line = asyncio.Event()

    async def recheck_then_add(request: Any) -> Any:
        # Runs after the stream woke, before it listens again: the window in question.
        if add_line.is_set():
            add_line.clear()
            await _post_line(api, task_id, cred, 0)
        return await real_recheck(request)

    monkeypatch.setattr("manager.api.tasks.recheck", recheck_then_add)
    resp = await api.client.get(f"/api/v1/tasks/{task_id}/logs/follow", headers=api.auth())
    assert resp.status == 200
    try:
        assert await _next(resp) == {"kind": "state", "state": "running"}
        add_line.set()
        c.events.notify(task_id, listed=True)  # a wake that carries no line of its own
        # No further wake comes (no re-check timer, no notify): the line is read at once.
        got = await _next(resp)
        assert got["kind"] == "log", got
        assert got["line"]["text"] == "line 0", got
    finally:
        resp.close()

"""The task page's live log: server-sent events over the API's own follow stream, the lines
as the page draws them (escaped), authorised by the console session and ended by the server
when that session ends."""

from __future__ import annotations

import asyncio
from typing import Any

from manager.api.console_cookie import COOKIE
from manager.api.context import CTX
from manager.console.stream import sse
from manager.records import AttemptRecord, LogRecord
from manager.schemas.grants import AppGrant
from manager.store.base import Store
from shared.protocol import TaskState
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.api.test_follow_revocation import _queued_task
from tests.manager.console.test_console_access import visit
from tests.manager.rbac_support import member

READ = AppGrant(actions=("read",))
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>\x1b[31mred\x1b[0m'


def test_no_text_in_an_event_can_start_a_field_of_its_own() -> None:
    raw = sse("lines", "a\r\nid: 9:9\rdata: x\nevent: end", event_id="1:2").decode()
    assert raw == (
        "event: lines\nid: 1:2\ndata: a\ndata: id: 9:9\ndata: data: x\ndata: event: end\n\n"
    )


async def _running_task(m: Manager, store: Store) -> str:
    task_id = await _queued_task(m, store)  # in shop/live
    running = await store.update_task(
        task_id,
        expect_state=TaskState.QUEUED,
        expect_attempt=0,
        changes={"state": TaskState.RUNNING, "attempt": 1, "delegate_id": "dlg_1"},
        start_attempt=AttemptRecord(task_id, 1, "dlg_1", m.clock()),
    )
    assert running is not None
    return task_id


class Events:
    """A server-sent event stream read one event at a time."""

    def __init__(self, resp: Any) -> None:
        self.resp = resp

    async def next(self) -> dict[str, str] | None:
        event: dict[str, str] = {}
        async with asyncio.timeout(30):  # bounded, not a sleep: a stuck stream fails here
            while raw := await self.resp.content.readline():
                line = raw.decode().rstrip("\n")
                if not line:
                    if event:
                        return event
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                event[name] = f"{event[name]}\n{value}" if name in event else value
        return None


async def test_the_live_log_comes_escaped_and_ends_with_the_session(
    m: Manager, store: Store
) -> None:
    task_id = await _running_task(m, store)
    token = await member(store, "watcher@example.com", apps=[READ])
    line = LogRecord(attempt=1, seq=0, stream="stdout", ts=m.clock(), text=HOSTILE)
    assert await store.append_logs(task_id, 1, "dlg_1", [line]) == 1
    resp = await m.client.get(
        f"/console/tasks/{task_id}/log/follow", headers={"Cookie": f"{COOKIE}={token}"}
    )
    try:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-store"
        events = Events(resp)
        assert await events.next() == {"event": "state", "data": "running"}
        lines = await events.next()
        assert lines is not None
        assert (lines["event"], lines["id"]) == ("lines", "1:0")
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in lines["data"]
        assert "<script" not in lines["data"]
        assert "<img" not in lines["data"]
        assert '<span class="fg-red">red</span>' in lines["data"]
        # A line that arrives later wakes the stream.
        more = LogRecord(attempt=1, seq=1, stream="stdout", ts=m.clock(), text="second")
        assert await store.append_logs(task_id, 1, "dlg_1", [more]) == 1
        m.client.app[CTX].events.notify(task_id)
        later = await events.next()
        assert later is not None
        assert (later["id"], ">second<" in later["data"]) == ("1:1", True)
        # Signing out elsewhere in the browser ends the stream: the server says why and
        # closes it.
        assert (await visit(m, "POST", "/console/logout", token))[0] == 303
        refused = await events.next()
        assert refused is not None
        assert refused["event"] == "refused"
        assert '"location": "/console/login"' in refused["data"]
        assert await events.next() is None
    finally:
        resp.close()
    # The reconnect is no stream: the login page's redirect.
    status, _, headers = await visit(m, "GET", f"/console/tasks/{task_id}/log/follow", token)
    assert (status, headers["Location"]) == (303, "/console/login")


async def test_a_reconnect_resumes_after_the_last_event_id(m: Manager, store: Store) -> None:
    task_id = await _running_task(m, store)
    token = await member(store, "watcher@example.com", apps=[READ])
    lines = [
        LogRecord(attempt=1, seq=i, stream="stdout", ts=m.clock(), text=f"n{i}") for i in range(3)
    ]
    assert await store.append_logs(task_id, 1, "dlg_1", lines) == 3
    headers = {"Cookie": f"{COOKIE}={token}", "Last-Event-ID": "1:1"}
    resp = await m.client.get(f"/console/tasks/{task_id}/log/follow?after=", headers=headers)
    try:
        events = Events(resp)
        assert (await events.next() or {}).get("event") == "state"
        got = await events.next()
        assert got is not None
        assert ">n2<" in got["data"]
        assert ">n1<" not in got["data"]
    finally:
        resp.close()


async def test_a_user_who_may_not_read_the_task_gets_no_stream(m: Manager, store: Store) -> None:
    task_id = await _running_task(m, store)
    token = await member(store, "stranger@example.com")
    status, body, _ = await visit(m, "GET", f"/console/tasks/{task_id}/log/follow", token)
    assert status == 404
    assert "text/event-stream" not in body

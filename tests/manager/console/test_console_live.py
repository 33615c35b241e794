"""The tasks list and the delegates page live over server-sent events: rows drawn again by
the page's template when a task is created or changes state (only rows the user may read),
the session judged again as the log's stream judges it, and the stream ended with
``refused`` when the session ends."""

from __future__ import annotations

import pytest

from manager.api.console_cookie import COOKIE
from manager.console import routes
from manager.schemas.grants import AppGrant
from manager.store.base import Store
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.console.test_console_access import visit
from tests.manager.console.test_console_follow import Events
from tests.manager.rbac_support import member, place


async def _submit(m: Manager, app: str, script: str) -> str:
    body = {"payload": {"type": "shell", "script": script}, "app": app, "env": "live"}
    status, task = await m.call("POST", "/api/v1/tasks", body)
    assert status == 201, task
    return str(task["id"])


async def test_the_list_shows_new_and_changed_tasks_the_user_may_read(
    m: Manager, store: Store
) -> None:
    shop, _ = await place(store, "shop", "live", "production")
    await place(store, "bank", "live", "production")
    token = await member(
        store, "watcher@example.com", apps=[AppGrant(apps=(shop,), actions=("read",))]
    )
    resp = await m.client.get("/console/tasks/live", headers={"Cookie": f"{COOKIE}={token}"})
    try:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-store"
        events = Events(resp)
        first = await events.next()
        assert first is not None
        assert first["event"] == "rows"
        assert "No tasks match." in first["data"]
        # A task of an application the user may not read changes nothing they are sent; one
        # they may read comes in the next rows.
        hidden = await _submit(m, "bank", "echo '<script>x</script>'")
        shown = await _submit(m, "shop", "true")
        rows = await events.next()
        assert rows is not None
        assert rows["event"] == "rows"
        assert f'href="/console/tasks/{shown}"' in rows["data"]
        assert hidden not in rows["data"]
        assert "state-queued" in rows["data"]
        # A change of state: the rows again, drawn with it.
        status, _ = await m.call("POST", f"/api/v1/tasks/{shown}/cancel", {})
        assert status == 200
        rows = await events.next()
        assert rows is not None
        assert 'class="badge state-cancelled"' in rows["data"]
        assert hidden not in rows["data"]
        # Signing out ends the stream: the server says where to go, and closes it.
        assert (await visit(m, "POST", "/console/logout", token))[0] == 303
        refused = await events.next()
        assert refused is not None
        assert refused["event"] == "refused"
        assert '"location": "/console/login"' in refused["data"]
        assert await events.next() is None
    finally:
        resp.close()


async def test_the_list_stream_keeps_the_pages_filters(m: Manager, store: Store) -> None:
    await place(store, "shop", "live", "production")
    await place(store, "bank", "live", "production")
    token = await member(store, "all@example.com", apps=[AppGrant(actions=("read",))])
    resp = await m.client.get(
        "/console/tasks/live?app=shop", headers={"Cookie": f"{COOKIE}={token}"}
    )
    try:
        events = Events(resp)
        assert (await events.next() or {}).get("event") == "rows"
        other = await _submit(m, "bank", "true")
        wanted = await _submit(m, "shop", "true")
        rows = await events.next()
        assert rows is not None
        assert wanted in rows["data"]
        assert other not in rows["data"]
    finally:
        resp.close()


async def test_the_delegate_rows_come_live_and_end_with_the_session(
    m: Manager, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Drawn again on a timer (no event announces heartbeats): its first rows come one
    # interval after the page, made short here.
    monkeypatch.setattr(routes, "DELEGATES_EVERY_S", 0.05)
    token = await member(store, "ops@example.com")
    resp = await m.client.get("/console/delegates/live", headers={"Cookie": f"{COOKIE}={token}"})
    try:
        assert resp.status == 200
        events = Events(resp)
        first = await events.next()
        assert first is not None
        assert (first["event"], "No delegates have registered." in first["data"]) == (
            "rows",
            True,
        )
        status, _ = await m.call("POST", "/api/v1/users/ops@example.com/disable")
        assert status in (200, 204)
        refused = await events.next()
        assert refused is not None
        assert refused["event"] == "refused"
        assert '"location": "/console/login"' in refused["data"]
    finally:
        resp.close()


async def test_the_streams_refuse_a_missing_or_unknown_cookie_as_the_pages(
    m: Manager, store: Store
) -> None:
    for path in ("/console/tasks/live", "/console/delegates/live"):
        for token in (None, "tss_not-a-session"):
            status, body, headers = await visit(m, "GET", path, token)
            assert (status, headers.get("Location")) == (303, "/console/login"), path
            assert "text/event-stream" not in headers.get("Content-Type", "")
            assert "data:" not in body


async def test_the_pages_no_longer_poll_and_name_their_streams(m: Manager, store: Store) -> None:
    token = await member(store, "ops@example.com")
    _, page, _ = await visit(m, "GET", "/console/tasks?state=queued&submitter=%22%3E", token)
    assert 'data-live="/console/tasks/live?state=queued&amp;submitter=%22%3E"' in page
    assert "hx-trigger" not in page
    _, page, _ = await visit(m, "GET", "/console/delegates", token)
    assert 'data-live="/console/delegates/live"' in page
    assert "hx-trigger" not in page

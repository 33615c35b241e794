"""A log follow stream outlives the check that opened it: disabling its user, revoking its API
key, ending its session or taking away read on the task ends it. A change made through this
replica wakes the stream at once (each test waits on the stream's end, bounded, never a
sleep); one made on another replica is seen at the stream's next re-check. The stream's
first read is its check's own, and a change right after that read still wakes it."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from manager.access.tokens import create_token
from manager.api.context import CTX
from manager.schemas.grants import AppGrant
from manager.store.base import Store
from tests.manager.access_support import Manager, manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.api.test_api import registration
from tests.manager.rbac_support import member, place

EMAIL = "follower@example.com"
READ = AppGrant(actions=("read", "execute"))


async def _follow_until_end(
    m: Manager, key: str, task_id: str, revoke: Callable[[], Awaitable[Any]]
) -> list[dict[str, Any]]:
    """The stream's lines: opened with ``key``, then ``revoke`` once it is live."""
    resp = await m.client.get(f"/api/v1/tasks/{task_id}/logs/follow", headers=m.auth(key))
    assert resp.status == 200, await resp.text()
    lines: list[dict[str, Any]] = []
    try:
        first = json.loads(await resp.content.readline())
        assert first == {"kind": "state", "state": "queued"}
        lines.append(first)
        await revoke()
        # Bounded, not a sleep: the stream must end well before a re-check interval would
        # matter on a loaded machine; a stream that never ends fails here.
        async with asyncio.timeout(30):
            while raw := await resp.content.readline():
                lines.append(json.loads(raw))
    finally:
        resp.close()
    return lines


async def _queued_task(m: Manager, store: Store) -> str:
    await place(store, "shop", "live", "production")
    status, task = await m.call(
        "POST",
        "/api/v1/tasks",
        {"payload": {"type": "shell", "script": "true"}, "app": "shop", "env": "live"},
    )
    assert status == 201, task
    return str(task["id"])


@pytest.mark.parametrize("how", ["disable_user", "end_sessions", "logout"])
async def test_ending_the_users_access_ends_their_session_stream(
    m: Manager, store: Store, how: str
) -> None:
    task_id = await _queued_task(m, store)
    session = await member(store, EMAIL, apps=[READ])

    async def revoke() -> None:
        if how == "disable_user":
            status, _ = await m.call("POST", f"/api/v1/users/{EMAIL}/disable")
        elif how == "end_sessions":
            status, _ = await m.call("POST", f"/api/v1/users/{EMAIL}/logout")
        else:
            status, _ = await m.call("POST", "/api/v1/auth/logout", key=session)
        assert status in (200, 204)

    lines = await _follow_until_end(m, session, task_id, revoke)
    last = lines[-1]
    assert last["kind"] == "error", lines
    assert last["error"]["code"] in ("user_disabled", "session_expired")
    # And the client's reconnect is refused outright.
    status, _ = await m.call("GET", f"/api/v1/tasks/{task_id}/logs", key=session)
    assert status == 401


async def test_revoking_the_api_key_ends_its_stream(m: Manager, store: Store) -> None:
    task_id = await _queued_task(m, store)
    status, made = await m.call("POST", "/api/v1/api-keys", {"name": "watcher", "max_qps": 100})
    assert status == 201

    async def revoke() -> None:
        assert (await m.call("DELETE", "/api/v1/api-keys/watcher"))[0] == 200

    lines = await _follow_until_end(m, made["key"], task_id, revoke)
    assert lines[-1]["kind"] == "error", lines
    assert lines[-1]["error"]["code"] == "api_key_revoked"


async def test_taking_away_read_ends_the_stream(m: Manager, store: Store) -> None:
    task_id = await _queued_task(m, store)
    session = await member(store, EMAIL, apps=[READ])

    async def revoke() -> None:
        status, _ = await m.call("PATCH", f"/api/v1/groups/group-{EMAIL}", {"app_permissions": []})
        assert status == 200

    lines = await _follow_until_end(m, session, task_id, revoke)
    assert lines[-1]["kind"] == "error", lines
    assert lines[-1]["error"]["code"] == "not_found"


async def test_an_unrelated_change_leaves_a_stream_open(m: Manager, store: Store) -> None:
    """A change wakes every stream to re-judge itself; one still allowed carries on to the
    task's end."""
    task_id = await _queued_task(m, store)
    session = await member(store, EMAIL, apps=[READ])

    async def unrelated_then_cancel() -> None:
        status, _ = await m.call("POST", "/api/v1/groups", {"name": "bystanders"})
        assert status == 201
        assert (await m.call("POST", f"/api/v1/tasks/{task_id}/cancel"))[0] == 200

    lines = await _follow_until_end(m, session, task_id, unrelated_then_cancel)
    assert [line["kind"] for line in lines if line["kind"] != "ping"][-1] == "end", lines
    assert not [line for line in lines if line["kind"] == "error"]


async def test_a_key_revoked_on_another_replica_ends_the_stream_at_its_recheck(
    m: Manager, store: Store, tmp_path: Path
) -> None:
    """No event crosses replicas: the stream's periodic re-check (FOLLOW_RECHECK_S) finds the
    revocation once the caches' lifetime has passed on the injected clock."""
    task_id = await _queued_task(m, store)
    status, made = await m.call("POST", "/api/v1/api-keys", {"name": "watcher", "max_qps": 100})
    assert status == 201
    async with manager(tmp_path, store, m.clock) as other:

        async def revoke_elsewhere() -> None:
            assert (await other.call("DELETE", "/api/v1/api-keys/watcher"))[0] == 200
            m.clock.advance(1.5)  # past this replica's key and principal caches (1 s)

        lines = await _follow_until_end(m, made["key"], task_id, revoke_elsewhere)
    assert lines[-1]["kind"] == "error", lines
    assert lines[-1]["error"]["code"] == "api_key_revoked"


async def test_a_change_between_the_check_and_the_stream_is_not_missed(
    m: Manager, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream takes its permission check's read as its first; the wake-ups were listened
    for before that read, so a change landing right after it wakes the stream at once."""
    task_id = await _queued_task(m, store)
    c = m.client.app[CTX]
    real_get = c.task_reads.get
    reads = 0

    async def get_then_cancel(tid: str) -> Any:
        nonlocal reads
        reads += 1
        task = await real_get(tid)
        if reads == 1:  # the check's read: the task is cancelled before the stream waits
            await c.tasks.cancel(tid)
        return task

    monkeypatch.setattr(c.task_reads, "get", get_then_cancel)
    # Without the wake-up, only the re-check would see the cancel: far past the bound below.
    monkeypatch.setattr("manager.api.tasks.FOLLOW_RECHECK_S", 3600.0)
    resp = await m.client.get(f"/api/v1/tasks/{task_id}/logs/follow", headers=m.auth())
    assert resp.status == 200, await resp.text()
    lines = []
    async with asyncio.timeout(30):
        while raw := await resp.content.readline():
            lines.append(json.loads(raw))
    assert [x["kind"] for x in lines] == ["state", "state", "end"], lines
    assert [x.get("state") for x in lines[:2]] == ["queued", "cancelled"]
    assert lines[-1]["task"]["state"] == "cancelled"
    # The check's read served as the stream's first: one more read saw the cancel.
    assert reads == 2


async def test_a_revocation_ends_a_stream_that_is_still_reading_a_long_log(
    m: Manager, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader behind a task that keeps writing gets a page at every read and never waits:
    the checks must run on that path too (an attack on a running manager read a production
    task's new lines for the whole minute after its key was revoked)."""
    # Outside any application: any account-wide delegate may take it at once.
    status, task = await m.call(
        "POST", "/api/v1/tasks", {"payload": {"type": "shell", "script": "yes"}}
    )
    assert status == 201, task
    task_id = task["id"]
    _, token = await create_token(store, "tok-runner")
    resp = await m.client.post(
        "/api/v1/delegate/register",
        json=registration(name="runner", public_key=base64.b64encode(b"r" * 32).decode()),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status == 200, await resp.text()
    cred = {"Authorization": f"Bearer {(await resp.json())['session_token']}"}
    got = await m.client.post(f"/api/v1/delegate/tasks/{task_id}/acquire", headers=cred)
    assert got.status == 200, await got.text()
    pages, per_page = 6, 1000
    for page in range(pages):
        lines = [
            {"seq": page * per_page + i, "stream": "stdout", "ts": 1.0, "text": "x" * 400}
            for i in range(per_page)
        ]
        posted = await m.client.post(
            f"/api/v1/delegate/tasks/{task_id}/logs",
            json={"attempt": 1, "lines": lines},
            headers=cred,
        )
        assert posted.status == 200, await posted.text()
    session = await member(store, EMAIL, apps=[READ])
    # Only the revocation can end it early: no periodic re-check within the test.
    monkeypatch.setattr("manager.api.tasks.FOLLOW_RECHECK_S", 3600.0)
    follow = await m.client.get(f"/api/v1/tasks/{task_id}/logs/follow", headers=m.auth(session))
    assert follow.status == 200
    kinds: list[str] = []
    try:
        async with asyncio.timeout(30):
            while len(kinds) < 11:  # the state, then ten lines of the first page
                kinds.append(json.loads(await follow.content.readline())["kind"])
            status, _ = await m.call(
                "PATCH", f"/api/v1/groups/group-{EMAIL}", {"app_permissions": []}
            )
            assert status == 200
            while raw := await follow.content.readline():
                kinds.append(json.loads(raw)["kind"])
    finally:
        follow.close()
    assert kinds[-1] == "error", kinds[-3:]
    # The pages written before the check saw the change (what the socket's buffers held),
    # not the whole log.
    assert kinds.count("log") < (pages - 2) * per_page

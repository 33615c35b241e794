"""A submit that waits (``POST /api/v1/tasks?wait=S``): answered with the task once final,
or as it is when the wait runs out; refused before anything is written when the wait is
malformed or the caller may not read what it waits for; and a caller whose read goes while
it waits is told no more than the submit without a wait would have told it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import ClientResponse

from manager.api.context import CTX
from manager.core.audit_chain import AuditQuery
from manager.records import TaskFilter
from manager.schemas.grants import AppGrant
from manager.store.base import Store
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.api import test_log_bytes
from tests.manager.api.test_api import SHELL, Api, _registered
from tests.manager.rbac_support import member, place

# A manager over each store (SQLite and PostgreSQL), with an admin key.
api = test_log_bytes.api


async def _waiting(
    client: Any, store: Store, headers: dict[str, str], body: dict[str, Any], wait: float
) -> tuple[asyncio.Task[ClientResponse], str]:
    """A submit with ``wait`` under way, and its task's id once it is stored (known from the
    task list's wake-up, before the submit answers)."""
    listed = client.app[CTX].events.listen_listed()
    submit = asyncio.create_task(
        client.post("/api/v1/tasks", params={"wait": str(wait)}, json=body, headers=headers)
    )
    async with asyncio.timeout(30):
        await listed.wait()
    (task,) = await store.list_tasks(TaskFilter())
    return submit, task.id


async def _finish(api: Api, task_id: str, exit_code: int) -> None:
    cred = {"Authorization": f"Bearer {await _registered(api)}"}
    got = await api.client.post(f"/api/v1/delegate/tasks/{task_id}/acquire", headers=cred)
    assert got.status == 200, await got.text()
    done = await api.client.post(
        f"/api/v1/delegate/tasks/{task_id}/result",
        json={"attempt": 1, "status": "failed", "exit_code": exit_code, "last_seq": -1},
        headers=cred,
    )
    assert done.status == 200, await done.text()


async def test_a_waiting_submit_is_answered_with_the_final_task(api: Api) -> None:
    submit, task_id = await _waiting(api.client, api.store, api.auth(), dict(SHELL), 30)
    assert not submit.done()  # queued, then running: no answer yet
    await _finish(api, task_id, exit_code=3)
    async with asyncio.timeout(30):
        resp = await submit
    assert resp.status == 201
    task = await resp.json()
    assert (task["id"], task["state"], task["exit_code"]) == (task_id, "failed", 3)
    # The answer is the task's whole view, as a read of it: which attempt ran, and where.
    assert [a["status"] for a in task["attempts"]] == ["failed"]


async def test_a_wait_that_runs_out_answers_with_the_task_as_it_is(api: Api) -> None:
    resp = await api.client.post(
        "/api/v1/tasks", params={"wait": "0.05"}, json=dict(SHELL), headers=api.auth()
    )
    assert resp.status == 201
    task = await resp.json()
    assert task["state"] == "queued"  # no delegate: it waits in the queue, as submitted
    # An idempotent repeat waits for the same task, and is answered 200 as without a wait.
    body = {**SHELL, "idempotency_key": "k-1"}
    first = await api.client.post(
        "/api/v1/tasks", params={"wait": "0.05"}, json=body, headers=api.auth()
    )
    again = await api.client.post(
        "/api/v1/tasks", params={"wait": "0.05"}, json=body, headers=api.auth()
    )
    assert (first.status, again.status) == (201, 200)
    assert (await first.json())["id"] == (await again.json())["id"]


@pytest.mark.parametrize(
    "wait", ["0", "-1", "61", "nan", "inf", "soon", "", " 1", "1_0", "1e1", "\uff16", "+1", "0x10"]
)
async def test_a_malformed_wait_is_a_400_that_writes_nothing(api: Api, wait: str) -> None:
    before = await api.store.list_audit(AuditQuery(limit=1))
    resp = await api.client.post(
        "/api/v1/tasks", params={"wait": wait}, json=dict(SHELL), headers=api.auth()
    )
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["field"] == "wait"
    assert error["message"].startswith("wait: ")
    assert "\n" not in error["message"]
    assert await api.store.list_tasks(TaskFilter()) == []
    assert await api.store.list_audit(AuditQuery(limit=1)) == before


async def test_waiting_needs_read_where_the_task_runs(m: Manager, store: Store) -> None:
    await place(store, "shop", "staging", "non_production")
    runner = await member(
        store, "runner@example.com", apps=[AppGrant(envs="non_production", actions=("execute",))]
    )
    body = {**SHELL, "app": "shop", "env": "staging"}
    resp = await m.client.post(
        "/api/v1/tasks", params={"wait": "5"}, json=body, headers=m.auth(runner)
    )
    assert resp.status == 403
    assert "needs read" in (await resp.json())["error"]["message"]
    assert await store.list_tasks(TaskFilter()) == []
    # Without the wait the same submit stands: execute is all a submit needs.
    status, task = await m.call("POST", "/api/v1/tasks", body, key=runner)
    assert status == 201, task


async def test_a_caller_whose_read_goes_while_it_waits_learns_no_outcome(
    m: Manager, store: Store
) -> None:
    await place(store, "shop", "staging", "non_production")
    email = "waiter@example.com"
    session = await member(
        store, email, apps=[AppGrant(envs="non_production", actions=("read", "execute"))]
    )
    body = {**SHELL, "app": "shop", "env": "staging"}
    submit, task_id = await _waiting(m.client, store, m.auth(session), body, 30)
    status, _ = await m.call("PATCH", f"/api/v1/groups/group-{email}", {"app_permissions": []})
    assert status == 200
    # The admin cancels it: final, with an outcome the waiter may no longer see.
    assert (await m.call("POST", f"/api/v1/tasks/{task_id}/cancel"))[0] == 200
    async with asyncio.timeout(30):
        resp = await submit
    assert resp.status == 201
    task = await resp.json()
    # What the submit would have answered without its wait: the task as it was submitted.
    assert (task["id"], task["state"], task["attempts"]) == (task_id, "queued", [])


async def test_a_wait_given_twice_is_a_400(api: Api) -> None:
    resp = await api.client.post(
        "/api/v1/tasks",
        params=[("wait", "0.1"), ("wait", "30")],
        json=dict(SHELL),
        headers=api.auth(),
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["message"] == "wait: give it once"
    assert await api.store.list_tasks(TaskFilter()) == []


async def test_a_repeat_by_a_caller_who_may_not_read_tells_no_outcome(
    m: Manager, store: Store
) -> None:
    """Execute without read: the repeat of a submit (same idempotency key) answers the task
    as that submit did, never what became of it (a repeat was a way to poll its outcome)."""
    await place(store, "shop", "staging", "non_production")
    runner = await member(
        store, "runner@example.com", apps=[AppGrant(envs="non_production", actions=("execute",))]
    )
    body = {**SHELL, "app": "shop", "env": "staging", "idempotency_key": "nightly-1"}
    status, first = await m.call("POST", "/api/v1/tasks", body, key=runner)
    assert (status, first["state"]) == (201, "queued")
    assert (await m.call("POST", f"/api/v1/tasks/{first['id']}/cancel"))[0] == 200
    status, again = await m.call("POST", "/api/v1/tasks", body, key=runner)
    assert status == 200
    assert again == first
    # One who may read it is told where it stands.
    reader = await member(
        store,
        "reader@example.com",
        apps=[AppGrant(envs="non_production", actions=("read", "execute"))],
    )
    status, mine = await m.call("POST", "/api/v1/tasks", body, key=reader)
    assert status == 201
    assert (await m.call("POST", f"/api/v1/tasks/{mine['id']}/cancel"))[0] == 200
    status, again = await m.call("POST", "/api/v1/tasks", body, key=reader)
    assert (status, again["id"], again["state"]) == (200, mine["id"], "cancelled")

"""Tasks belong to an application and environment: submitting needs execute there, seeing
needs read, and the deployment history lists what the caller may see."""

from __future__ import annotations

from typing import Any

import pytest

from manager.records import TaskFilter
from manager.schemas.grants import AppGrant
from manager.store.base import Store
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.rbac_support import member, place

SHELL = {"type": "shell", "script": "echo hi"}


@pytest.fixture
async def ids(store: Store) -> dict[str, tuple[str, str]]:
    return {
        "checkout/staging": await place(store, "checkout", "staging", "non_production"),
        "checkout/prod": await place(store, "checkout", "prod", "production"),
        "billing/staging": await place(store, "billing", "staging", "non_production"),
    }


async def submit(m: Manager, key: str | None = None, **body: Any) -> tuple[int, Any]:
    return await m.call("POST", "/api/v1/tasks", {"payload": SHELL, **body}, key=key)


async def test_submitting_needs_execute_on_the_tasks_app_and_env(
    m: Manager, store: Store, ids: dict[str, tuple[str, str]]
) -> None:
    dev = await member(
        store,
        "dev@example.com",
        apps=[
            AppGrant(
                apps=(ids["checkout/staging"][0],),
                envs="non_production",
                actions=("read", "execute"),
            )
        ],
    )
    status, task = await submit(m, dev, app="checkout", env="staging")
    assert status == 201, task
    assert (task["app"], task["env"]) == ("checkout", "staging")
    assert (task["app_id"], task["env_id"]) == ids["checkout/staging"]
    assert task["submitted_by"].startswith("usr_")

    for app, env in (("checkout", "prod"), ("billing", "staging")):
        status, body = await submit(m, dev, app=app, env=env)
        assert status == 403, body
        assert body["error"]["message"] == f"you may not execute in {app}/{env}"
    # Outside any application: execute on every one is needed.
    status, body = await submit(m, dev)
    assert status == 403
    assert "name the task's app and env" in body["error"]["message"]
    # The admin key holds execute everywhere.
    assert (await submit(m))[0] == 201
    assert len(await store.list_tasks(TaskFilter())) == 2


async def test_unknown_or_half_named_places_are_400s(m: Manager, ids: dict[str, Any]) -> None:
    status, body = await submit(m, app="checkout", env="nope")
    assert status == 400
    assert body["error"]["message"] == "no environment 'nope' in application 'checkout'"
    status, body = await submit(m, app="checkout")
    assert status == 400
    assert "app and env go together" in str(body)


async def test_a_task_is_seen_only_with_read_on_its_place(
    m: Manager, store: Store, ids: dict[str, tuple[str, str]]
) -> None:
    _, mine = await submit(m, app="checkout", env="staging")
    _, theirs = await submit(m, app="billing", env="staging")
    _, loose = await submit(m)
    reader = await member(
        store,
        "reader@example.com",
        apps=[AppGrant(apps=(ids["checkout/staging"][0],), actions=("read",))],
    )
    status, listed = await m.call("GET", "/api/v1/tasks", key=reader)
    assert status == 200
    assert [t["id"] for t in listed["tasks"]] == [mine["id"]]
    for task in (theirs, loose):
        for path in (f"/api/v1/tasks/{task['id']}", f"/api/v1/tasks/{task['id']}/logs"):
            status, body = await m.call("GET", path, key=reader)
            assert status == 404, path
            assert body["error"]["message"] == f"no task {task['id']}"
    assert (await m.call("GET", f"/api/v1/tasks/{mine['id']}", key=reader))[0] == 200
    # Reading is not executing: cancelling needs execute.
    status, body = await m.call("POST", f"/api/v1/tasks/{mine['id']}/cancel", key=reader)
    assert status == 403
    assert body["error"]["message"] == f"you may not execute task {mine['id']}"
    assert (await store.get_task(mine["id"])).state.value == "queued"  # type: ignore[union-attr]


async def test_deployment_history_filters_by_app_env_service_and_status(
    m: Manager, store: Store, ids: dict[str, tuple[str, str]]
) -> None:
    def deploy(service: str, env: str) -> dict[str, Any]:
        return {"service": service, "environment": env, "version": "1.0"}

    _, a = await submit(m, app="checkout", env="staging", deployment=deploy("web", "staging"))
    _, b = await submit(m, app="checkout", env="prod", deployment=deploy("web", "prod"))
    _, c = await submit(m, app="checkout", env="prod", deployment=deploy("api", "prod"))
    await submit(m, app="checkout", env="prod")  # no deployment data: not history

    async def history(**query: str) -> list[str]:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        status, body = await m.call("GET", f"/api/v1/deployments?{qs}")
        assert status == 200, body
        return [t["id"] for t in body["tasks"]]

    assert await history() == [c["id"], b["id"], a["id"]]
    assert await history(app="checkout", env="prod") == [c["id"], b["id"]]
    assert await history(app="checkout", service="web") == [b["id"], a["id"]]
    assert await history(status="queued", service="api") == [c["id"]]
    assert await history(status="succeeded") == []
    status, body = await m.call("GET", "/api/v1/deployments?app=nope")
    assert (status, body["error"]["message"]) == (400, "no application 'nope'")
    # A reader of staging sees staging's deployments only.
    reader = await member(
        store, "r@example.com", apps=[AppGrant(envs="non_production", actions=("read",))]
    )
    status, body = await m.call("GET", "/api/v1/deployments", key=reader)
    assert [t["id"] for t in body["tasks"]] == [a["id"]]

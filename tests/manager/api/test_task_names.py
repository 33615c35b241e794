"""Tasks by name, label and id prefix through the API; a deployment's environment must be
the task's own."""

from __future__ import annotations

from typing import Any

import pytest

from manager.store.base import Store
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.rbac_support import place

SHELL = {"type": "shell", "script": "echo hi"}


async def submit(m: Manager, **body: Any) -> tuple[int, Any]:
    return await m.call("POST", "/api/v1/tasks", {"payload": SHELL, **body})


async def listed(m: Manager, query: str) -> list[str]:
    status, body = await m.call("GET", f"/api/v1/tasks?{query}")
    assert status == 200, body
    return [t["id"] for t in body["tasks"]]


async def test_names_labels_and_prefixes_find_tasks(m: Manager) -> None:
    status, a = await submit(m, name="nightly", labels={"team": "web", "tier": "1"})
    assert status == 201, a
    assert (a["name"], a["labels"]) == ("nightly", {"team": "web", "tier": "1"})
    _, b = await submit(m, name="other", labels={"team": "db"})

    assert await listed(m, "name=nightly") == [a["id"]]
    assert await listed(m, "label=team=web&label=tier=1") == [a["id"]]
    assert await listed(m, "label=team=db") == [b["id"]]
    assert set(await listed(m, f"id_prefix={a['id'][:6]}")) == {a["id"], b["id"]}
    assert await listed(m, f"id_prefix={a['id']}") == [a["id"]]


@pytest.mark.parametrize(
    ("query", "field"),
    [("label=nokey", "label"), ("label=a%22b=1", "label"), ("id_prefix=task%25", "id_prefix")],
)
async def test_a_bad_filter_is_a_400_naming_it(m: Manager, query: str, field: str) -> None:
    status, body = await m.call("GET", f"/api/v1/tasks?{query}")
    assert (status, body["error"]["field"]) == (400, field)


async def test_a_bad_label_or_name_on_submit_is_a_400(m: Manager) -> None:
    status, body = await submit(m, labels={"bad key": "x"})
    assert (status, body["error"]["field"]) == (400, "labels.bad key.[key]")
    status, body = await submit(m, name="")
    assert (status, body["error"]["field"]) == (400, "name")


async def test_a_deployment_goes_to_the_tasks_own_environment(m: Manager, store: Store) -> None:
    await place(store, "checkout", "staging", "non_production")
    deploy = {"service": "web", "environment": "other"}
    status, body = await submit(m, app="checkout", env="staging", deployment=deploy)
    assert (status, body["error"]["field"]) == (400, "deployment.environment")
    assert "differs from the task's environment 'staging'" in body["error"]["message"]
    same = {"service": "web", "environment": "staging"}
    status, task = await submit(m, app="checkout", env="staging", deployment=same)
    assert status == 201, task
    status, body = await m.call("GET", "/api/v1/deployments?app=checkout&env=staging")
    assert [t["id"] for t in body["tasks"]] == [task["id"]]


async def test_an_idempotency_key_reused_with_other_labels_is_a_conflict(m: Manager) -> None:
    status, first = await submit(m, idempotency_key="k1", name="a", labels={"x": "1"})
    assert status == 201, first
    status, again = await submit(m, idempotency_key="k1", name="a", labels={"x": "1"})
    assert (status, again["id"]) == (200, first["id"])
    status, body = await submit(m, idempotency_key="k1", name="a", labels={"x": "2"})
    assert status == 409
    assert "different labels" in body["error"]["message"]

"""What one principal can learn of, or do to, another's tasks and secrets: idempotency keys
are each submitter's in each place, and every route of a resource answers as its parent does
(a resource the caller may not see is a 404 on each)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest

from manager.records import TaskFilter
from manager.schemas.grants import AppGrant
from manager.store.base import Store
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.rbac_support import member, place

DEPLOY = {"type": "shell", "script": "deploy --prod"}
STAGING = {"type": "shell", "script": "deploy --staging"}


@pytest.fixture
async def staging_user(store: Store) -> str:
    """Reads and executes in checkout/staging, and nowhere else."""
    app_id, _ = await place(store, "checkout", "staging", "non_production")
    await place(store, "checkout", "prod", "production")
    grant = AppGrant(apps=(app_id,), envs="non_production", actions=("read", "execute"))
    return await member(store, "staging@example.com", apps=[grant])


async def submit(
    m: Manager, payload: dict[str, Any], env: str, key: str | None = None, **body: Any
) -> tuple[int, Any]:
    request = {"payload": payload, "app": "checkout", "env": env, **body}
    return await m.call("POST", "/api/v1/tasks", request, key=key)


async def test_anothers_idempotency_key_never_returns_their_task(
    m: Manager, store: Store, staging_user: str
) -> None:
    status, prod = await submit(m, DEPLOY, "prod", idempotency_key="release-42")
    assert status == 201
    # The staging user replaying the admin's key gets a task of its own, not the prod one.
    status, theirs = await submit(m, STAGING, "staging", staging_user, idempotency_key="release-42")
    assert status == 201, theirs
    assert theirs["id"] != prod["id"]
    assert theirs["payload"]["script"] == STAGING["script"]
    assert theirs["idempotency_key"] == "release-42"
    assert len(await store.list_tasks(TaskFilter())) == 2


async def test_a_key_used_first_by_another_does_not_swallow_a_later_submit(
    m: Manager, store: Store, staging_user: str
) -> None:
    status, first = await submit(m, STAGING, "staging", staging_user, idempotency_key="k1")
    assert status == 201
    # The admin's prod deploy with the same key is queued as its own task.
    status, prod = await submit(m, DEPLOY, "prod", idempotency_key="k1")
    assert status == 201, prod
    assert (prod["env"], prod["payload"]["script"]) == ("prod", DEPLOY["script"])
    assert prod["id"] != first["id"]
    # The same key in another place is another key, for the same submitter too.
    status, staged = await submit(m, DEPLOY, "staging", idempotency_key="k1")
    assert status == 201
    assert staged["id"] not in (first["id"], prod["id"])


async def test_a_replay_returns_the_task_and_a_changed_replay_is_a_409(
    m: Manager, store: Store, staging_user: str
) -> None:
    status, first = await submit(
        m, DEPLOY, "prod", idempotency_key="r1", secret_env={"T": "old-v4lue"}
    )
    assert status == 201
    status, again = await submit(
        m, DEPLOY, "prod", idempotency_key="r1", secret_env={"T": "old-v4lue"}
    )
    assert (status, again["id"]) == (200, first["id"])
    for change, named in (
        ({"payload": STAGING}, "payload"),
        ({"max_attempts": 3}, "max_attempts"),
        ({"secret_env": {"T": "new-v4lue"}}, "secret_env"),
    ):
        body: dict[str, Any] = {"secret_env": {"T": "old-v4lue"}, "payload": DEPLOY, **change}
        payload = body.pop("payload")
        status, err = await submit(m, payload, "prod", idempotency_key="r1", **body)
        assert status == 409, err
        assert err["error"]["field"] == "idempotency_key"
        assert f"with a different {named}" in err["error"]["message"]
        assert first["id"] in err["error"]["message"]
        # The secret value is compared, never shown.
        assert "v4lue" not in str(err)
    assert len(await store.list_tasks(TaskFilter())) == 1


# -- every route of a resource answers as its parent does ------------------------------------


async def _routes_under(m: Manager, prefix: str) -> list[tuple[str, str]]:
    status, doc = await m.call("GET", "/api/v1/openapi.json")
    assert status == 200
    return [
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        if path == prefix or path.startswith(prefix + "/")
        for method in ops
    ]


async def _walk(m: Manager, key: str, prefix: str, params: dict[str, str]) -> list[str]:
    """Every route under ``prefix`` called by ``key`` for the resource ``params`` names: the
    answers that are neither a 404 nor the guard's own 403 (which does not depend on the
    resource)."""
    routes = await _routes_under(m, prefix)
    assert len(routes) > 1, routes  # the parent and at least one sibling
    leaks = []
    for method, path in routes:
        concrete = re.sub(r"\{(\w+)\}", lambda g: quote(params[g.group(1)], safe=""), path)
        body: dict[str, Any] | None = None if method in ("GET", "DELETE") else {}
        resp = await m.client.request(method, concrete, json=body, headers=m.auth(key))
        text = await resp.text()
        resp.close()
        guarded = resp.status == 403 and "this needs the" in text
        if resp.status != 404 and not guarded:
            leaks.append(f"{method} {path}: {resp.status} {text[:200]}")
    return leaks


async def test_every_route_of_an_invisible_secret_is_a_404(m: Manager, staging_user: str) -> None:
    scope = {"targets": [{"apps": ["checkout"], "envs": ["prod"]}]}
    status, made = await m.call(
        "POST", "/api/v1/secrets", {"name": "prod/db", "value": "v4lue", "scope": scope}
    )
    assert status == 201, made
    # The parent: the user does not see it ...
    status, listed = await m.call("GET", "/api/v1/secrets", key=staging_user)
    assert (status, listed["secrets"]) == (200, [])
    # ... and no sibling route tells it exists (versions used to answer with its size).
    assert await _walk(m, staging_user, "/api/v1/secrets/{name}", {"name": "prod/db"}) == []
    # Seen by those who may: the admin gets its versions.
    status, versions = await m.call("GET", "/api/v1/secrets/prod%2Fdb/versions")
    assert (status, len(versions["versions"])) == (200, 1)


async def test_every_route_of_an_invisible_task_is_a_404(m: Manager, staging_user: str) -> None:
    status, task = await submit(m, DEPLOY, "prod")
    assert status == 201
    assert await _walk(m, staging_user, "/api/v1/tasks/{task_id}", {"task_id": task["id"]}) == []

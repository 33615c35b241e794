"""A task listing leaves out what the caller may not read *before* its limit: with the limit
applied first and the page filtered after, the limit at which a reader's own task showed
told how many tasks it may not read matched its filter, and bisecting ``until`` told when
(an attack on a running manager counted and timed hidden production deployments so). That
the query's filter is the same judgment as a read of each task, on either store, is
tests/manager/store/test_store_readable.py."""

from __future__ import annotations

import pytest

from manager.schemas.grants import AppGrant
from manager.store.base import Store
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.rbac_support import member, place


async def test_a_limit_counts_only_what_the_caller_may_read(m: Manager, store: Store) -> None:
    await place(store, "shop", "staging", "non_production")
    await place(store, "shop", "prod", "production")
    reader = await member(
        store, "reader@example.com", apps=[AppGrant(envs="non_production", actions=("read",))]
    )
    body = {"payload": {"type": "shell", "script": "true"}, "app": "shop"}
    status, mine = await m.call("POST", "/api/v1/tasks", {**body, "env": "staging"})
    assert status == 201
    for _ in range(3):  # newer, and hidden from the reader
        assert (await m.call("POST", "/api/v1/tasks", {**body, "env": "prod"}))[0] == 201
    for limit in (1, 2, 4):
        status, page = await m.call("GET", f"/api/v1/tasks?limit={limit}", key=reader)
        assert status == 200
        assert [t["id"] for t in page["tasks"]] == [mine["id"]], limit


@pytest.mark.parametrize("route", ["/api/v1/tasks", "/api/v1/deployments"])
async def test_an_admin_lists_everything_unfiltered(m: Manager, store: Store, route: str) -> None:
    await place(store, "shop", "prod", "production")
    deploy = {"service": "web", "environment": "prod"}
    body = {"payload": {"type": "shell", "script": "true"}, "app": "shop", "env": "prod"}
    assert (await m.call("POST", "/api/v1/tasks", {**body, "deployment": deploy}))[0] == 201
    assert (await m.call("POST", "/api/v1/tasks", {"payload": body["payload"]}))[0] == 201
    status, page = await m.call("GET", route)
    assert status == 200
    assert len(page["tasks"]) == (2 if route == "/api/v1/tasks" else 1)

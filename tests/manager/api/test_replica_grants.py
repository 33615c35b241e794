"""Grants and users cached by two replicas over one PostgreSQL: a permission removed, or a user
disabled, through one replica is refused there at once, and on the other as soon as its
notice arrives; the test clocks stand still, so no cache lifetime can explain the refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from manager.store.base import Store
from tests.manager.access_support import Clock, Manager, manager
from tests.manager.conftest import StoreMaker
from tests.manager.rbac_support import member
from tests.manager.store.test_entity_cache import Notices

GROUP = "/api/v1/groups/group-ops@example.com"


@asynccontextmanager
async def two_replicas(pg: StoreMaker, tmp_path: Path) -> AsyncIterator[tuple[Manager, Manager]]:
    stores: list[Store] = [pg.postgres(), pg.postgres()]
    for s in stores:
        await s.open()
    clock = Clock()
    try:
        async with (
            manager(tmp_path, stores[0], clock) as a,
            manager(tmp_path, stores[1], clock) as b,
        ):
            yield a, b
    finally:
        for s in stores:
            await s.close()


async def test_a_removed_permission_is_refused_at_once_here_and_on_the_notice_there(
    pg: StoreMaker, tmp_path: Path
) -> None:
    async with two_replicas(pg, tmp_path) as (a, b):
        heard = Notices()  # told after b's own caches (watchers run in the order they came)
        await b.store.watch_changes(heard)
        token = await member(a.store, "ops@example.com", account=["view_audit"])
        await heard.until("session")  # the member's last notice: the ones before came first
        heard.seen.clear()
        # Both replicas now hold the principal (and the groups) in memory.
        assert (await a.call("GET", "/api/v1/audit", key=token))[0] == 200
        assert (await b.call("GET", "/api/v1/audit", key=token))[0] == 200
        assert (await a.call("PATCH", GROUP, {"account_permissions": []}))[0] == 200
        status, body = await a.call("GET", "/api/v1/audit", key=token)
        assert (status, body["error"]["code"]) == (403, "forbidden")
        await heard.until("group")
        status, body = await b.call("GET", "/api/v1/audit", key=token)
        assert (status, body["error"]["code"]) == (403, "forbidden")
        # And back: a grant given on b works on a with b's notice.
        heard_a = Notices()
        await a.store.watch_changes(heard_a)
        assert (await b.call("PATCH", GROUP, {"account_permissions": ["view_audit"]}))[0] == 200
        await heard_a.until("group")
        assert (await a.call("GET", "/api/v1/audit", key=token))[0] == 200


async def test_a_disabled_user_is_refused_at_once_here_and_on_the_notice_there(
    pg: StoreMaker, tmp_path: Path
) -> None:
    async with two_replicas(pg, tmp_path) as (a, b):
        heard = Notices()
        await b.store.watch_changes(heard)
        token = await member(a.store, "ops@example.com", account=["view_audit"])
        await heard.until("session")
        heard.seen.clear()
        assert (await b.call("GET", "/api/v1/audit", key=token))[0] == 200
        assert (await a.call("POST", "/api/v1/users/ops@example.com/disable"))[0] == 200
        assert (await a.call("GET", "/api/v1/audit", key=token))[0] == 401
        await heard.until("user")
        status, body = await b.call("GET", "/api/v1/audit", key=token)
        assert status == 401, body


async def test_a_freeze_window_refuses_tasks_at_once_here_and_on_the_notice_there(
    pg: StoreMaker, tmp_path: Path
) -> None:
    """Freeze windows are served from memory (judged at every submission): one made on a
    refuses submissions there at once, and on b as soon as a's notice arrives; one deleted
    on b lets them through on a with b's notice."""
    async with two_replicas(pg, tmp_path) as (a, b):
        heard_a, heard_b = Notices(), Notices()
        await a.store.watch_changes(heard_a)
        await b.store.watch_changes(heard_b)
        assert (await a.call("POST", "/api/v1/apps", {"name": "shop"}))[0] == 201
        env = {"name": "prod", "type": "production"}
        assert (await a.call("POST", "/api/v1/apps/shop/envs", env))[0] == 201
        await heard_b.until("env")
        task = {"payload": {"type": "shell", "script": "true"}, "app": "shop", "env": "prod"}
        # Both replicas now hold the (empty) list of windows in memory.
        assert (await a.call("POST", "/api/v1/tasks", task))[0] == 201
        assert (await b.call("POST", "/api/v1/tasks", task))[0] == 201
        now = a.clock()
        window = {"name": "release", "start": now - 60, "end": now + 3600}
        assert (await a.call("POST", "/api/v1/freezes", window))[0] == 201
        status, body = await a.call("POST", "/api/v1/tasks", task)
        assert (status, body["error"]["code"]) == (409, "frozen")
        await heard_b.until("freeze")
        status, body = await b.call("POST", "/api/v1/tasks", task)
        assert (status, body["error"]["code"]) == (409, "frozen")
        assert (await b.call("DELETE", "/api/v1/freezes/release"))[0] == 204
        status, body = await b.call("POST", "/api/v1/tasks", task)
        assert status == 201, body
        await heard_a.until("freeze")
        status, body = await a.call("POST", "/api/v1/tasks", task)
        assert status == 201, body

"""Groups, applications and environments served from memory: read once, dropped by a write
through the store at once, by another replica's notice when it arrives (PostgreSQL), by a
LISTEN connection coming back, and never older than ``max_age`` whatever happens."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from manager.access.tokens import create_api_key
from manager.records import AllowlistEntry, EntityRecord
from manager.store.base import ACCESS_SETTINGS, API_KEYS, EVERYTHING, Store
from manager.store.entity_cache import EntityCache
from manager.store.postgres import PostgresStore
from manager.store.sqlite import SqliteStore
from tests.manager.conftest import StoreMaker

# Far beyond any test's wait: only a drop or a notice empties the cache.
FOREVER = 1e9
NOTICE_TIMEOUT_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def group(entity_id: str, name: str, **body: object) -> EntityRecord:
    return EntityRecord("group", entity_id, name, {"name": name, **body}, 1, 10.0, 10.0)


async def behind_its_back(maker: StoreMaker, entity: EntityRecord) -> None:
    """Insert ``entity`` as another process would that sends no notice (a host command)."""
    e = entity
    row = (e.kind, e.id, e.key, json.dumps(e.body), e.version, e.created_at, e.updated_at)
    sql = "INSERT INTO entities(kind, id, key, body, version, created_at, updated_at)"
    if maker.kind == "sqlite":
        conn = sqlite3.connect(maker.path)
        try:
            with conn:
                conn.execute(sql + " VALUES (?, ?, ?, ?, ?, ?, ?)", row)
        finally:
            conn.close()
    else:
        await maker.fetch(sql + " VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)", *row)


@asynccontextmanager
async def opened(maker: StoreMaker, cache: EntityCache) -> AsyncIterator[Store]:
    s: Store = (
        SqliteStore(maker.path, entity_cache=cache)
        if maker.kind == "sqlite"
        else maker.postgres(entity_cache=cache)
    )
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def names(store: Store, kind: str = "group") -> list[str]:
    return [e.key for e in await store.list_entities(kind)]


async def test_reads_come_from_memory_until_max_age_and_a_write_here_is_seen_at_once(
    new_store: StoreMaker,
) -> None:
    clock = Clock()
    async with opened(new_store, EntityCache(max_age=1.0, clock=clock)) as store:
        await store.insert_entity(group("grp_a", "a"))
        assert await names(store) == ["a"]
        await behind_its_back(new_store, group("grp_b", "b"))
        # Served from memory: by list, by id and by key alike.
        assert await names(store) == ["a"]
        assert await store.get_entity("group", "grp_b") is None
        assert await store.entity_by_key("group", "b") is None
        clock.now += 0.99
        assert await names(store) == ["a"]
        clock.now += 0.01  # max_age: read again, whoever wrote
        assert await names(store) == ["a", "b"]
        got = await store.get_entity("group", "grp_b")
        assert got is not None
        assert got.key == "b"
        # A write through the store drops its kind at once, with no time passing.
        await behind_its_back(new_store, group("grp_c", "c"))
        await store.insert_entity(group("grp_d", "d"))
        assert await names(store) == ["a", "b", "c", "d"]
        renamed = EntityRecord("group", "grp_a", "a2", {"name": "a2"}, 2, 10.0, 11.0)
        assert await store.update_entity(renamed, 1)
        assert await store.entity_by_key("group", "a2") is not None
        assert await store.entity_by_key("group", "a") is None
        assert await store.delete_entity("group", "grp_d")
        assert await names(store) == ["a2", "b", "c"]


async def test_users_are_read_fresh(new_store: StoreMaker) -> None:
    async with opened(new_store, EntityCache(max_age=FOREVER, clock=Clock())) as store:
        assert await store.list_entities("user") == []
        user = EntityRecord("user", "usr_1", "u@example.com", {}, 1, 1.0, 1.0)
        await behind_its_back(new_store, user)
        assert await store.get_entity("user", "usr_1") == user


async def test_a_load_that_raced_a_write_is_not_kept() -> None:
    cache = EntityCache(max_age=FOREVER, clock=Clock())
    reading, release = asyncio.Event(), asyncio.Event()
    rows = [[group("grp_a", "old")], [group("grp_a", "new")]]

    async def load() -> list[EntityRecord]:
        reading.set()
        await release.wait()
        return rows.pop(0)

    first = asyncio.create_task(cache.get("group", load))
    await reading.wait()
    cache.drop("group")  # a write committed while the read ran
    release.set()
    assert (await first).records[0].key == "old"  # the racing reader gets what it read
    # ...but it is not kept: the next reader reads again.
    assert (await cache.get("group", load)).records[0].key == "new"


async def test_concurrent_misses_read_once() -> None:
    cache = EntityCache(max_age=FOREVER, clock=Clock())
    loads = 0
    release = asyncio.Event()

    async def load() -> list[EntityRecord]:
        nonlocal loads
        loads += 1
        await release.wait()
        return [group("grp_a", "a")]

    waiting = [asyncio.create_task(cache.get("group", load)) for _ in range(20)]
    await asyncio.sleep(0)
    release.set()
    assert {len((await w).records) for w in waiting} == {1}
    assert loads == 1


# -- replicas: PostgreSQL notices -------------------------------------------------------------


class Notices:
    """What a store's watcher was told, and a wait for a given notice."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, what: str) -> None:
        self.seen.append(what)
        self._changed.set()

    async def until(self, what: str) -> None:
        async with asyncio.timeout(NOTICE_TIMEOUT_S):
            while what not in self.seen:
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def replica(pg: StoreMaker, **kwargs: object) -> AsyncIterator[PostgresStore]:
    s = pg.postgres(entity_cache=EntityCache(max_age=FOREVER, clock=Clock()), **kwargs)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_a_change_on_one_replica_reaches_the_others_cache_with_its_notice(
    pg: StoreMaker,
) -> None:
    async with replica(pg) as a, replica(pg) as b:
        heard_a, heard_b = Notices(), Notices()
        await a.watch_changes(heard_a)
        await b.watch_changes(heard_b)
        assert await names(b) == []
        await a.insert_entity(group("grp_a", "a"))
        await heard_b.until("group")
        assert await names(b) == ["a"]  # b's cache lives forever: only the notice explains it
        await b.insert_entity(EntityRecord("app", "app_1", "shop", {"name": "shop"}, 1, 1, 1))
        await heard_a.until("app")
        # A replica is not told of its own changes (it dropped its cache as it wrote).
        assert heard_a.seen == ["app"]
        assert await names(a, "app") == ["shop"]


async def test_revoked_keys_and_access_settings_are_announced(pg: StoreMaker) -> None:
    async with replica(pg) as a, replica(pg) as b:
        heard = Notices()
        await b.watch_changes(heard)
        entry = AllowlistEntry("al_1", "10.0.0.0/8", "office", True, 1.0)
        await a.add_allowlist_entry(entry)
        await heard.until(ACCESS_SETTINGS)
        heard.seen.clear()
        await a.update_access_settings(2.0, allowlist_enabled=True)
        await heard.until(ACCESS_SETTINGS)
        heard.seen.clear()
        assert await a.revoke_api_key("nobody", 3.0) is None  # nothing revoked: no notice
        await a.delete_allowlist_entry("al_1")
        await heard.until(ACCESS_SETTINGS)
        # Notices come in commit order: a notice of the revocation would have come first.
        assert heard.seen == [ACCESS_SETTINGS]
        await create_api_key(a, "ci", max_qps=1.0, burst=1, now=4.0)
        assert await a.revoke_api_key("ci", 5.0) is not None
        await heard.until(API_KEYS)


async def test_a_listen_connection_that_comes_back_drops_everything(pg: StoreMaker) -> None:
    reconnected = asyncio.Event()
    async with replica(pg, on_listen_reconnect=reconnected.set) as b:
        heard = Notices()
        await b.watch_changes(heard)
        assert await names(b) == []
        # Written with no notice, then the LISTEN connection dies: what was sent meanwhile
        # is lost, so the cache cannot be trusted once it is back.
        await behind_its_back(pg, group("grp_x", "x"))
        pid = b._listener.server_pid
        assert pid is not None
        await pg.fetch("SELECT pg_terminate_backend($1)", pid)
        await heard.until(EVERYTHING)
        assert reconnected.is_set()  # the owner's own callback still runs
        assert await names(b) == ["x"]


async def test_a_notice_only_drops_what_is_cached(pg: StoreMaker) -> None:
    """Whoever can NOTIFY on the database can make a replica read again, nothing more: a
    notice carries no data into a cache."""
    async with replica(pg) as b:
        heard = Notices()
        await b.watch_changes(heard)
        assert await names(b) == []
        await behind_its_back(pg, group("grp_x", "x"))
        for payload in ("forged|", "forged|group:grp_evil {}", "forged|group"):
            await pg.fetch("SELECT pg_notify('tether_changes', $1)", payload)
        await heard.until("group")
        assert "" not in heard.seen
        # What is read now is the database's, whatever the notices said.
        assert await names(b) == ["x"]
        assert await b.get_entity("group", "grp_evil") is None


async def test_freeze_windows_come_from_memory_and_a_write_here_is_seen_at_once(
    new_store: StoreMaker,
) -> None:
    """Every submission judges the freeze windows: they are a cached kind like groups."""
    clock = Clock()
    window = EntityRecord("freeze", "frz_a", "a", {"name": "a"}, 1, 10.0, 10.0)
    async with opened(new_store, EntityCache(max_age=1.0, clock=clock)) as store:
        assert await names(store, "freeze") == []
        await behind_its_back(new_store, window)
        assert await names(store, "freeze") == []  # from memory
        clock.now += 1.0
        assert await names(store, "freeze") == ["a"]
        assert await store.delete_entity("freeze", "frz_a")
        assert await names(store, "freeze") == []  # dropped by the write, no time passing

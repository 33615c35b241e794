"""The API key and principal caches of the access guards: requests that miss at once share
one read, and a read that a revocation or a change of grants overtook is not kept, so the
change holds from the next request on. Judged by events on reads that wait for the test,
with clocks that stand still, not by time."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import cast

import pytest

from manager.access.directory import Directory
from manager.access.principal import Principal, Principals
from manager.api.guards import KeyCache
from manager.core.identity import Actor
from manager.core.rbac import Grants
from manager.records import ApiKeyRecord
from manager.store.base import Store

KEY = ApiKeyRecord("key_1", "ci", "tak_abc", "hash_1", 1.0)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


class HeldStore:
    """``api_key_by_hash`` reads the record of the moment it starts, and answers once the
    test releases it."""

    def __init__(self) -> None:
        self.record: ApiKeyRecord | None = KEY
        self.reads = 0
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def api_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        self.reads += 1
        seen = self.record
        self.reading.set()
        await self.release.wait()
        return seen


def cache_of(store: HeldStore) -> KeyCache:
    return KeyCache(cast(Store, store), ttl=1.0, clock=Clock())


async def test_concurrent_misses_of_one_key_share_one_read() -> None:
    store = HeldStore()
    cache = cache_of(store)
    waiting = [asyncio.create_task(cache.get("hash_1")) for _ in range(50)]
    await store.reading.wait()
    store.release.set()
    assert {r.id if r else None for r in await asyncio.gather(*waiting)} == {"key_1"}
    assert store.reads == 1
    assert await cache.get("hash_1") == KEY  # kept
    assert store.reads == 1


async def test_a_read_overtaken_by_a_revocation_is_not_kept() -> None:
    store = HeldStore()
    cache = cache_of(store)
    first = asyncio.create_task(cache.get("hash_1"))
    await store.reading.wait()
    # The key is revoked (committed) while the read that began before it is in flight.
    store.record = dataclasses.replace(KEY, revoked_at=2.0)
    cache.forget("key_1")
    store.release.set()
    assert await first == KEY  # its own caller was concurrent with the revocation
    again = await cache.get("hash_1")  # no time passed: only the dropped read explains this
    assert again is not None
    assert again.revoked_at == 2.0
    assert store.reads == 2


async def test_waiters_read_for_themselves_when_the_reader_goes_away() -> None:
    store = HeldStore()
    cache = cache_of(store)
    reader = asyncio.create_task(cache.get("hash_1"))
    await store.reading.wait()
    waiter = asyncio.create_task(cache.get("hash_1"))
    await asyncio.sleep(0)  # the waiter is now waiting on the shared read
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    store.release.set()
    assert await waiter == KEY
    assert store.reads == 2


# -- principals (what a credential may do), cached the same way -------------------------------


class _Directory:
    store = None


def principal(name: str) -> Principal:
    return Principal(Actor("api_key", "key_1", name), Grants(frozenset(), ()))


async def test_a_principal_load_overtaken_by_a_change_is_not_kept_and_misses_share_one() -> None:
    principals = Principals(cast(Directory, _Directory()), ttl=1.0, clock=Clock())
    loads: list[str] = []
    release = asyncio.Event()
    grants = "before"

    async def load() -> tuple[Principal, float]:
        seen = grants  # what the group said when the load read it
        loads.append(seen)
        await release.wait()
        return principal(seen), float("inf")

    waiting = [asyncio.create_task(principals._cached("key:key_1", load)) for _ in range(20)]
    await asyncio.sleep(0)
    grants = "after"
    principals.forget()  # a permission removed while the load was in flight
    release.set()
    assert {p.actor.name for p in await asyncio.gather(*waiting)} == {"before"}
    assert loads == ["before"]  # one load for the twenty
    # No time passed: only the dropped load explains reading again.
    assert (await principals._cached("key:key_1", load)).actor.name == "after"
    assert (await principals._cached("key:key_1", load)).actor.name == "after"
    assert loads == ["before", "after"]

"""The store's entities (users, groups, apps, envs, sessions as JSON documents), on SQLite and
PostgreSQL alike: unique keys per kind, compare-and-set updates, and migration 10 giving
tasks an application and environment."""

from __future__ import annotations

import pytest

from manager.records import EntityRecord
from manager.store.base import Conflict, Store


def entity(kind: str, entity_id: str, key: str, version: int = 1, **body: object) -> EntityRecord:
    return EntityRecord(kind, entity_id, key, dict(body), version, 10.0, 10.0 + version)


async def test_insert_get_by_id_and_key_and_list_in_creation_order(store: Store) -> None:
    await store.insert_entity(entity("user", "usr_b", "b@example.com", name="B", n=[1, 2]))
    await store.insert_entity(
        EntityRecord("user", "usr_a", "a@example.com", {"name": "A"}, 1, 20.0, 20.0)
    )
    await store.insert_entity(entity("group", "grp_1", "admins"))

    got = await store.get_entity("user", "usr_b")
    assert got == entity("user", "usr_b", "b@example.com", name="B", n=[1, 2])
    assert await store.entity_by_key("user", "a@example.com") is not None
    assert await store.entity_by_key("group", "a@example.com") is None
    assert await store.get_entity("group", "usr_b") is None
    assert [e.id for e in await store.list_entities("user")] == ["usr_b", "usr_a"]
    assert [e.id for e in await store.list_entities("group")] == ["grp_1"]


async def test_a_key_is_unique_within_its_kind_only(store: Store) -> None:
    await store.insert_entity(entity("app", "app_1", "checkout"))
    with pytest.raises(Conflict):
        await store.insert_entity(entity("app", "app_2", "checkout"))
    with pytest.raises(Conflict):
        await store.insert_entity(entity("app", "app_1", "other"))
    await store.insert_entity(entity("group", "grp_1", "checkout"))  # another kind: fine
    assert len(await store.list_entities("app")) == 1


async def test_update_is_compare_and_set_on_the_version(store: Store) -> None:
    await store.insert_entity(entity("user", "usr_1", "a@example.com", failed=0))
    assert await store.update_entity(entity("user", "usr_1", "a@example.com", 2, failed=1), 1)
    # A writer that read version 1 too loses, and changes nothing.
    assert not await store.update_entity(entity("user", "usr_1", "a@example.com", 2, failed=9), 1)
    got = await store.get_entity("user", "usr_1")
    assert got is not None
    assert got.version == 2
    assert got.body == {"failed": 1}
    assert not await store.update_entity(entity("user", "usr_gone", "x", 2), 1)


async def test_an_update_may_not_take_another_entitys_key(store: Store) -> None:
    await store.insert_entity(entity("app", "app_1", "checkout"))
    await store.insert_entity(entity("app", "app_2", "billing"))
    with pytest.raises(Conflict):
        await store.update_entity(entity("app", "app_2", "checkout", 2), 1)
    got = await store.get_entity("app", "app_2")
    assert got is not None
    assert got.key == "billing"
    assert got.version == 1


async def test_delete(store: Store) -> None:
    await store.insert_entity(entity("session", "ses_1", "hash"))
    assert await store.delete_entity("session", "ses_1")
    assert not await store.delete_entity("session", "ses_1")
    assert await store.entity_by_key("session", "hash") is None

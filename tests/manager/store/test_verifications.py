"""Verification versions in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

from manager.store.base import Store


async def test_versions_count_up_per_name_and_the_latest_is_listed(store: Store) -> None:
    a1 = await store.add_verification_version("a", '{"v":1}', created_at=1.0, created_by="u1")
    a2 = await store.add_verification_version("a", '{"v":2}', created_at=2.0, created_by=None)
    b1 = await store.add_verification_version("b", '{"v":1}', created_at=3.0, created_by="u2")
    assert (a1.version, a2.version, b1.version) == (1, 2, 1)
    assert await store.verification("a") == a2
    assert await store.verification("a", 1) == a1
    assert await store.verification("a", 3) is None
    assert await store.verification("nope") is None
    assert [(r.name, r.version) for r in await store.list_verifications()] == [
        ("a", 2),
        ("b", 1),
    ]


async def test_delete_takes_every_version_and_only_that_name(store: Store) -> None:
    await store.add_verification_version("a", "{}", created_at=1.0, created_by=None)
    await store.add_verification_version("a", "{}", created_at=2.0, created_by=None)
    await store.add_verification_version("b", "{}", created_at=3.0, created_by=None)
    assert await store.delete_verification("a") is True
    assert await store.delete_verification("a") is False
    assert await store.verification("a", 1) is None
    assert [r.name for r in await store.list_verifications()] == ["b"]
    # A name used again starts over at version 1.
    again = await store.add_verification_version("a", "{}", created_at=4.0, created_by=None)
    assert again.version == 1

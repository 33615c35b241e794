"""The audit trail in the store, the same on every backend: the chain, queries, saved filters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from manager.core.audit_chain import (
    GENESIS,
    AuditDraft,
    AuditQuery,
    SavedAuditFilter,
    draft,
    event_hash,
    verify,
)
from manager.core.identity import SYSTEM, Actor
from manager.store.base import Conflict, Store
from tests.manager.conftest import StoreMaker

ADMIN = Actor("api_key", "key_admin", "admin")
ALICE = Actor("user", "usr_alice", "alice@example.com")


def change(
    n: int = 0,
    *,
    actor: Actor = ADMIN,
    resource_type: str = "token",
    action: str = "create",
    summary: str | None = None,
    ts: float | None = None,
    app: str | None = None,
    **after: Any,
) -> AuditDraft:
    return draft(
        actor,
        ts=1_700_000_000.0 + n if ts is None else ts,
        method="POST",
        path=f"/api/v1/{resource_type}s",
        client_ip="127.0.0.1",
        resource_type=resource_type,
        resource_id=f"{resource_type}_{n}",
        resource_name=f"{resource_type}-{n}",
        action=action,
        summary=summary or f"created {resource_type} {n}",
        after={"name": f"{resource_type}-{n}", **after},
        app=app,
    )


async def test_the_first_event_follows_the_genesis_and_each_the_one_before(store: Store) -> None:
    assert await store.audit_head() == (0, GENESIS)
    first = await store.append_audit(change(1))
    second = await store.append_audit(change(2))
    assert (first.seq, first.prev_hash) == (1, GENESIS)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert second.hash == event_hash(second)
    assert await store.audit_head() == (2, second.hash)


async def test_stored_events_read_back_exactly_and_verify(store: Store) -> None:
    written = [await store.append_audit(change(n, app="shop" if n % 2 else None)) for n in range(5)]
    read = [e async for e in store.audit_events_all()]
    assert read == written
    assert verify(read, await store.audit_head()) is None


async def test_concurrent_appends_from_two_stores_never_fork_the_chain(
    new_store: StoreMaker,
) -> None:
    """Two stores over one database stand for two manager replicas (or a replica and a
    host-side command): every append gets its own seq and chains on the one before."""
    a, b = new_store(), new_store()
    await a.open()
    await b.open()
    try:
        results = await asyncio.gather(
            *(s.append_audit(change(n)) for n in range(20) for s in (a, b))
        )
        assert sorted(e.seq for e in results) == list(range(1, 41))
        events = [e async for e in a.audit_events_all()]
        assert len(events) == 40
        assert verify(events, await b.audit_head()) is None
    finally:
        await a.close()
        await b.close()


async def test_all_events_come_in_pages_oldest_first(store: Store) -> None:
    for n in range(7):
        await store.append_audit(change(n))
    seqs = [e.seq async for e in store.audit_events_all(page=3)]
    assert seqs == list(range(1, 8))
    seqs = [e.seq async for e in store.audit_events_all(AuditQuery(after=4), page=2)]
    assert seqs == [5, 6, 7]


async def test_listing_is_newest_first_and_the_cursor_pages_back(store: Store) -> None:
    for n in range(5):
        await store.append_audit(change(n))
    page = await store.list_audit(AuditQuery(limit=2))
    assert [e.seq for e in page] == [5, 4]
    page = await store.list_audit(AuditQuery(limit=2, before=page[-1].seq))
    assert [e.seq for e in page] == [3, 2]
    page = await store.list_audit(AuditQuery(ascending=True, after=3, limit=10))
    assert [e.seq for e in page] == [4, 5]


async def test_listing_filters_by_time_actor_type_app_and_action(store: Store) -> None:
    await store.append_audit(change(1, ts=100.0))
    await store.append_audit(change(2, ts=200.0, actor=ALICE, resource_type="secret"))
    await store.append_audit(change(3, ts=300.0, action="delete", app="shop"))
    await store.append_audit(change(4, ts=400.0, actor=SYSTEM, action="rotate"))

    async def seqs(**kw: Any) -> list[int]:
        return [e.seq for e in await store.list_audit(AuditQuery(**kw))]

    assert await seqs(since=200.0, until=400.0) == [3, 2]
    assert await seqs(actor="usr_alice") == [2]
    assert await seqs(actor="alice@example.com") == [2]
    assert await seqs(actor="system") == [4]
    assert await seqs(resource_type="secret") == [2]
    assert await seqs(resource_id="token_3") == [3]
    assert await seqs(app="shop") == [3]
    assert await seqs(action="delete") == [3]
    assert await seqs(resource_type="token", action="create") == [1]


async def test_free_text_matches_summary_name_or_diff_in_any_case(store: Store) -> None:
    await store.append_audit(change(1, summary="Drained build hosts"))
    await store.append_audit(change(2, selectors=["eu-west"]))
    await store.append_audit(change(3, summary="100% done_right"))

    async def seqs(text: str) -> list[int]:
        return [e.seq for e in await store.list_audit(AuditQuery(text=text))]

    assert await seqs("drained BUILD") == [1]
    assert await seqs("eu-west") == [2]  # in the diff
    assert await seqs("token-2") == [2]  # the resource name
    # % and _ are themselves, not wildcards.
    assert await seqs("100%") == [3]
    assert await seqs("e_r") == [3]
    assert await seqs("0%") == [3]
    assert await seqs("n_") == []


async def test_saved_filters_belong_to_their_owner(store: Store) -> None:
    mine = SavedAuditFilter("af_1", "key_admin", "deletes", {"action": "delete"}, 10.0)
    await store.create_audit_filter(mine)
    await store.create_audit_filter(
        SavedAuditFilter("af_2", "key_admin", "alice", {"actor": "usr_alice", "limit": 5}, 11.0)
    )
    # The same name for another owner is another filter.
    await store.create_audit_filter(
        SavedAuditFilter("af_3", "usr_alice", "deletes", {"action": "delete"}, 12.0)
    )
    with pytest.raises(Conflict):
        await store.create_audit_filter(SavedAuditFilter("af_4", "key_admin", "deletes", {}, 13.0))
    assert [f.name for f in await store.list_audit_filters("key_admin")] == ["alice", "deletes"]
    assert await store.get_audit_filter("key_admin", "deletes") == mine
    assert (await store.get_audit_filter("key_admin", "alice")).query == {  # type: ignore[union-attr]
        "actor": "usr_alice",
        "limit": 5,
    }
    assert await store.delete_audit_filter("key_admin", "deletes")
    assert not await store.delete_audit_filter("key_admin", "deletes")
    assert await store.get_audit_filter("key_admin", "deletes") is None
    assert [f.id for f in await store.list_audit_filters("usr_alice")] == ["af_3"]


async def test_migration_8_is_recorded(new_store: StoreMaker, store: Store) -> None:
    assert 8 in await new_store.schema_versions()

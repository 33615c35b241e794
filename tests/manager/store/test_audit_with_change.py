"""Audit events chained in the transaction of the change they record, on every backend.

A write given ``audit`` commits its change and the event together, or neither: when the
event cannot be written the change is rolled back, and a write that changes nothing (a
compare-and-set that missed, a repeated idempotent submit, a key that is not there) writes
no event and takes no seq, so the chain stays whole and a gap can only be a deleted event.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from manager.core.audit_chain import (
    AuditAppend,
    AuditEvent,
    AuditQuery,
    SavedAuditFilter,
    verify,
)
from manager.records import AllowlistEntry, ApiKeyRecord, EntityRecord, ProfileRecord
from manager.store.base import Conflict, EntityWrite, Store, StoreError
from shared.protocol import TaskState
from tests.manager.store.test_audit import change
from tests.manager.store.test_secrets import envelopes, inline, manager, secret
from tests.manager.store.test_store import WINDOW, delegate, task


def event_of(n: int, **kw: Any) -> Any:
    """An ``audit`` argument: the event ``change(n)``, told what was written."""
    seen: list[Any] = []

    def make(written: Any) -> AuditAppend:
        seen.append(written)
        return AuditAppend(dataclasses.replace(change(n), **kw), None)

    make.seen = seen  # type: ignore[attr-defined]
    return make


@contextlib.contextmanager
def event_refused() -> Iterator[None]:
    """The write fails as the store's failure, not as a Conflict of the change's own."""
    with pytest.raises(StoreError) as caught:
        yield
    assert not isinstance(caught.value, Conflict), caught.value


async def events(store: Store) -> list[AuditEvent]:
    return list(reversed(await store.list_audit(AuditQuery(limit=1000))))


def key(name: str = "ci", id: str = "key_1") -> ApiKeyRecord:
    return ApiKeyRecord(id=id, name=name, prefix="tak_abc", key_hash=f"hash-{id}", created_at=100.0)


async def test_each_audited_write_chains_its_event_with_its_change(store: Store) -> None:
    submitted = event_of(1)
    await store.insert_task(task("task_1"), idempotency_window=WINDOW, audit=submitted)
    assert [t.id for t in submitted.seen] == ["task_1"]
    cancelled = event_of(2)
    updated = await store.update_task(
        "task_1",
        expect_state=TaskState.QUEUED,
        expect_attempt=0,
        changes={"state": TaskState.CANCELLED, "finished_at": 200.0},
        audit=cancelled,
    )
    assert updated is not None
    # The row as written, not the snapshot it was decided from.
    assert [t.state for t in cancelled.seen] == [TaskState.CANCELLED]
    await store.create_api_key(key(), audit=event_of(3))
    revoked = event_of(4)
    assert await store.revoke_api_key("ci", 300.0, audit=revoked) is not None
    assert [k.revoked_at for k in revoked.seen] == [300.0]
    await store.update_access_settings(400.0, api_key_max_qps=5.0, audit=event_of(5))
    entry = AllowlistEntry(
        id="ipa_1", cidr="10.0.0.0/8", description="", enabled=True, created_at=500.0
    )
    await store.add_allowlist_entry(entry, audit=event_of(6))
    await store.set_allowlist_entry_enabled("ipa_1", False, audit=event_of(7))
    await store.delete_allowlist_entry("ipa_1", audit=event_of(8))

    trail = await events(store)
    assert [e.resource_id for e in trail] == [f"token_{n}" for n in range(1, 9)]
    assert verify(trail, await store.audit_head()) is None


async def test_a_write_that_changes_nothing_writes_no_event(store: Store) -> None:
    await store.insert_task(
        task("task_1", idempotency_key="k"), idempotency_window=WINDOW, audit=event_of(1)
    )
    again = event_of(2)
    stored, created = await store.insert_task(
        task("task_2", idempotency_key="k"), idempotency_window=WINDOW, audit=again
    )
    assert (stored.id, created) == ("task_1", False)
    missed = event_of(3)
    stale = await store.update_task(
        "task_1",
        expect_state=TaskState.RUNNING,
        expect_attempt=0,
        changes={"cancel_requested": True},
        audit=missed,
    )
    assert stale is None
    absent = event_of(4)
    assert await store.revoke_api_key("nobody", 1.0, audit=absent) is None
    assert await store.delete_allowlist_entry("ipa_none", audit=absent) is None
    assert again.seen == missed.seen == absent.seen == []
    assert [e.seq for e in await events(store)] == [1]
    assert (await store.audit_head())[0] == 1


async def test_when_the_event_cannot_be_written_the_change_is_not_either(store: Store) -> None:
    # The event id is unique: an event reusing one fails inside the change's transaction,
    # as any failure between the change and its event would. Not a Conflict: that would
    # read as the change's own (a name in use).
    taken = (await store.append_audit(change(0))).id
    head = await store.audit_head()

    with event_refused():
        await store.insert_task(
            task("task_1"), idempotency_window=WINDOW, audit=event_of(1, id=taken)
        )
    assert await store.get_task("task_1") is None

    await store.insert_task(task("task_2"), idempotency_window=WINDOW)
    with event_refused():
        await store.update_task(
            "task_2",
            expect_state=TaskState.QUEUED,
            expect_attempt=0,
            changes={"state": TaskState.CANCELLED, "finished_at": 2.0},
            audit=event_of(2, id=taken),
        )
    still = await store.get_task("task_2")
    assert still is not None
    assert still.state is TaskState.QUEUED

    await store.create_api_key(key())
    with event_refused():
        await store.revoke_api_key("ci", 3.0, audit=event_of(3, id=taken))
    assert [k.revoked_at for k in await store.list_api_keys()] == [None]
    with event_refused():
        await store.create_api_key(key("other", "key_2"), audit=event_of(4, id=taken))
    assert [k.name for k in await store.list_api_keys()] == ["ci"]

    entry = AllowlistEntry(
        id="ipa_1", cidr="10.0.0.0/8", description="", enabled=True, created_at=5.0
    )
    with event_refused():
        await store.add_allowlist_entry(entry, audit=event_of(5, id=taken))
    assert await store.list_allowlist() == []
    before = await store.access_settings()
    with event_refused():
        await store.update_access_settings(6.0, allowlist_enabled=True, audit=event_of(6, id=taken))
    assert await store.access_settings() == before

    # No seq was taken by what rolled back: the next event follows on, and the chain holds.
    assert await store.audit_head() == head
    await store.insert_task(task("task_3"), idempotency_window=WINDOW, audit=event_of(7))
    trail = await events(store)
    assert [e.seq for e in trail] == [1, 2]
    assert verify(trail, await store.audit_head()) is None


async def test_concurrent_audited_writes_keep_one_chain(store: Store) -> None:
    await asyncio.gather(
        *(
            store.insert_task(task(f"task_{n}"), idempotency_window=WINDOW, audit=event_of(n))
            for n in range(20)
        ),
        *(store.append_audit(change(100 + n)) for n in range(5)),
    )
    trail = await events(store)
    assert [e.seq for e in trail] == list(range(1, 26))
    assert verify(trail, await store.audit_head()) is None


def entity(kind: str, entity_id: str, key: str, version: int = 1, **body: Any) -> EntityRecord:
    return EntityRecord(kind, entity_id, key, dict(body), version, 10.0, 10.0 + version)


async def test_entity_writes_chain_their_event_from_the_rows_written(store: Store) -> None:
    made = event_of(1)
    await store.insert_entity(entity("group", "grp_1", "g"), audit=made)
    await store.insert_entity(entity("user", "usr_1", "a@x", groups=["grp_1"]))
    updated = event_of(2)
    renamed = entity("group", "grp_1", "h", 2)
    assert await store.update_entity(renamed, 1, audit=updated)
    missed = event_of(3)
    assert not await store.update_entity(entity("group", "grp_1", "i", 3), 1, audit=missed)
    # Several writes, one transaction: the member leaves, the group goes, one event.
    together = event_of(4)
    writes = [
        EntityWrite(entity("user", "usr_1", "a@x", 2, groups=[]), expect_version=1),
        EntityWrite(renamed, expect_version=2, delete=True),
    ]
    assert await store.write_entities(writes, audit=together)
    assert [r.key for r in made.seen] == ["g"]
    assert [(r.key, r.version) for r in updated.seen] == [("h", 2)]
    assert missed.seen == []
    assert [[(r.kind, r.version) for r in seen] for seen in together.seen] == [
        [("user", 2), ("group", 2)]
    ]
    assert [e.seq for e in await events(store)] == [1, 2, 3]


async def test_entity_writes_whose_event_cannot_be_written_change_nothing(store: Store) -> None:
    taken = (await store.append_audit(change(0))).id
    await store.insert_entity(entity("group", "grp_1", "g"))
    await store.insert_entity(entity("user", "usr_1", "a@x", groups=["grp_1"]))
    with event_refused():
        await store.insert_entity(entity("app", "app_1", "shop"), audit=event_of(1, id=taken))
    with event_refused():
        await store.update_entity(entity("group", "grp_1", "h", 2), 1, audit=event_of(2, id=taken))
    with event_refused():
        await store.delete_entity("group", "grp_1", audit=event_of(3, id=taken))
    writes = [
        EntityWrite(entity("user", "usr_1", "a@x", 2, groups=[]), expect_version=1),
        EntityWrite(entity("group", "grp_1", "g"), expect_version=1, delete=True),
    ]
    with event_refused():
        await store.write_entities(writes, audit=event_of(4, id=taken))
    assert await store.list_entities("app") == []
    assert [(g.key, g.version) for g in await store.list_entities("group")] == [("g", 1)]
    user = await store.get_entity("user", "usr_1")
    assert user is not None
    assert (user.version, user.body["groups"]) == (1, ["grp_1"])
    # A compare-and-set that lost rolls back the writes before it, and writes no event.
    lost = event_of(5)
    stale = [writes[0], EntityWrite(entity("group", "grp_1", "g", 9), expect_version=8)]
    assert not await store.write_entities(stale, audit=lost)
    assert lost.seen == []
    user = await store.get_entity("user", "usr_1")
    assert user is not None
    assert user.version == 1
    assert [e.seq for e in await events(store)] == [1]


# -- delegates, profiles, saved filters ------------------------------------------------------


async def test_delegates_drain_and_delete_chain_their_event_from_the_rows_written(
    store: Store,
) -> None:
    for n in range(3):
        await store.upsert_delegate(delegate(f"dlg_{n}", f"pk{n}".ljust(44, "A")))
    await store.set_draining("dlg_0", True)
    drained = event_of(1)
    flipped = await store.set_draining_of(["dlg_0", "dlg_1", "dlg_x"], True, audit=drained)
    # Only the row that flipped is written, and the event is of it.
    assert [d.id for d in flipped] == ["dlg_1"]
    assert [[(d.id, d.draining) for d in seen] for seen in drained.seen] == [[("dlg_1", True)]]
    again = event_of(2)
    assert await store.set_draining_of(["dlg_0", "dlg_1"], True, audit=again) == []
    assert again.seen == []
    gone = event_of(3)
    deleted = await store.delete_delegates(["dlg_1", "dlg_2", "dlg_x"], audit=gone)
    assert sorted(d.id for d in deleted) == ["dlg_1", "dlg_2"]
    assert [sorted(d.id for d in seen) for seen in gone.seen] == [["dlg_1", "dlg_2"]]
    none = event_of(4)
    assert await store.delete_delegates(["dlg_1"], audit=none) == []
    assert none.seen == []
    assert [e.seq for e in await events(store)] == [1, 2]


async def test_delegate_writes_whose_event_cannot_be_written_change_nothing(
    store: Store,
) -> None:
    taken = (await store.append_audit(change(0))).id
    await store.upsert_delegate(delegate("dlg_0", "pk0".ljust(44, "A")))
    with event_refused():
        await store.set_draining_of(["dlg_0"], True, audit=event_of(1, id=taken))
    with event_refused():
        await store.delete_delegates(["dlg_0"], audit=event_of(2, id=taken))
    assert [(d.id, d.draining) for d in await store.list_delegates()] == [("dlg_0", False)]
    assert [e.seq for e in await events(store)] == [1]


async def test_profiles_and_saved_filters_chain_their_event_or_write_nothing(
    store: Store,
) -> None:
    taken = (await store.append_audit(change(0))).id
    profile = ProfileRecord("boot", ("linux",), "echo up", "bash", 1.0)
    put = event_of(1)
    await store.put_profile(profile, audit=put)
    assert put.seen == [profile]  # the row as written, read back
    with event_refused():
        await store.put_profile(
            replace(profile, script="echo changed"), audit=event_of(2, id=taken)
        )
    with event_refused():
        await store.delete_profile("boot", audit=event_of(3, id=taken))
    assert await store.list_profiles() == [profile]
    deleted = event_of(4)
    assert await store.delete_profile("boot", audit=deleted)
    assert deleted.seen == [profile]
    assert not await store.delete_profile("boot", audit=event_of(5))

    saved = SavedAuditFilter("af_1", "key_1", "deletes", {"action": "delete"}, 2.0)
    with event_refused():
        await store.create_audit_filter(saved, audit=event_of(6, id=taken))
    assert await store.list_audit_filters("key_1") == []
    await store.create_audit_filter(saved, audit=event_of(7))
    with event_refused():
        await store.delete_audit_filter("key_1", "deletes", audit=event_of(8, id=taken))
    assert await store.list_audit_filters("key_1") == [saved]
    gone = event_of(9)
    assert await store.delete_audit_filter("key_1", "deletes", audit=gone) == saved
    assert gone.seen == [saved]
    assert await store.delete_audit_filter("key_1", "deletes", audit=event_of(10)) is None
    assert [e.resource_id for e in await events(store)] == [
        "token_0",
        "token_1",
        "token_4",
        "token_7",
        "token_9",
    ]


# -- secrets and secret managers: the event, and the usage scope, with the change -----------


def scope_of(owner_id: str, kind: str = "secret_scope") -> EntityWrite:
    return EntityWrite(entity(kind, owner_id, owner_id, owner_id=owner_id, scope={}))


async def test_secret_writes_chain_their_event_from_the_rows_written(store: Store) -> None:
    made = event_of(1)
    s = secret("sec_1", "db")
    await store.create_secret(s, inline("sec_1"), entities=[scope_of("sec_1")], audit=made)
    assert made.seen == [s]
    assert [e.id for e in await store.list_entities("secret_scope")] == ["sec_1"]
    bumped = event_of(2)
    v2 = await store.add_secret_version(s, inline("sec_1", 2, "env-2"), audit=bumped)
    assert v2 is not None
    assert [x.current_version for x in bumped.seen] == [2]
    missed = event_of(3)  # a compare-and-set that lost: nothing written, no event
    assert await store.add_secret_version(s, inline("sec_1", 2, "env-x"), audit=missed) is None
    await store.create_secret_manager(manager("sm_kms", "kms"))
    moved = event_of(4)
    after = await store.move_secret(v2, "sm_kms", {1: "k-1", 2: "k-2"}, 5.0, audit=moved)
    assert after is not None
    assert [x.manager_id for x in moved.seen] == ["sm_kms"]
    gone = event_of(5)
    scope = await store.get_entity("secret_scope", "sec_1")
    assert scope is not None
    unscoped = EntityWrite(scope, delete=True)
    assert await store.delete_secret("sec_1", entities=[unscoped], audit=gone)
    assert [x.id for x in gone.seen] == ["sec_1"]
    assert await store.list_entities("secret_scope") == []
    assert not await store.delete_secret("sec_1", audit=event_of(6))
    assert missed.seen == []
    assert [e.seq for e in await events(store)] == [1, 2, 3, 4]


async def test_secret_writes_whose_event_cannot_be_written_change_nothing(store: Store) -> None:
    taken = (await store.append_audit(change(0))).id
    s = secret("sec_1", "db")
    with event_refused():
        await store.create_secret(
            s, inline("sec_1"), entities=[scope_of("sec_1")], audit=event_of(1, id=taken)
        )
    # Neither the secret nor the scope it was to have: a secret never stands unscoped.
    assert await store.list_secrets() == []
    assert await store.list_entities("secret_scope") == []
    await store.create_secret(s, inline("sec_1"))
    await store.create_secret_manager(manager("sm_kms", "kms"))
    with event_refused():
        await store.add_secret_version(s, inline("sec_1", 2), audit=event_of(2, id=taken))
    with event_refused():
        await store.move_secret(s, "sm_kms", {1: "k-1"}, 5.0, audit=event_of(3, id=taken))
    with event_refused():
        await store.delete_secret("sec_1", audit=event_of(4, id=taken))
    assert await store.list_secrets() == [s]
    assert await envelopes(store, "sec_1") == {1: "env-1"}
    assert [e.seq for e in await events(store)] == [1]


async def test_secret_manager_writes_chain_their_event_or_write_nothing(store: Store) -> None:
    taken = (await store.append_audit(change(0))).id
    kms = manager("sm_kms", "kms")
    scoped = [scope_of("sm_kms", "manager_scope")]
    with event_refused():
        await store.create_secret_manager(kms, entities=scoped, audit=event_of(1, id=taken))
    assert await store.get_secret_manager("sm_kms") is None
    assert await store.list_entities("manager_scope") == []
    made = event_of(2)
    await store.create_secret_manager(kms, entities=scoped, audit=made)
    assert made.seen == [kms]
    renamed = replace(kms, name="kms-2", updated_at=101.0)
    with event_refused():
        await store.update_secret_manager(renamed, audit=event_of(3, id=taken))
    assert await store.get_secret_manager("sm_kms") == kms
    updated = event_of(4)
    assert await store.update_secret_manager(renamed, audit=updated)
    assert updated.seen == [renamed]
    # A manager that keeps a secret is not deleted, and writes no event.
    await store.create_secret(secret("sec_1", "db", "sm_kms"), inline("sec_1"))
    kept = event_of(5)
    with pytest.raises(Conflict, match="keeps 1 secret"):
        await store.delete_secret_manager("sm_kms", audit=kept)
    assert kept.seen == []
    await store.delete_secret("sec_1")
    scope = await store.get_entity("manager_scope", "sm_kms")
    assert scope is not None
    unscoped = [EntityWrite(scope, delete=True)]
    with event_refused():
        await store.delete_secret_manager("sm_kms", entities=unscoped, audit=event_of(6, id=taken))
    assert await store.get_secret_manager("sm_kms") == renamed
    assert [e.id for e in await store.list_entities("manager_scope")] == ["sm_kms"]
    deleted = event_of(7)
    assert await store.delete_secret_manager("sm_kms", entities=unscoped, audit=deleted)
    assert deleted.seen == [renamed]
    assert await store.list_entities("manager_scope") == []
    assert not await store.delete_secret_manager("sm_kms", audit=event_of(8))
    assert [e.resource_id for e in await events(store)] == [
        "token_0",
        "token_2",
        "token_4",
        "token_7",
    ]

"""Secret managers, secrets and their versions in the store, the same on every backend."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from manager.records import (
    BUILTIN_MANAGER_ID,
    SecretManagerRecord,
    SecretRecord,
    SecretVersionRecord,
    TaskRecord,
)
from manager.store import migrations
from manager.store.base import Conflict, Store
from shared.protocol import TaskState
from tests.manager.conftest import StoreMaker

BUILTIN = SecretManagerRecord(
    id=BUILTIN_MANAGER_ID,
    name="builtin",
    kind="builtin",
    settings={},
    created_at=0.0,
    updated_at=0.0,
)


def manager(id: str = "sm_vault", name: str = "vault", **kw: Any) -> SecretManagerRecord:
    fields: dict[str, Any] = {
        "kind": "hashicorp_vault",
        "settings": {"url": "https://vault.internal:8200", "mount": "secret"},
        "created_at": 100.0,
        "updated_at": 100.0,
        "credentials_secret": "vault-token",
        "selectors": ("linux", "vault"),
        "description": "the ops vault",
    }
    fields.update(kw)
    return SecretManagerRecord(id=id, name=name, **fields)


def secret(
    id: str = "sec_1", name: str = "db-password", manager_id: str = BUILTIN_MANAGER_ID, **kw: Any
) -> SecretRecord:
    fields: dict[str, Any] = {
        "type": "password",
        "mode": "inline",
        "current_version": 1,
        "created_at": 200.0,
        "updated_at": 200.0,
        "description": "",
        "created_by": "admin",
    }
    fields.update(kw)
    return SecretRecord(id=id, name=name, manager_id=manager_id, **fields)


def inline(
    secret_id: str = "sec_1", version: int = 1, envelope: str = "env-1"
) -> SecretVersionRecord:
    return SecretVersionRecord(
        secret_id=secret_id,
        version=version,
        created_at=200.0 + version,
        envelope=envelope,
        size=12,
        created_by="admin",
    )


def reference(secret_id: str, version: int = 1) -> SecretVersionRecord:
    return SecretVersionRecord(
        secret_id=secret_id,
        version=version,
        created_at=300.0,
        ref={"path": "ci/deploy", "key": "token", "version": None},
    )


async def created(store: Store, s: SecretRecord | None = None) -> SecretRecord:
    s = s or secret()
    await store.create_secret(s, inline(s.id, 1, f"{s.id}-env-1"))
    return s


async def with_versions(store: Store, n: int, s: SecretRecord | None = None) -> SecretRecord:
    """A secret with versions 1..n (envelopes ``<id>-env-<n>``); its latest snapshot."""
    current = await created(store, s)
    for number in range(2, n + 1):
        nxt = await store.add_secret_version(
            current, inline(current.id, number, f"{current.id}-env-{number}")
        )
        assert nxt is not None
        current = nxt
    return current


async def envelopes(store: Store, secret_id: str) -> dict[int, str | None]:
    return {v.version: v.envelope for v in await store.secret_versions(secret_id)}


# --- secret managers -----------------------------------------------------------------------


async def test_the_builtin_manager_exists_after_open(store: Store) -> None:
    assert await store.get_secret_manager(BUILTIN_MANAGER_ID) == BUILTIN
    assert await store.secret_manager_by_name("builtin") == BUILTIN
    assert await store.list_secret_managers() == [BUILTIN]


async def test_created_manager_reads_back_equal(store: Store) -> None:
    await store.create_secret_manager(manager())
    assert await store.get_secret_manager("sm_vault") == manager()
    assert await store.secret_manager_by_name("vault") == manager()


async def test_manager_without_credentials_or_selectors_reads_back_equal(store: Store) -> None:
    bare = manager(credentials_secret=None, selectors=(), settings={}, description="")
    await store.create_secret_manager(bare)
    assert await store.get_secret_manager("sm_vault") == bare


async def test_unknown_manager_is_none(store: Store) -> None:
    assert await store.get_secret_manager("sm_nope") is None
    assert await store.secret_manager_by_name("nope") is None


async def test_a_second_manager_with_a_taken_name_conflicts(store: Store) -> None:
    await store.create_secret_manager(manager())
    with pytest.raises(Conflict):
        await store.create_secret_manager(manager(id="sm_other"))
    with pytest.raises(Conflict):
        await store.create_secret_manager(manager(id="sm_other", name="builtin"))
    assert [m.id for m in await store.list_secret_managers()] == [BUILTIN_MANAGER_ID, "sm_vault"]


async def test_managers_are_listed_by_name(store: Store) -> None:
    await store.create_secret_manager(manager(id="sm_1", name="zeta"))
    await store.create_secret_manager(manager(id="sm_2", name="alpha"))
    await store.create_secret_manager(manager(id="sm_3", name="Zulu"))
    # Byte order on both backends, whatever PostgreSQL's locale.
    names = [m.name for m in await store.list_secret_managers()]
    assert names == ["Zulu", "alpha", "builtin", "zeta"]


async def test_update_replaces_every_field_but_the_creation_time(store: Store) -> None:
    await store.create_secret_manager(manager())
    changed = manager(
        name="vault-eu",
        kind="aws_kms",
        settings={"key_id": "alias/tether"},
        created_at=999.0,
        updated_at=150.0,
        credentials_secret=None,
        selectors=("eu",),
        description="moved",
    )
    assert await store.update_secret_manager(changed) is True
    assert await store.get_secret_manager("sm_vault") == dataclasses.replace(
        changed, created_at=100.0
    )
    assert await store.secret_manager_by_name("vault") is None


async def test_update_of_an_unknown_manager_is_false(store: Store) -> None:
    assert await store.update_secret_manager(manager()) is False
    assert await store.get_secret_manager("sm_vault") is None


async def test_rename_to_a_taken_name_conflicts_and_changes_nothing(store: Store) -> None:
    await store.create_secret_manager(manager())
    await store.create_secret_manager(manager(id="sm_2", name="other"))
    with pytest.raises(Conflict):
        await store.update_secret_manager(manager(id="sm_2", name="vault", description="x"))
    assert await store.get_secret_manager("sm_2") == manager(id="sm_2", name="other")


async def test_delete_removes_an_unused_manager(store: Store) -> None:
    await store.create_secret_manager(manager())
    assert await store.delete_secret_manager("sm_vault") is True
    assert await store.get_secret_manager("sm_vault") is None
    assert await store.delete_secret_manager("sm_vault") is False


async def test_delete_of_a_manager_keeping_secrets_conflicts(store: Store) -> None:
    await store.create_secret_manager(manager())
    await created(store, secret("sec_1", "a", "sm_vault"))
    await created(store, secret("sec_2", "b", "sm_vault"))
    with pytest.raises(Conflict, match="2 secret"):
        await store.delete_secret_manager("sm_vault")
    assert await store.get_secret_manager("sm_vault") == manager()
    await store.delete_secret("sec_1")
    await store.delete_secret("sec_2")
    assert await store.delete_secret_manager("sm_vault") is True


# --- secrets -------------------------------------------------------------------------------


async def test_created_secret_reads_back_with_its_first_version(store: Store) -> None:
    await store.create_secret(secret(), inline())
    assert await store.get_secret("sec_1") == secret()
    assert await store.secret_by_name("db-password") == secret()
    assert await store.secret_versions("sec_1") == [inline()]
    assert await store.get_secret_version("sec_1", 1) == inline()


async def test_unknown_secret_and_version_are_none(store: Store) -> None:
    await created(store)
    assert await store.get_secret("sec_nope") is None
    assert await store.secret_by_name("nope") is None
    assert await store.get_secret_version("sec_1", 2) is None
    assert await store.secret_versions("sec_nope") == []


async def test_reference_version_reads_back_with_its_ref(store: Store) -> None:
    await store.create_secret_manager(manager())
    s = secret(manager_id="sm_vault", mode="reference")
    await store.create_secret(s, reference("sec_1"))
    assert await store.get_secret_version("sec_1", 1) == reference("sec_1")


async def test_a_second_secret_with_a_taken_name_conflicts_and_writes_no_version(
    store: Store,
) -> None:
    await created(store)
    with pytest.raises(Conflict):
        await store.create_secret(secret(id="sec_2"), inline("sec_2"))
    assert await store.get_secret("sec_2") is None
    assert await store.secret_versions("sec_2") == []


async def test_a_secret_in_an_unknown_manager_conflicts(store: Store) -> None:
    with pytest.raises(Conflict):
        await store.create_secret(secret(manager_id="sm_gone"), inline())
    assert await store.get_secret("sec_1") is None
    assert await store.secret_versions("sec_1") == []


@pytest.mark.parametrize(
    ("s", "first"),
    [
        (secret(), inline(version=2)),
        (secret(current_version=2), inline(version=2)),
        (secret(), inline(secret_id="sec_other")),
    ],
)
async def test_create_secret_refuses_anything_but_its_own_version_1(
    store: Store, s: SecretRecord, first: SecretVersionRecord
) -> None:
    with pytest.raises(ValueError, match="version 1"):
        await store.create_secret(s, first)
    assert await store.get_secret(s.id) is None


async def test_secrets_are_listed_by_name_and_filtered_by_manager(store: Store) -> None:
    await store.create_secret_manager(manager())
    await created(store, secret("sec_1", "zeta"))
    await created(store, secret("sec_2", "alpha", "sm_vault"))
    await created(store, secret("sec_3", "mid", "sm_vault"))
    await created(store, secret("sec_4", "Zulu"))
    assert [s.name for s in await store.list_secrets()] == ["Zulu", "alpha", "mid", "zeta"]
    assert [s.name for s in await store.list_secrets(manager_id="sm_vault")] == ["alpha", "mid"]
    assert await store.list_secrets(manager_id="sm_none") == []


async def test_secrets_by_name_returns_those_that_exist(store: Store) -> None:
    a = await created(store, secret("sec_1", "a"))
    b = await created(store, secret("sec_2", "b"))
    await created(store, secret("sec_3", "c"))
    assert await store.secrets_by_name(["a", "missing", "b", "a"]) == {"a": a, "b": b}
    assert await store.secrets_by_name(["missing"]) == {}
    assert await store.secrets_by_name([]) == {}


# --- versions ------------------------------------------------------------------------------


async def test_add_version_makes_it_current(store: Store) -> None:
    s = await created(store)
    updated = await store.add_secret_version(s, inline(version=2, envelope="env-2"))
    assert updated == dataclasses.replace(s, current_version=2, updated_at=202.0)
    assert await store.get_secret("sec_1") == updated
    assert await store.get_secret_version("sec_1", 2) == inline(version=2, envelope="env-2")


async def test_versions_are_listed_newest_first(store: Store) -> None:
    await with_versions(store, 3)
    assert [v.version for v in await store.secret_versions("sec_1")] == [3, 2, 1]


async def test_of_two_updates_from_one_snapshot_exactly_one_wins(store: Store) -> None:
    s = await created(store)
    results = await asyncio.gather(
        *(store.add_secret_version(s, inline(version=2, envelope=f"env-{i}")) for i in range(2))
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert winners[0].current_version == 2
    (winner,) = (f"env-{i}" for i, r in enumerate(results) if r is not None)
    assert await envelopes(store, "sec_1") == {2: winner, 1: "sec_1-env-1"}


async def test_update_from_a_stale_snapshot_is_none_and_writes_nothing(store: Store) -> None:
    s = await created(store)
    assert await store.add_secret_version(s, inline(version=2, envelope="first")) is not None
    assert await store.add_secret_version(s, inline(version=2, envelope="late")) is None
    assert await envelopes(store, "sec_1") == {2: "first", 1: "sec_1-env-1"}
    got = await store.get_secret("sec_1")
    assert got is not None
    assert got.current_version == 2


async def test_update_of_a_deleted_secret_is_none(store: Store) -> None:
    s = await created(store)
    await store.delete_secret("sec_1")
    assert await store.add_secret_version(s, inline(version=2)) is None
    assert await store.secret_versions("sec_1") == []


@pytest.mark.parametrize("version", [inline(version=3), inline(version=1), inline("sec_2", 2)])
async def test_add_version_refuses_any_but_the_next_number_of_that_secret(
    store: Store, version: SecretVersionRecord
) -> None:
    s = await created(store)
    with pytest.raises(ValueError, match="version after"):
        await store.add_secret_version(s, version)
    assert await store.get_secret("sec_1") == s
    assert [v.version for v in await store.secret_versions("sec_1")] == [1]


async def test_current_versions_returns_each_existing_secrets_current_one(store: Store) -> None:
    await with_versions(store, 3)
    await created(store, secret("sec_2", "other"))
    got = await store.current_versions(["sec_1", "sec_missing", "sec_2", "sec_1"])
    assert got == {
        "sec_1": inline(version=3, envelope="sec_1-env-3"),
        "sec_2": inline("sec_2", 1, "sec_2-env-1"),
    }
    assert await store.current_versions([]) == {}


async def test_delete_removes_the_secret_and_all_its_versions(store: Store) -> None:
    await with_versions(store, 2)
    await created(store, secret("sec_2", "other"))
    assert await store.delete_secret("sec_1") is True
    assert await store.get_secret("sec_1") is None
    assert await store.secret_versions("sec_1") == []
    assert await store.current_versions(["sec_1"]) == {}
    assert await store.delete_secret("sec_1") is False
    assert [v.version for v in await store.secret_versions("sec_2")] == [1]
    # A secret made again under the old id starts clean: no old version 1 in the way.
    await created(store)
    assert await envelopes(store, "sec_1") == {1: "sec_1-env-1"}


# --- moving between managers, key rotation -------------------------------------------------


async def test_move_changes_the_manager_and_only_the_listed_envelopes(store: Store) -> None:
    await store.create_secret_manager(manager())
    s = await with_versions(store, 3)
    moved = await store.move_secret(s, "sm_vault", {1: "new-1", 3: "new-3"}, 500.0)
    assert moved == dataclasses.replace(s, manager_id="sm_vault", updated_at=500.0)
    assert await store.get_secret("sec_1") == moved
    assert await envelopes(store, "sec_1") == {3: "new-3", 2: "sec_1-env-2", 1: "new-1"}
    assert [x.id for x in await store.list_secrets(manager_id="sm_vault")] == ["sec_1"]


async def test_move_from_a_stale_version_is_none_and_changes_nothing(store: Store) -> None:
    await store.create_secret_manager(manager())
    s = await created(store)
    await store.add_secret_version(s, inline(version=2, envelope="env-2"))
    assert await store.move_secret(s, "sm_vault", {1: "new-1"}, 500.0) is None
    got = await store.get_secret("sec_1")
    assert got is not None
    assert got.manager_id == BUILTIN_MANAGER_ID
    assert await envelopes(store, "sec_1") == {2: "env-2", 1: "sec_1-env-1"}


async def test_move_from_a_stale_manager_is_none_and_changes_nothing(store: Store) -> None:
    await store.create_secret_manager(manager())
    await store.create_secret_manager(manager(id="sm_2", name="other"))
    s = await created(store)
    assert await store.move_secret(s, "sm_vault", {1: "vault-1"}, 500.0) is not None
    assert await store.move_secret(s, "sm_2", {1: "other-1"}, 600.0) is None
    got = await store.get_secret("sec_1")
    assert got is not None
    assert (got.manager_id, got.updated_at) == ("sm_vault", 500.0)
    assert await envelopes(store, "sec_1") == {1: "vault-1"}


async def test_of_two_moves_from_one_snapshot_exactly_one_wins(store: Store) -> None:
    await store.create_secret_manager(manager())
    await store.create_secret_manager(manager(id="sm_2", name="other"))
    s = await created(store)
    results = await asyncio.gather(
        store.move_secret(s, "sm_vault", {1: "vault-1"}, 500.0),
        store.move_secret(s, "sm_2", {1: "other-1"}, 500.0),
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    expected = {"sm_vault": "vault-1", "sm_2": "other-1"}[winners[0].manager_id]
    assert await envelopes(store, "sec_1") == {1: expected}


async def test_move_of_a_deleted_secret_is_none(store: Store) -> None:
    await store.create_secret_manager(manager())
    s = await created(store)
    await store.delete_secret("sec_1")
    assert await store.move_secret(s, "sm_vault", {1: "new-1"}, 500.0) is None


async def test_move_into_an_unknown_manager_conflicts_and_changes_nothing(store: Store) -> None:
    s = await created(store)
    with pytest.raises(Conflict):
        await store.move_secret(s, "sm_gone", {1: "new-1"}, 500.0)
    assert await store.get_secret("sec_1") == s
    assert await envelopes(store, "sec_1") == {1: "sec_1-env-1"}


async def test_move_refuses_envelopes_for_versions_the_secret_lacks(store: Store) -> None:
    await store.create_secret_manager(manager())
    s = await with_versions(store, 2)
    with pytest.raises(ValueError, match=r"no version \[0, 3\]"):
        await store.move_secret(s, "sm_vault", {0: "x", 1: "new-1", 3: "y"}, 500.0)
    assert await store.get_secret("sec_1") == s


async def test_envelopes_of_manager_are_the_inline_versions_kept_there(store: Store) -> None:
    await store.create_secret_manager(manager())
    kept = await with_versions(store, 2, secret("sec_1", "kept", "sm_vault"))
    await created(store, secret("sec_2", "elsewhere"))
    await store.create_secret(
        secret("sec_3", "ref", "sm_vault", mode="reference"), reference("sec_3")
    )
    got = await store.envelopes_of_manager("sm_vault")
    assert got == [
        inline(kept.id, 1, "sec_1-env-1"),
        inline(kept.id, 2, "sec_1-env-2"),
    ]
    assert [v.secret_id for v in await store.envelopes_of_manager(BUILTIN_MANAGER_ID)] == ["sec_2"]
    assert await store.envelopes_of_manager("sm_none") == []


async def test_replace_envelope_is_compare_and_set_on_the_old_text(store: Store) -> None:
    await with_versions(store, 2)
    assert await store.replace_envelope("sec_1", 1, "sec_1-env-1", "rotated") is True
    assert await store.replace_envelope("sec_1", 1, "sec_1-env-1", "again") is False
    assert await store.replace_envelope("sec_1", 9, "sec_1-env-2", "nowhere") is False
    assert await store.replace_envelope("sec_nope", 1, "sec_1-env-1", "nowhere") is False
    assert await envelopes(store, "sec_1") == {2: "sec_1-env-2", 1: "rotated"}


# --- tasks ---------------------------------------------------------------------------------


def sealed_task(id: str) -> TaskRecord:
    return TaskRecord(
        id=id,
        type="shell",
        state=TaskState.QUEUED,
        payload={"type": "shell", "script": "echo hi"},
        selectors=(),
        timeout_s=60.0,
        queue_timeout_s=60.0,
        max_attempts=1,
        created_at=1_000.0,
        secret_env_sealed=f"sealed-{id}",
        secret_env_names=("TOKEN",),
    )


async def test_clear_task_secret_env_forgets_only_that_tasks_sealed_env(store: Store) -> None:
    for task_id in ("task_1", "task_2"):
        await store.insert_task(sealed_task(task_id), idempotency_window=60.0)
    await store.clear_task_secret_env("task_1")
    assert await store.get_task("task_1") == dataclasses.replace(
        sealed_task("task_1"), secret_env_sealed=None
    )
    assert await store.get_task("task_2") == sealed_task("task_2")


async def test_clear_task_secret_env_of_an_unknown_task_does_nothing(store: Store) -> None:
    await store.clear_task_secret_env("task_nope")
    assert await store.get_task("task_nope") is None


# --- migration -----------------------------------------------------------------------------


async def test_a_database_of_the_previous_version_gains_the_secret_tables(
    new_store: StoreMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = new_store.migrations
    # The schema before migration 7 (the secrets); today's code cannot write its tasks table
    # (later migrations add columns), so the old database is left empty of tasks.
    previous = [m for m in every if m[0] < 7]
    monkeypatch.setattr(migrations, "MIGRATIONS", previous)
    old = new_store()
    await old.open()
    await old.close()
    assert await new_store.schema_versions() == [v for v, _ in previous]

    monkeypatch.setattr(migrations, "MIGRATIONS", every)
    s = new_store()
    await s.open()
    try:
        assert await new_store.schema_versions() == [v for v, _ in every]
        await s.insert_task(sealed_task("task_1"), idempotency_window=60.0)
        assert await s.get_task("task_1") == sealed_task("task_1")
        assert await s.list_secret_managers() == [BUILTIN]
        await created(s)
        assert await s.current_versions(["sec_1"]) == {"sec_1": inline(envelope="sec_1-env-1")}
    finally:
        await s.close()

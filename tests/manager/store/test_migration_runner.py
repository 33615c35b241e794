"""The migration runner on both stores: one transaction per migration, a failed one leaves
the database as it was, and a database newer than this release is refused before any write.
(The same through the real ``tether-manager`` command: tests/upgrade/test_migrations.py.)
"""

from __future__ import annotations

import sqlite3

import pytest

from manager.store import migrations as migration_list
from manager.store.migrations import MigrationFailed, SchemaTooNew, pending
from tests.manager.conftest import StoreMaker


async def table_exists(new_store: StoreMaker, name: str) -> bool:
    if new_store.kind == "sqlite":
        conn = sqlite3.connect(new_store.path)
        try:
            row = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone()
        finally:
            conn.close()
        return row is not None
    rows = await new_store.fetch("SELECT to_regclass($1) IS NOT NULL AS present", name)
    return bool(rows[0]["present"])


async def migrated(new_store: StoreMaker) -> None:
    store = new_store()
    await store.open()
    await store.close()


def test_pending_lists_what_is_above_the_current_version_in_order() -> None:
    migrations = [(1, "a"), (2, "b"), (3, "c")]
    assert pending(0, migrations) == migrations
    assert pending(2, migrations) == [(3, "c")]
    assert pending(3, migrations) == []


def test_pending_refuses_a_version_above_every_known_migration() -> None:
    with pytest.raises(SchemaTooNew, match=r"schema version 4, newer .* \(up to 3\)"):
        pending(4, [(1, "a"), (2, "b"), (3, "c")])


async def test_a_failed_migration_is_rolled_back_whole_and_earlier_ones_stay(
    new_store: StoreMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = new_store.migrations
    top = every[-1][0]
    # The first statement of the bad migration succeeds, the second fails: the first must
    # be undone with it, and the good migration before it must stay.
    good = (top + 1, "CREATE TABLE upgrade_good (x INTEGER)")
    bad = (top + 2, "CREATE TABLE upgrade_half (x INTEGER); INSERT INTO nowhere VALUES (1)")
    monkeypatch.setattr(migration_list, "MIGRATIONS", [*every, good, bad])
    with pytest.raises(MigrationFailed) as caught:
        await migrated(new_store)
    message = str(caught.value)
    assert f"migration {top + 2} failed and was rolled back" in message
    assert f"stays at schema version {top + 1}" in message
    assert "\n" not in message
    assert await new_store.schema_versions() == [v for v, _ in every] + [top + 1]
    assert await table_exists(new_store, "upgrade_good")
    assert not await table_exists(new_store, "upgrade_half")

    # Fixed, the next start applies it.
    monkeypatch.setattr(
        migration_list,
        "MIGRATIONS",
        [*every, good, (top + 2, "CREATE TABLE upgrade_half (x INT)")],
    )
    await migrated(new_store)
    assert await table_exists(new_store, "upgrade_half")


async def test_an_older_release_refuses_a_newer_database_and_writes_nothing(
    new_store: StoreMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = new_store.migrations
    await migrated(new_store)
    before = await new_store.schema_versions()
    # This release, as the one before it, that knew one migration less.
    monkeypatch.setattr(migration_list, "MIGRATIONS", every[:-1])
    with pytest.raises(SchemaTooNew, match=f"schema version {every[-1][0]}, newer"):
        await migrated(new_store)
    assert await new_store.schema_versions() == before

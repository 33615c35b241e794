"""The one migration list against the two it replaced.

``v10/sqlite.sql`` and ``v10/postgres.sql`` are the schemas the two hand-kept lists made at
version 10, verbatim. A database made by that code must open unchanged, and a new database
made by the one list must be the same schema, to the column default and index predicate.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from manager.records import TaskRecord
from manager.store import migrations
from manager.store.sql.dialect import Dialect, fields
from shared.protocol import TaskState
from tests.manager.conftest import PG_URL, StoreMaker, postgres_schema_maker

V10 = Path(__file__).parent / "v10"


async def _load_v10(maker: StoreMaker) -> None:
    """Make ``maker``'s database as the old code left it at version 10, with a row or two."""
    text = (V10 / f"{maker.kind}.sql").read_text()
    rows = (
        "INSERT INTO tasks(id, type, state, payload, selectors, timeout_s, queue_timeout_s,"
        " max_attempts, created_at, app_id) VALUES ('task_old', 'shell', 'queued',"
        """ '{"cmd": "true"}', '["linux"]', 600, 300, 1, 10.0, 'app_1');"""
        "INSERT INTO api_keys(id, name, prefix, key_hash, created_at, owner, groups)"
        """ VALUES ('key_old', 'ci', 'tak_', 'h-old', 5.0, 'alice', '["Ops"]');"""
    )
    if maker.kind == "sqlite":
        conn = sqlite3.connect(maker.path)
        try:
            conn.executescript(text + rows)
        finally:
            conn.close()
    else:
        conn = await asyncpg.connect(PG_URL, server_settings={"search_path": maker.schema})
        try:
            await conn.execute(text + rows)  # several statements: the simple protocol
        finally:
            await conn.close()


async def _schema(maker: StoreMaker) -> dict[str, Any]:
    """What a schema is made of, without the names a test chose for it."""
    if maker.kind == "sqlite":
        conn = sqlite3.connect(maker.path)
        try:
            master = conn.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
            ).fetchall()
        finally:
            conn.close()
        return {"sqlite_master": master}
    columns = await maker.fetch(
        "SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity"
        " FROM information_schema.columns WHERE table_schema = current_schema()"
        " ORDER BY table_name, column_name"
    )
    indexes = await maker.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
        " ORDER BY indexname"
    )
    constraints = await maker.fetch(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE connamespace = current_schema()::regnamespace ORDER BY 1, 2"
    )
    unqualified = re.compile(rf"\b{maker.schema}\.")
    return {
        "columns": [tuple(r) for r in columns],
        "indexes": [(r[0], unqualified.sub("", r[1])) for r in indexes],
        "constraints": [tuple(r) for r in constraints],
    }


@asynccontextmanager
async def _two(kind: str, tmp_path: Path) -> AsyncIterator[tuple[StoreMaker, StoreMaker]]:
    if kind == "sqlite":
        yield StoreMaker("sqlite", tmp_path / "old.db"), StoreMaker("sqlite", tmp_path / "new.db")
        return
    async with postgres_schema_maker(tmp_path) as old, postgres_schema_maker(tmp_path) as new:
        yield old, new


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_the_one_list_makes_the_schema_the_two_lists_made_at_version_10(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _two(kind, tmp_path) as (old, new):
        await _load_v10(old)
        monkeypatch.setattr(
            migrations, "MIGRATIONS", [m for m in migrations.MIGRATIONS if m[0] <= 10]
        )
        s = new()
        await s.open()
        await s.close()
        assert await new.schema_versions() == list(range(1, 11))
        old_schema, new_schema = await _schema(old), await _schema(new)
        assert new_schema == old_schema
        assert all(old_schema.values())


async def test_a_database_made_by_the_two_lists_opens_and_is_read_and_written(
    new_store: StoreMaker,
) -> None:
    await _load_v10(new_store)
    s = new_store()
    await s.open()
    try:
        versions = await new_store.schema_versions()
        # Nothing up to 10 runs again; what came after (if anything) runs once each.
        assert versions == [v for v, _ in migrations.MIGRATIONS]
        old = await s.get_task("task_old")
        assert old is not None
        assert (old.state, old.payload, old.selectors, old.app_id) == (
            TaskState.QUEUED,
            {"cmd": "true"},
            ("linux",),
            "app_1",
        )
        (key,) = await s.list_api_keys()
        assert (key.name, key.owner, key.groups, key.service_account) == (
            "ci",
            "alice",
            ("Ops",),
            False,
        )
        new = TaskRecord(
            id="task_new",
            type="shell",
            state=TaskState.QUEUED,
            payload={},
            selectors=(),
            timeout_s=1.0,
            queue_timeout_s=1.0,
            max_attempts=1,
            created_at=20.0,
        )
        assert await s.insert_task(new, idempotency_window=60.0) == (new, True)
        assert [t.id for t in await s.tasks_in_states([TaskState.QUEUED])] == [
            "task_old",
            "task_new",
        ]
    finally:
        await s.close()


def test_a_migration_is_one_text_or_a_pair_numbered_in_order() -> None:
    versions = [v for v, _ in migrations.MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))
    sqlite = migrations.for_dialect(Dialect.SQLITE, migrations.MIGRATIONS)
    postgres = migrations.for_dialect(Dialect.POSTGRES, migrations.MIGRATIONS)
    # Every fragment was filled in, for both dialects.
    for _, text in sqlite + postgres:
        assert not re.search(r"\{[A-Z][A-Z0-9_]*\}", text), text
    assert "DOUBLE PRECISION" in postgres[0][1]
    assert "DOUBLE PRECISION" not in sqlite[0][1]
    assert "WITHOUT ROWID" in sqlite[0][1]
    assert "WITHOUT ROWID" not in postgres[0][1]


async def test_every_task_column_is_a_record_field(new_store: StoreMaker) -> None:
    # A TaskRecord field the store forgets to persist would make the equality tests vacuous.
    s = new_store()
    await s.open()
    await s.close()
    if new_store.kind == "sqlite":
        conn = sqlite3.connect(new_store.path)
        try:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(tasks)")}
        finally:
            conn.close()
    else:
        rows = await new_store.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'tasks'"
        )
        columns = {r[0] for r in rows}
    assert columns == set(fields(TaskRecord))

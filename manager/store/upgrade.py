"""``tether-manager migrate --dry-run``: what opening the store would migrate, read without
writing anything."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

from manager.store import migrations, postgres, sqlite
from manager.store.base import StoreError
from manager.store.factory import SQLITE_FILE
from manager.store.sql.dialect import Dialect

__all__ = ["migration_plan"]


async def migration_plan(database: str | None, data_dir: Path) -> tuple[int, list[int]]:
    """The schema version now, and the migrations that would run (SchemaTooNew when the
    database is newer than this release)."""
    if database is None:
        path = data_dir / SQLITE_FILE
        # Read-only: a dry run on a missing file must not create one.
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            current = sqlite.schema_version(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from None
        finally:
            conn.close()
        todo = migrations.for_dialect(Dialect.SQLITE, migrations.MIGRATIONS)
    else:
        try:
            pg = await asyncpg.connect(database)
            try:
                current = await postgres.schema_version(pg)
            finally:
                await pg.close()
        except (asyncpg.PostgresError, OSError) as exc:
            raise StoreError(f"postgres: {exc}") from None
        todo = migrations.for_dialect(Dialect.POSTGRES, migrations.MIGRATIONS)
    return current, [v for v, _ in migrations.pending(current, todo)]

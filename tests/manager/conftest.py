"""The store on every backend: tests that take ``store`` run once on SQLite, once on PostgreSQL.

PostgreSQL comes from ``TETHER_TEST_POSTGRES`` (default: the local server at 127.0.0.1:5432).
Each test gets a fresh schema of its own, chosen through ``search_path``, and dropped after,
so tests are isolated and may run in parallel. Set ``TETHER_TEST_POSTGRES=`` (empty) to skip
the PostgreSQL variants on a machine without a server.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from manager.store import migrations as store_migrations
from manager.store.base import Store
from manager.store.postgres import PostgresStore
from manager.store.sqlite import SqliteStore

PG_URL = os.environ.get("TETHER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgres"]


@dataclass(frozen=True)
class StoreMaker:
    """Makes unopened stores over one database: a SQLite file, or one PostgreSQL schema."""

    kind: str
    path: Path
    schema: str = ""

    def __call__(self, **kwargs: Any) -> Store:
        if self.kind == "sqlite":
            return SqliteStore(self.path)
        return PostgresStore(PG_URL, server_settings={"search_path": self.schema}, **kwargs)

    def postgres(self, **kwargs: Any) -> PostgresStore:
        assert self.kind == "postgres"
        return PostgresStore(PG_URL, server_settings={"search_path": self.schema}, **kwargs)

    @property
    def migrations(self) -> list[store_migrations.Migration]:
        return store_migrations.MIGRATIONS

    async def schema_versions(self) -> list[int]:
        """The rows of ``schema_version``, read with a connection of the test's own."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.path)
            try:
                return [r[0] for r in conn.execute("SELECT version FROM schema_version")]
            finally:
                conn.close()
        rows = await self.fetch("SELECT version FROM schema_version ORDER BY version")
        return [r[0] for r in rows]

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """Run SQL in this PostgreSQL schema, outside any store."""
        conn = await asyncpg.connect(PG_URL, server_settings={"search_path": self.schema})
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()


@asynccontextmanager
async def postgres_schema_maker(tmp_path: Path) -> AsyncIterator[StoreMaker]:
    if not PG_URL:
        pytest.skip("TETHER_TEST_POSTGRES is empty: no PostgreSQL for this run")
    schema = f"t_{secrets.token_hex(8)}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield StoreMaker("postgres", tmp_path, schema)
        finally:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await admin.close()


@pytest.fixture(params=BACKENDS)
async def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreMaker]:
    """Unopened stores on each backend, all over the same database within a test."""
    if request.param == "sqlite":
        yield StoreMaker("sqlite", tmp_path / "tether.db")
        return
    async with postgres_schema_maker(tmp_path) as maker:
        yield maker


@pytest.fixture
async def store(new_store: StoreMaker) -> AsyncIterator[Store]:
    """An open store on each backend, empty."""
    s = new_store()
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def pg(tmp_path: Path) -> AsyncIterator[StoreMaker]:
    """PostgreSQL only: a fresh schema, for what only that store does."""
    async with postgres_schema_maker(tmp_path) as maker:
        yield maker

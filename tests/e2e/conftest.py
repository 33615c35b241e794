from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.harness import PRODUCTION_LEASES, Cluster

PG = os.environ.get("TETHER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    c = Cluster(root=tmp_path)
    if request.node.get_closest_marker("production_leases") is not None:
        c.manager_args = PRODUCTION_LEASES
    try:
        yield c
    finally:
        await c.close()


@contextlib.asynccontextmanager
async def on_store(cluster: Cluster, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """``cluster`` with a started manager on the store ``request.param`` names: the
    embedded SQLite, or PostgreSQL (a fresh schema)."""
    if request.param == "sqlite":
        await cluster.start_manager()
        yield cluster
        return
    marker = request.node.get_closest_marker("sqlite_only")
    if marker is not None:
        pytest.skip(marker.kwargs.get("reason", "about the SQLite data dir itself"))
    schema = f"e2e_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(PG)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        cluster.database = f"{PG}?search_path={schema}"
        await cluster.start_manager()
        yield cluster
        await cluster.close()
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


# On a test whose subject is not the store (the delegate, TLS, signals, a proxy, the CLI's
# output): `running` on SQLite alone. What each store does is proven on both by the store
# suite (tests/manager/store) and by the end-to-end tests left on both (restarts, recovery,
# revocation, sealing at rest, logs, audit verification); running these twice doubled their
# time in `make test` and tested nothing more.
ON_SQLITE = pytest.mark.parametrize("running", ["sqlite"], indirect=True)


@pytest.fixture(params=["sqlite", "postgres"])
async def running(cluster: Cluster, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """A started manager, on each store: the embedded SQLite and PostgreSQL (a fresh schema)."""
    async with on_store(cluster, request) as started:
        yield started


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)

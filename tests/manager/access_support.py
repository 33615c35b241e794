"""What the access tests share: a clock they move by hand, and a manager app on a TestClient."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from manager.access.passwords import Passwords
from manager.access.tokens import create_api_key
from manager.schemas.grants import ADMIN_GROUP
from manager.server.app import ManagerConfig, build_app, open_store
from manager.store.base import Store

START = 1_700_000_000.0
# argon2id at its cheapest: the login tests hash dozens of passwords, and what they test is
# the rules around the hash, not its cost.
CHEAP_PASSWORDS = Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


class Clock:
    """Stands still until a test moves it, so no limit or cache lifetime depends on speed."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Manager:
    client: TestClient[Any, Any]
    store: Store
    clock: Clock
    key: str

    def auth(self, key: str | None = None, **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}", **headers}

    async def call(
        self, method: str, path: str, body: Any = None, *, key: str | None = None, **headers: str
    ) -> tuple[int, Any]:
        resp = await self.client.request(method, path, json=body, headers=self.auth(key, **headers))
        data = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, data


@asynccontextmanager
async def manager(
    data_dir: Path, store: Store, clock: Clock, *, max_qps: float = 1000.0, burst: int = 1000
) -> AsyncIterator[Manager]:
    """One replica over ``store``, with a key of its own (a high limit unless told)."""
    config = ManagerConfig(data_dir=data_dir, clock=clock, passwords=CHEAP_PASSWORDS)
    app, _ = await build_app(config, store)
    _, key = await create_api_key(
        store, f"k{id(app)}", groups=(ADMIN_GROUP,), max_qps=max_qps, burst=burst, now=clock()
    )
    async with TestClient(TestServer(app)) as client:
        yield Manager(client, store, clock, key)


# Fixtures for the API tests: import both (``from tests.manager.access_support import
# one_manager, sqlite_store``) and ask for ``m`` (and ``store``, the same SQLite store).


@pytest.fixture(name="store")
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(tmp_path / "db", None)
    await s.open()
    yield s
    await s.close()


@pytest.fixture(name="m")
async def one_manager(tmp_path: Path, store: Store) -> AsyncIterator[Manager]:
    async with manager(tmp_path, store, Clock()) as replica:
        yield replica

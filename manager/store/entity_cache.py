"""Entities that nearly every request reads and an administrator changes now and then, kept
in memory by the store.

Groups (every principal's grants), applications and environments (a submission's target, the
places of every task shown) and freeze windows (judged at every submission) are loaded once
per kind and served from memory until a change
drops them:

- a write through this store drops its kind once it is committed (the store calls
  :meth:`EntityCache.drop`);
- a write through another replica drops it when that replica's notification arrives
  (PostgreSQL LISTEN/NOTIFY: manager.store.postgres);
- a LISTEN connection that comes back drops every kind, since what was notified while it was
  down is gone;
- and nothing is served older than ``max_age`` whatever happens: the bound should a
  notification be lost, or a process that sends none (a host command) write the database.

A drop bumps the kind's generation, and a load keeps its rows only if no drop happened while
it read: a read that raced a write is never kept as the current state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from manager.records import EntityRecord

__all__ = ["CACHED_KINDS", "CacheLoad", "EntityCache", "Loaded"]

# What is read per request and changes rarely. Users and sessions change at every login (and
# a principal holds what it needs of them: manager.access.principal), so they are read fresh.
# Freeze windows are judged at every submission (manager.governance.freeze.check_freeze):
# read fresh, they were one store read per task.
CACHED_KINDS = frozenset({"group", "app", "env", "freeze"})
# Served from memory at most this long after it was read, should a notification be lost.
MAX_AGE_S = 1.0


@dataclass(frozen=True, slots=True)
class Loaded:
    """One kind's rows as read, oldest first, and indexed by id and by key."""

    records: tuple[EntityRecord, ...]
    by_id: dict[str, EntityRecord]
    by_key: dict[str, EntityRecord]
    at: float

    @classmethod
    def of(cls, records: list[EntityRecord], at: float) -> Loaded:
        return cls(tuple(records), {r.id: r for r in records}, {r.key: r for r in records}, at)


CacheLoad = Callable[[], Awaitable[list[EntityRecord]]]


class EntityCache:
    def __init__(
        self,
        kinds: frozenset[str] = CACHED_KINDS,
        *,
        max_age: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kinds = kinds
        self._max_age = max_age
        self._clock = clock
        self._loaded: dict[str, Loaded] = {}
        self._generation = dict.fromkeys(kinds, 0)
        # One load per kind at a time; the others wait for its rows.
        self._locks = {kind: asyncio.Lock() for kind in kinds}

    def _fresh(self, kind: str) -> Loaded | None:
        hit = self._loaded.get(kind)
        if hit is not None and self._clock() - hit.at < self._max_age:
            return hit
        return None

    async def get(self, kind: str, load: CacheLoad) -> Loaded:
        """``kind``'s rows: from memory when fresh, else from ``load`` (and kept)."""
        hit = self._fresh(kind)
        if hit is not None:
            return hit
        async with self._locks[kind]:
            hit = self._fresh(kind)
            if hit is not None:
                return hit
            generation = self._generation[kind]
            at = self._clock()
            loaded = Loaded.of(await load(), at)
            if self._generation[kind] == generation:
                self._loaded[kind] = loaded
            # Else a write landed while this read ran: the rows still answer this caller,
            # whose read was concurrent with that write, but the next one reads again.
            return loaded

    def drop(self, kind: str | None = None) -> None:
        """Forget ``kind`` (every kind when None): it changed, or may have."""
        for k in self.kinds if kind is None else (kind,):
            if k in self._generation:
                self._generation[k] += 1
                self._loaded.pop(k, None)

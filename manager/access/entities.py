"""Typed access to the store's entities: each kind is a pydantic model kept as a JSON document
with a unique key and a version (manager.store: ``entities``).

Updates are compare-and-set: read, change, write if nobody wrote in between, else read again.
Two replicas counting the same user's failed logins, or two admins editing one group, never
lose a write.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from manager.core.audit_chain import AuditOf
from manager.records import EntityRecord
from manager.store.base import Conflict, EntityWrite, Store, StoreError
from manager.store.entity_cache import CACHED_KINDS
from shared.ids import new_id

__all__ = ["Entity", "EntityKind", "Gone", "together"]

M = TypeVar("M", bound=BaseModel)

# Compare-and-set attempts before giving up: each loss means someone else just wrote.
_CAS_ATTEMPTS = 20
# The most a retry waits grows by this much per lost attempt (random within it).
_CAS_BACKOFF_S = 0.002
# Validated entities remembered per kind at most (manager.store.entity_cache's kinds).
_MEMO_MAX = 10_000


class Gone(StoreError):
    """The entity was deleted while it was being changed."""


@dataclass(frozen=True, slots=True)
class Entity(Generic[M]):
    id: str
    body: M
    version: int
    created_at: float
    updated_at: float


class EntityKind(Generic[M]):
    def __init__(
        self,
        store: Store,
        kind: str,
        model: type[M],
        key: Callable[[M], str],
        id_prefix: str,
    ) -> None:
        self._store = store
        self.kind = kind
        self._model = model
        self._key = key
        self._prefix = id_prefix
        # The kinds the store serves from memory hand back the very same records until one
        # changes: each is validated once, not on every request that reads it.
        self._memo: dict[str, tuple[EntityRecord, Entity[M]]] | None = (
            {} if kind in CACHED_KINDS else None
        )

    def parse(self, record: EntityRecord) -> Entity[M]:
        """``record`` as this kind's entity, validated afresh (safe on the store's thread,
        where an audit event is made of the row written)."""
        body = self._model.model_validate(record.body)
        return Entity(record.id, body, record.version, record.created_at, record.updated_at)

    def _load(self, record: EntityRecord | None) -> Entity[M] | None:
        if record is None:
            return None
        memo = self._memo
        if memo is not None and (hit := memo.get(record.id)) is not None and hit[0] is record:
            return hit[1]
        body = self._model.model_validate(record.body)
        loaded = Entity(record.id, body, record.version, record.created_at, record.updated_at)
        if memo is not None:
            if len(memo) >= _MEMO_MAX:  # deleted entities' entries: start again
                memo.clear()
            memo[record.id] = (record, loaded)
        return loaded

    async def get(self, entity_id: str) -> Entity[M] | None:
        return self._load(await self._store.get_entity(self.kind, entity_id))

    async def by_key(self, key: str) -> Entity[M] | None:
        return self._load(await self._store.entity_by_key(self.kind, key))

    async def list(self) -> list[Entity[M]]:
        out: list[Entity[M]] = []
        for record in await self._store.list_entities(self.kind):
            loaded = self._load(record)
            if loaded is not None:
                out.append(loaded)
        return out

    def _new(self, body: M, entity_id: str | None) -> EntityRecord:
        now = time.time()
        return EntityRecord(
            kind=self.kind,
            id=entity_id or new_id(self._prefix),
            key=self._key(body),
            body=body.model_dump(mode="json"),
            version=1,
            created_at=now,
            updated_at=now,
        )

    def _next(self, current: Entity[M], body: M) -> EntityRecord:
        return EntityRecord(
            kind=self.kind,
            id=current.id,
            key=self._key(body),
            body=body.model_dump(mode="json"),
            version=current.version + 1,
            created_at=current.created_at,
            updated_at=time.time(),
        )

    async def insert(
        self,
        body: M,
        *,
        entity_id: str | None = None,
        audit: AuditOf[Entity[M]] | None = None,
    ) -> Entity[M]:
        """Store a new entity; :class:`manager.store.base.Conflict` when its key is taken.
        ``audit``: its event, chained in the insert's transaction."""
        record = self._new(body, entity_id)
        await self._store.insert_entity(
            record, audit=None if audit is None else lambda r: audit(self.parse(r))
        )
        loaded = self._load(record)
        assert loaded is not None
        return loaded

    async def update(
        self,
        entity_id: str,
        change: Callable[[M], M],
        *,
        audit: AuditOf[tuple[M, Entity[M]]] | None = None,
    ) -> tuple[M, Entity[M]]:
        """Apply ``change`` to the stored body until it lands; (the body before, the entity
        after). ``change`` may raise to refuse (it sees the latest body each time).
        :class:`Gone` when there is no such entity. ``audit``: the event of (the body before,
        the entity as written), chained in the write's transaction; none when nothing
        changed, as nothing is written."""
        for attempt in range(_CAS_ATTEMPTS):
            if attempt:
                # Writers that lost together would collide again in step: spread them out.
                await asyncio.sleep(random.uniform(0, _CAS_BACKOFF_S * attempt))
            current = await self.get(entity_id)
            if current is None:
                raise Gone(f"{self.kind} {entity_id} does not exist")
            body = change(current.body.model_copy(deep=True))
            if body == current.body:
                return current.body, current  # nothing to write, and nothing to collide
            record = self._next(current, body)
            before = current.body
            of_row = None if audit is None else self._of_update(before, audit)
            if await self._store.update_entity(record, current.version, audit=of_row):
                after = self._load(record)
                assert after is not None
                return current.body, after
        raise StoreError(f"{self.kind} {entity_id} kept changing; try again")

    def _of_update(self, before: M, audit: AuditOf[tuple[M, Entity[M]]]) -> AuditOf[EntityRecord]:
        return lambda r: audit((before, self.parse(r)))

    async def put(
        self,
        entity_id: str,
        body: M,
        *,
        audit: AuditOf[tuple[M | None, Entity[M]]] | None = None,
    ) -> M | None:
        """``body`` as the entity ``entity_id``, inserted or replacing what is there;
        answers the body it replaced (None: there was none). ``audit``: the event of (the
        body before or None, the entity as written), chained in the write's transaction;
        none when it already held ``body``, as nothing is written."""
        if await self.get(entity_id) is None:
            try:
                first = None if audit is None else _of_insert(audit)
                await self.insert(body, entity_id=entity_id, audit=first)
                return None
            except Conflict:
                pass  # written meanwhile (another replica): replaced below
        before, _ = await self.update(entity_id, lambda _old: body, audit=audit)
        return before

    async def delete(self, entity_id: str, *, audit: AuditOf[Entity[M]] | None = None) -> bool:
        """``audit``: the event of the row deleted, chained in the delete's transaction."""
        return await self._store.delete_entity(
            self.kind, entity_id, audit=None if audit is None else lambda r: audit(self.parse(r))
        )

    # -- writes of several entities together (:func:`together`) ----------------------------

    def inserted(self, body: M, *, entity_id: str | None = None) -> EntityWrite:
        return EntityWrite(self._new(body, entity_id))

    def updated(self, current: Entity[M], body: M) -> EntityWrite:
        """``current`` replaced by ``body``, if nobody wrote it since it was read."""
        return EntityWrite(self._next(current, body), expect_version=current.version)

    def deleted(self, current: Entity[M], *, any_version: bool = False) -> EntityWrite:
        """``current`` deleted, if nobody wrote it since it was read (``any_version``: if
        it is there at all; a delete that finds it gone already writes nothing)."""
        record = EntityRecord(
            self.kind, current.id, "", {}, current.version, current.created_at, 0.0
        )
        return EntityWrite(record, None if any_version else current.version, delete=True)


def _of_insert(audit: AuditOf[tuple[M | None, Entity[M]]]) -> AuditOf[Entity[M]]:
    return lambda written: audit((None, written))


async def together(
    store: Store,
    plan: Callable[[], Awaitable[Sequence[EntityWrite]]],
    *,
    audit: AuditOf[list[EntityRecord | None]] | None = None,
) -> None:
    """The writes ``plan`` makes from what it reads, in one transaction with their event:
    all of them or none. When one finds its entity changed since ``plan`` read it, nothing
    is written and ``plan`` reads again. ``plan`` may raise to refuse."""
    for attempt in range(_CAS_ATTEMPTS):
        if attempt:
            await asyncio.sleep(random.uniform(0, _CAS_BACKOFF_S * attempt))
        if await store.write_entities(await plan(), audit=audit):
            return
    raise StoreError("the entities kept changing; try again")

"""Governance standards: kept as the store's ``standard`` entities (versioned, each change
audited in its write), and the scores they give a runbook (manager.core.standards)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from manager.access.entities import Entity, EntityKind, Gone
from manager.core.audit_chain import AuditOf
from manager.core.standards import Score, score
from manager.errors import Conflicting, NotFound
from manager.schemas.runbooks import (
    RunbookDefinition,
    ScoreView,
    StandardDefinition,
    StandardView,
)
from manager.store.base import Conflict, Store

__all__ = ["StandardBody", "Standards", "score_view"]


class StandardBody(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    name: str
    version: int
    definition: dict[str, Any]


def score_view(s: Score) -> ScoreView:
    return ScoreView(
        standard=s.standard,
        score=s.percent,
        met=list(s.met),
        unmet=list(s.unmet),
        enforced=s.enforced,
        minimum=s.minimum,
    )


class Standards:
    def __init__(self, store: Store) -> None:
        self.kind = EntityKind(store, "standard", StandardBody, lambda b: b.name, "std")

    async def scores(self, definition: RunbookDefinition, env_type: str | None) -> list[Score]:
        return [
            score(StandardDefinition.model_validate(s.body.definition), definition, env_type)
            for s in await self.kind.list()
        ]

    async def apply(
        self,
        definition: StandardDefinition,
        *,
        audit: AuditOf[tuple[StandardBody | None, Entity[StandardBody]]] | None = None,
    ) -> tuple[StandardView, bool]:
        doc = definition.model_dump(mode="json")
        current = await self.kind.by_key(definition.name)
        if current is None:
            body = StandardBody(name=definition.name, version=1, definition=doc)
            try:
                written = await self.kind.insert(
                    body, audit=None if audit is None else (lambda e: audit((None, e)))
                )
            except Conflict:
                raise Conflicting(
                    "conflict", f"standard {definition.name!r} was just made"
                ) from None
            return self._view(written), True
        if current.body.definition == doc:
            return self._view(current), False
        try:
            _, written = await self.kind.update(
                current.id,
                lambda b: b.model_copy(update={"version": b.version + 1, "definition": doc}),
                audit=None if audit is None else (lambda pair: audit((pair[0], pair[1]))),
            )
        except Gone:
            raise Conflicting(
                "conflict", f"standard {definition.name!r} was just deleted"
            ) from None
        return self._view(written), True

    def _view(self, entity: Entity[StandardBody]) -> StandardView:
        return StandardView(
            name=entity.body.name,
            version=entity.body.version,
            definition=StandardDefinition.model_validate(entity.body.definition),
            updated_at=entity.updated_at,
        )

    async def get(self, name: str) -> StandardView:
        found = await self.kind.by_key(name)
        if found is None:
            raise NotFound("not_found", f"no standard {name!r}")
        return self._view(found)

    async def list_all(self) -> list[StandardView]:
        return [self._view(s) for s in await self.kind.list()]

    async def delete(
        self, name: str, *, audit: AuditOf[Entity[StandardBody]] | None = None
    ) -> None:
        found = await self.kind.by_key(name)
        if found is None or not await self.kind.delete(found.id, audit=audit):
            raise NotFound("not_found", f"no standard {name!r}")

"""Named verification specs: each apply of a changed spec is a new version, kept, so a run
names exactly what it judged with, and the audit trail shows every change."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from manager.core.audit_chain import AuditOf
from manager.records import VerificationRecord
from manager.store.base import Store
from shared.verify.spec import VerifySpec

__all__ = ["Verifications", "spec_of"]


def spec_of(record: VerificationRecord) -> VerifySpec:
    return VerifySpec.model_validate_json(record.spec)


def _canonical(spec: VerifySpec) -> str:
    # Sorted keys: the same spec is the same text, so an unchanged apply is seen as one.
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


class Verifications:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def apply(
        self,
        name: str,
        spec: VerifySpec,
        *,
        actor: str | None,
        audit: AuditOf[VerificationRecord] | None = None,
    ) -> tuple[VerificationRecord, bool]:
        """The version holding ``spec``: the latest when it already does (nothing written),
        else a new one. True when one was written."""
        text = _canonical(spec)
        latest = await self._store.verification(name)
        if latest is not None and latest.spec == text:
            return latest, False
        record = await self._store.add_verification_version(
            name, text, created_at=self._clock(), created_by=actor, audit=audit
        )
        return record, True

    async def get(self, name: str, version: int | None = None) -> VerificationRecord | None:
        return await self._store.verification(name, version)

    async def all(self) -> list[VerificationRecord]:
        return await self._store.list_verifications()

    async def delete(self, name: str, *, audit: AuditOf[VerificationRecord] | None = None) -> bool:
        return await self._store.delete_verification(name, audit=audit)

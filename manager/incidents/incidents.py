"""Incidents: opened and updated by alert deliveries, acknowledged, resolved and annotated by
people; each with a timeline of deliveries, runs, notes and status changes.

Everything an incident says (title, severity, source, its timeline) is sealed at rest
under the incident's own data key (:mod:`manager.incidents.sealing`), deleted with the
incident when the retention purges it; the row in the clear holds only its status and the key
Alertmanager's alerts are grouped by (a hash of the webhook and the groupKey), so firing then
resolved notifications of one group land on one incident.

Incidents not updated for the retention setting's days are purged in bounded batches, each
batch with its audit event (:meth:`Incidents.purge`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from manager.access.entities import Entity, EntityKind, Gone
from manager.core.audit_chain import AuditOf
from manager.errors import Invalid, NotFound
from manager.incidents.sealing import owner, seal, unseal
from manager.keys.data_keys import DataKey, DataKeys
from manager.keys.masterkey import MasterKey
from manager.records import EntityRecord
from manager.schemas.incidents import (
    IncidentStatus,
    IncidentSummary,
    IncidentView,
    TimelineEntry,
)
from manager.store.base import Conflict, Store
from shared.ids import new_id

EntryKind = Literal["delivery", "run", "note", "status"]

__all__ = ["Alert", "IncidentBody", "Incidents", "alert_of"]

DEFAULT_RETENTION_DAYS = 90
PURGE_BATCH = 100
# The timeline keeps the latest entries; an alert that flaps for weeks stays bounded.
MAX_TIMELINE = 500
_RETENTION_ID = "retention"


class IncidentBody(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    # Unique: the webhook and the alert group (hashed), or the incident's own id.
    key: str
    webhook_id: str | None = None
    status: IncidentStatus
    # title, severity, source, timeline (manager.incidents.sealing)
    sealed: str


class RetentionBody(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    days: int


@dataclass(frozen=True, slots=True)
class Alert:
    """What an alert delivery says, read from the payload."""

    group_key: str
    firing: bool
    title: str
    severity: str
    count: int


def alert_of(payload: Any) -> Alert:
    """An Alertmanager webhook payload (version 4); Invalid naming what is missing."""
    if not isinstance(payload, dict):
        raise Invalid("invalid", "an Alertmanager payload is a JSON object")
    group_key = payload.get("groupKey")
    status = payload.get("status")
    if not isinstance(group_key, str) or not group_key or status not in ("firing", "resolved"):
        raise Invalid("invalid", "an Alertmanager payload has groupKey and status")
    labels = _dict(payload.get("commonLabels"))
    notes = _dict(payload.get("commonAnnotations"))
    alerts = payload.get("alerts")
    count = len(alerts) if isinstance(alerts, list) else 0
    title = notes.get("summary") or labels.get("alertname") or "alert"
    severity = labels.get("severity") or "unknown"
    return Alert(
        group_key,
        status == "firing",
        str(title)[:512],
        str(severity)[:64],
        count,
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class Incidents:
    def __init__(
        self,
        store: Store,
        master_key: MasterKey,
        data_keys: DataKeys,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kind = EntityKind(store, "incident", IncidentBody, lambda b: b.key, "inc")
        self._retention = EntityKind(
            store, "incident_setting", RetentionBody, lambda _b: _RETENTION_ID, "iset"
        )
        self._store = store
        self._key = master_key
        self._data_keys = data_keys
        self._clock = clock

    # -- sealing: the one place that opens and closes an incident's data

    # The data key is fetched (or made) before a store update, whose change function is
    # synchronous; sealing and opening with it then are too.

    def _open(self, e: Entity[IncidentBody], key: DataKey | None) -> dict[str, Any]:
        return unseal(key, self._key, e.id, e.body.sealed)

    def _close(self, key: DataKey, data: dict[str, Any]) -> str:
        timeline = data.get("timeline", [])
        if len(timeline) > MAX_TIMELINE:
            data["timeline"] = timeline[-MAX_TIMELINE:]
        return seal(key, data)

    async def _keys(self, found: list[Entity[IncidentBody]]) -> dict[str, DataKey]:
        """The data keys of ``found`` that have one, by incident id (one store read)."""
        keys = await self._data_keys.existing([owner(e.id) for e in found])
        return {e.id: keys[owner(e.id)] for e in found if owner(e.id) in keys}

    async def summaries(self, found: list[Entity[IncidentBody]]) -> list[IncidentSummary]:
        keys = await self._keys(found)
        return [self._summary(e, keys.get(e.id)) for e in found]

    def _summary(self, e: Entity[IncidentBody], key: DataKey | None) -> IncidentSummary:
        data = self._open(e, key)
        return IncidentSummary(
            id=e.id,
            title=data["title"],
            severity=data["severity"],
            source=data["source"],
            status=e.body.status,
            created_at=e.created_at,
            updated_at=e.updated_at,
        )

    async def view(self, e: Entity[IncidentBody]) -> IncidentView:
        key = (await self._keys([e])).get(e.id)
        data = self._open(e, key)
        return IncidentView(
            **self._summary(e, key).model_dump(),
            timeline=[TimelineEntry(**t) for t in data.get("timeline", [])],
        )

    async def all(self, status: IncidentStatus | None = None) -> list[Entity[IncidentBody]]:
        found = await self.kind.list()
        return [e for e in found if status is None or e.body.status == status]

    async def get(self, incident_id: str) -> Entity[IncidentBody]:
        found = await self.kind.get(incident_id)
        if found is None:
            raise NotFound("not_found", f"no incident {incident_id!r}")
        return found

    def _entry(self, kind: EntryKind, text: str, actor: str | None) -> dict[str, Any]:
        return TimelineEntry(at=self._clock(), kind=kind, text=text, actor=actor).model_dump()

    async def on_alert(
        self,
        webhook_id: str,
        source: str,
        alert: Alert,
        delivery: str,
        *,
        audit: AuditOf[tuple[IncidentBody | None, Entity[IncidentBody]]] | None = None,
    ) -> tuple[Entity[IncidentBody], bool]:
        """Open the alert group's incident, or update it; (the incident, whether it opened:
        new, or firing again after it was resolved)."""
        group = hashlib.sha256(f"{webhook_id}\x1f{alert.group_key}".encode()).hexdigest()
        key = f"{webhook_id}/{group}"
        status: IncidentStatus = "open" if alert.firing else "resolved"
        what = f"{'firing' if alert.firing else 'resolved'}: {alert.count} alert(s), {delivery}"
        for _ in range(3):
            current = await self.kind.by_key(key)
            if current is None:
                incident_id = _new_incident_id()
                key_new = await self._data_keys.key(owner(incident_id), new=True)
                data = {
                    "title": alert.title,
                    "severity": alert.severity,
                    "source": source,
                    "timeline": [self._entry("delivery", what, source)],
                }
                body = IncidentBody(
                    key=key,
                    webhook_id=webhook_id,
                    status=status,
                    sealed=self._close(key_new, data),
                )
                inserted_audit = None if audit is None else _of_insert(audit)
                try:
                    made = await self.kind.insert(body, entity_id=incident_id, audit=inserted_audit)
                except Conflict:
                    # The group's first delivery raced another: update it instead; the key
                    # made for the incident that was not written goes.
                    await self._data_keys.forget(owner(incident_id))
                    continue
                return made, alert.firing
            # Made here for an incident sealed before data keys: re-sealed under it now.
            data_key = await self._data_keys.key(owner(current.id))
            opened = alert.firing and current.body.status == "resolved"

            def change(
                body: IncidentBody,
                current: Entity[IncidentBody] = current,
                key: DataKey = data_key,
            ) -> IncidentBody:
                data = self._open(Entity(current.id, body, 0, 0.0, 0.0), key)
                data["timeline"].append(self._entry("delivery", what, source))
                if alert.firing:
                    data["title"], data["severity"] = alert.title, alert.severity
                new_status: IncidentStatus = body.status
                if not alert.firing:
                    new_status = "resolved"
                elif body.status == "resolved":
                    new_status = "open"
                if new_status != body.status:
                    data["timeline"].append(self._entry("status", new_status, source))
                return body.model_copy(
                    update={"status": new_status, "sealed": self._close(key, data)}
                )

            try:
                before, after = await self.kind.update(current.id, change, audit=audit)
            except Gone:
                # Purged meanwhile: open it afresh. Its key goes too, in case it was made
                # here after the purge deleted the one it had.
                await self._data_keys.forget(owner(current.id))
                continue
            return after, opened and before.status == "resolved"
        raise Conflict("the incident kept changing; send the delivery again")

    async def change(
        self,
        incident_id: str,
        *,
        actor: str,
        status: IncidentStatus | None = None,
        note: str | None = None,
        run: str | None = None,
        audit: AuditOf[tuple[IncidentBody, Entity[IncidentBody]]] | None = None,
    ) -> Entity[IncidentBody]:
        """Acknowledge or resolve (``status``), add a note, or a run started for it."""
        await self.get(incident_id)
        key = await self._data_keys.key(owner(incident_id))

        def change(body: IncidentBody) -> IncidentBody:
            data = self._open(Entity(incident_id, body, 0, 0.0, 0.0), key)
            if note is not None:
                data["timeline"].append(self._entry("note", note, actor))
            if run is not None:
                data["timeline"].append(self._entry("run", run, actor))
            new_status = body.status if status is None else status
            if status is not None and status != body.status:
                data["timeline"].append(self._entry("status", status, actor))
            elif note is None and run is None:
                return body  # already in that status: nothing to write
            return body.model_copy(update={"status": new_status, "sealed": self._close(key, data)})

        try:
            _, after = await self.kind.update(incident_id, change, audit=audit)
        except Gone:
            await self._data_keys.forget(owner(incident_id))  # as in on_alert
            raise NotFound("not_found", f"no incident {incident_id!r}") from None
        return after

    # -- retention

    async def retention_days(self) -> int:
        found = await self._retention.get(_RETENTION_ID)
        return DEFAULT_RETENTION_DAYS if found is None else found.body.days

    async def set_retention(
        self,
        days: int,
        *,
        audit: AuditOf[tuple[RetentionBody | None, Entity[RetentionBody]]] | None = None,
    ) -> None:
        await self._retention.put(_RETENTION_ID, RetentionBody(days=days), audit=audit)

    async def purge(
        self,
        now: float,
        audit: Callable[[int], AuditOf[list[EntityRecord]]] | None = None,
        *,
        batch: int = PURGE_BATCH,
        max_batches: int = 100,
    ) -> int:
        """Delete incidents not updated for the retention's days, ``batch`` at a time, each
        batch in one transaction with its event (``audit``, given the retention days) and
        the deletion of their data keys (crypto-shredding: a backup's copy of their sealed
        bodies no longer opens once the key's backups age out); answers how many went.
        At most ``max_batches`` per call: the rest go next time."""
        days = await self.retention_days()
        before = now - days * 86400.0
        total = 0
        for _ in range(max_batches):
            gone = await self._store.purge_entities(
                self.kind.kind,
                before,
                batch,
                audit=None if audit is None else audit(days),
                key_owner="incident",
            )
            for e in gone:
                self._data_keys.drop_cached(owner(e.id))
            total += len(gone)
            if len(gone) < batch:
                break
        return total


def _new_incident_id() -> str:
    return new_id("inc")


def _of_insert(
    audit: AuditOf[tuple[IncidentBody | None, Entity[IncidentBody]]],
) -> AuditOf[Entity[IncidentBody]]:
    return lambda written: audit((None, written))

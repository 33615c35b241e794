"""Freeze windows: kept as entities, judged by :mod:`manager.core.freeze`, and the check that
task submission (and runbook starts) call before anything is queued.

A window names its places by id (resolved from names when it is made), so renaming an
application does not thaw it. The check refuses with 409 ``frozen``, naming the window and
when it ends; a principal holding ``override_freeze`` may proceed by giving a reason, which
the caller writes into the audit event of what it then does (in that change's transaction).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from manager.access.directory import Directory
from manager.access.entities import Entity, EntityKind
from manager.core.audit_chain import AuditOf
from manager.core.freeze import (
    FreezeScope,
    FreezeWindow,
    Schedule,
    ScheduleError,
    active_end,
    check_schedule,
    freezing,
)
from manager.core.rbac import Grants
from manager.errors import Conflicting, Forbidden, Invalid, NotFound
from manager.schemas.freezes import FreezeCreate, FreezeView
from manager.schemas.grants import EnvType, Target
from manager.store.base import Conflict, Store

__all__ = ["FreezeBody", "FreezeOverride", "Freezes", "check_freeze", "when"]

MAX_OVERRIDE_REASON = 500


class FreezeBody(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    name: str
    description: str = ""
    start: float | None = None
    end: float | None = None
    cron: str | None = None
    rrule: str | None = None
    timezone: str = "UTC"
    duration_s: float = 0.0
    dtstart: str | None = None
    not_before: float | None = None
    until: float | None = None
    apps: list[str] = Field(default_factory=list)
    envs: list[str] = Field(default_factory=list)
    env_types: list[EnvType] = Field(default_factory=list)
    created_by: str | None = None

    def schedule(self) -> Schedule:
        return Schedule(
            start=self.start,
            end=self.end,
            cron=self.cron,
            rrule=self.rrule,
            timezone=self.timezone,
            duration_s=self.duration_s,
            dtstart=self.dtstart,
            not_before=self.not_before,
            until=self.until,
        )


def when(epoch: float) -> str:
    """An instant as users read it in a message: UTC, to the minute."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True, slots=True)
class FreezeOverride:
    """Windows a principal proceeded through, and why: for the audit event of the change."""

    windows: tuple[str, ...]
    reason: str

    def audit(self) -> dict[str, object]:
        return {"windows": list(self.windows), "reason": self.reason}


class Freezes:
    def __init__(
        self, store: Store, directory: Directory, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.kind = EntityKind(store, "freeze", FreezeBody, lambda b: b.name, "frz")
        self._directory = directory
        self._clock = clock

    def view(self, e: Entity[FreezeBody], now: float | None = None) -> FreezeView:
        b = e.body
        try:
            active = active_end(b.schedule(), self._clock() if now is None else now)
        except ScheduleError:
            active = None
        return FreezeView(
            id=e.id,
            created_at=e.created_at,
            active_until=active,
            **b.model_dump(),
        )

    async def all(self) -> list[Entity[FreezeBody]]:
        return await self.kind.list()

    async def get(self, name: str) -> Entity[FreezeBody]:
        found = await self.kind.by_key(name) or await self.kind.get(name)
        if found is None:
            raise NotFound("not_found", f"no freeze window {name!r}")
        return found

    async def create(
        self,
        req: FreezeCreate,
        actor: str | None,
        *,
        audit: AuditOf[Entity[FreezeBody]] | None = None,
    ) -> Entity[FreezeBody]:
        fields = req.model_dump(exclude={"apps", "envs"})
        body = FreezeBody(**fields, created_by=actor)
        try:
            check_schedule(body.schedule())
        except ScheduleError as exc:
            raise Invalid("invalid", str(exc)) from None
        body.apps = [await self._app_id(a) for a in req.apps]
        body.envs = [await self._env_id(e, body.apps) for e in req.envs]
        try:
            return await self.kind.insert(body, audit=audit)
        except Conflict:
            raise Conflicting("conflict", f"a freeze window named {req.name!r} exists") from None

    async def _app_id(self, name: str) -> str:
        found = await self._directory.apps.get(name) or await self._directory.apps.by_key(name)
        if found is None:
            raise Invalid("invalid", f"no application {name!r}", field="apps")
        return found.id

    async def _env_id(self, name: str, apps: list[str]) -> str:
        """An environment id, or ``app/env`` by names (or an env name of the one app given)."""
        found = await self._directory.envs.get(name)
        if found is None and "/" in name:
            app, _, env = name.partition("/")
            target = await self._directory.target(app, env)
            found = None if target is None else await self._directory.envs.get(target.env_id)
        if found is None and len(apps) == 1:
            found = await self._directory.envs.by_key(f"{apps[0]}/{name}")
        if found is None:
            raise Invalid(
                "invalid", f"no environment {name!r} (give an id, or app/env)", field="envs"
            )
        return found.id

    async def delete(self, name: str, *, audit: AuditOf[Entity[FreezeBody]] | None = None) -> None:
        found = await self.get(name)
        if not await self.kind.delete(found.id, audit=audit):
            raise NotFound("not_found", f"no freeze window {name!r}")

    async def windows(self) -> list[FreezeWindow]:
        return [
            FreezeWindow(
                e.id,
                e.body.name,
                e.body.schedule(),
                FreezeScope(tuple(e.body.apps), tuple(e.body.envs), tuple(e.body.env_types)),
            )
            for e in await self.all()
        ]


async def check_freeze(
    freezes: Freezes,
    target: Target | None,
    grants: Grants,
    *,
    override_reason: str | None,
    now: float,
) -> FreezeOverride | None:
    """Nothing when no window freezes ``target`` now (None: outside any application).
    Frozen: Conflicting ``frozen`` naming the window and when it ends, unless ``grants`` hold
    ``override_freeze`` and a reason is given (Forbidden if a reason comes without it); the
    answer is then what the caller records in its audit event."""
    active = freezing(
        await freezes.windows(),
        now,
        app_id=None if target is None else target.app_id,
        env_id=None if target is None else target.env_id,
        env_type=None if target is None else target.env_type,
    )
    if not active:
        return None
    window, end = active[0]
    reason = (override_reason or "").strip()
    if not reason:
        others = f" (and {len(active) - 1} more)" if len(active) > 1 else ""
        raise Conflicting(
            "frozen",
            f"frozen by freeze window {window.name!r}{others} until {when(end)}; wait for it"
            " to end, or, with the override_freeze permission, give a reason to override",
        )
    if not grants.has("override_freeze"):
        raise Forbidden(
            "forbidden", f"overriding freeze window {window.name!r} needs override_freeze"
        )
    if len(reason) > MAX_OVERRIDE_REASON:
        raise Invalid("invalid", f"the override reason is longer than {MAX_OVERRIDE_REASON}")
    return FreezeOverride(tuple(w.name for w, _ in active), reason)

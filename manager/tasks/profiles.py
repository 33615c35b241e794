"""Delegate profiles: a startup script for every delegate whose selectors match.

A profile run is an ordinary task pinned to one delegate (by its id), so its output reaches
the manager as any task's does. It runs when a delegate process starts (a registration with
a new instance id) and again on every live matching delegate when the script changes. The
idempotency key names the profile, the script's hash, the delegate and the instance, so a
reconnect, a second replica or a restarted manager never runs the same script twice.

Secrets in profile scripts: only those scoped to the account, or with no usage scope
(manager.secrets.scope); a profile run's ``submitted_by`` is ``profile:<name>`` so delivery
can tell it from a user's task.
"""

from __future__ import annotations

import hashlib
import time

import structlog

from manager.core.audit_chain import AuditOf
from manager.core.eligibility import NOTHING, DelegateScope
from manager.errors import NotFound
from manager.records import DelegateRecord, ProfileRecord
from manager.schemas.tasks import TaskSubmit
from manager.store.base import Store
from manager.tasks.hub import Hub
from manager.tasks.service import TaskService
from shared.protocol import ShellPayload

__all__ = ["Profiles", "matches", "script_hash"]

log = structlog.get_logger("tether.profiles")

PROFILE_ACTOR = "profile:"


def script_hash(profile: ProfileRecord) -> str:
    return hashlib.sha256(f"{profile.interpreter}\0{profile.script}".encode()).hexdigest()[:16]


def matches(profile: ProfileRecord, delegate: DelegateRecord, scope: DelegateScope) -> bool:
    """Whether ``profile`` runs on ``delegate``: every selector of the profile among the
    delegate's, or its name when ``scope`` (its token's) lets it claim that selector. The
    delegate picks its own name: as the hand-out's rule (manager.core.eligibility), a
    narrowed token's delegate named after a label must not take a profile (and its
    account-scoped secrets) meant for the delegates that carry the label."""
    offered = set(delegate.selectors)
    if scope.selectors is None or delegate.name in scope.selectors:
        offered.add(delegate.name)
    return all(s in offered for s in profile.selectors)


class Profiles:
    def __init__(self, store: Store, tasks: TaskService, hub: Hub, *, lost_after: float) -> None:
        self._store = store
        self._tasks = tasks
        self._hub = hub
        self._lost_after = lost_after

    async def all(self) -> list[ProfileRecord]:
        return await self._store.list_profiles()

    async def find(self, name: str) -> ProfileRecord | None:
        return next((p for p in await self._store.list_profiles() if p.name == name), None)

    async def put(
        self, profile: ProfileRecord, *, audit: AuditOf[ProfileRecord] | None = None
    ) -> int:
        """Store ``profile`` (``audit``: its event, of the row written, in the same
        transaction) and run it where it now applies; returns on how many delegates."""
        await self._store.put_profile(profile, audit=audit)
        return await self.on_change(profile)

    async def delete(self, name: str, *, audit: AuditOf[ProfileRecord] | None = None) -> None:
        """``audit``: its event, of the row deleted, in the same transaction."""
        if not await self._store.delete_profile(name, audit=audit):
            raise NotFound("not_found", f"no profile {name!r}")

    async def on_register(
        self, delegate: DelegateRecord, instance: str, scope: DelegateScope
    ) -> None:
        """``scope``: the scope of the token it registered with."""
        for profile in await self._store.list_profiles():
            if matches(profile, delegate, scope):
                await self._run(profile, delegate, f"start-{instance}")

    async def on_change(self, profile: ProfileRecord) -> int:
        """Run the new script on every live delegate it matches; returns how many."""
        live = set(self._hub.sessions) | set(
            await self._store.presence(time.time() - self._lost_after)
        )
        # A delegate whose token is gone matches by its selectors alone.
        scopes = {t.id: DelegateScope.load(t.scope) for t in await self._store.list_tokens()}
        count = 0
        for delegate in await self._store.list_delegates():
            scope = scopes.get(delegate.token_id, NOTHING)
            if delegate.id in live and matches(profile, delegate, scope):
                await self._run(profile, delegate, "changed")
                count += 1
        return count

    async def _run(self, profile: ProfileRecord, delegate: DelegateRecord, why: str) -> None:
        key = f"profile:{profile.name}:{script_hash(profile)}:{delegate.id}:{why}"[:256]
        req = TaskSubmit(
            payload=ShellPayload(script=profile.script, interpreter=profile.interpreter),
            selectors=[delegate.id],
            idempotency_key=key,
        )
        # Marked as a profile run: its secrets are judged by the profile rule (account scope).
        task, created = await self._tasks.submit(req, submitted_by=f"{PROFILE_ACTOR}{profile.name}")
        if created:
            log.info("profile run", profile=profile.name, delegate_id=delegate.id, task_id=task.id)

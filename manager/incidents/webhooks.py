"""Incoming webhooks: their definitions, their secrets, and what an accepted delivery does.

A webhook's secret (the HMAC key, or the bearer token) is a builtin secret named
``webhooks.<id>``, sealed like any other (manager.secrets) and scoped to no place, so no task
can ask for it; it is shown once, when made or rotated.

A delivery (:meth:`Webhooks.deliver`) is judged in this order, and the first refusal ends it:
the signature or token (:mod:`manager.core.hooksig`), the delivery id (a replay within
:data:`DELIVERY_TTL_S` is dropped: the id is stored with the delivery's time and purged
after), the JSON, the mapping (:mod:`manager.core.hookmap`). A refusal is counted by its
reason on the webhook (never with the body), and starts nothing. An accepted Alertmanager
delivery opens or updates the incident of its alert group (manager.incidents.incidents); a
runbook, when the webhook names one, starts for a generic delivery, or when an incident
opens, acting with the permissions of the webhook's groups.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field

from manager.access.directory import Directory, GroupBody
from manager.access.entities import Entity, EntityKind, Gone
from manager.access.principal import Principal
from manager.core.audit_chain import AuditOf
from manager.core.hookmap import MappingError, check_path, map_inputs
from manager.core.hooksig import HookAuth, verify
from manager.core.identity import Actor
from manager.errors import Conflicting, DomainError, Invalid, NotFound, Unauthenticated
from manager.incidents.incidents import IncidentBody, Incidents, alert_of
from manager.records import EntityRecord, SecretRecord
from manager.schemas.incidents import DeliveryAccepted, WebhookCreate, WebhookView
from manager.schemas.secrets import ScopeTarget, SecretCreate, SecretUpdate
from manager.secrets.scope import UsageScope
from manager.secrets.service import SecretService
from manager.store.base import Conflict, Store, StoreError

__all__ = [
    "DELIVERY_TTL_S",
    "MAX_DELIVERY_BYTES",
    "Refused",
    "RunStarter",
    "WebhookBody",
    "Webhooks",
]

log = structlog.get_logger("tether.webhooks")

# The largest body a delivery may have (Alertmanager's grouped alerts fit many times over).
MAX_DELIVERY_BYTES = 256 * 1024
# How long a delivery id is remembered to drop replays: longer than the signed timestamp's
# window, and than the retries of the senders we know.
DELIVERY_TTL_S = 24 * 3600.0
# A secret nobody's task may use: one target that covers no place (and so no profile).
_NOWHERE = UsageScope(targets=[ScopeTarget(apps=[], envs=[])])


class RunStarter(Protocol):
    """manager.runbooks.service.start_run, bound to its context by the server's wiring."""

    def __call__(
        self,
        runbook: str,
        inputs: Mapping[str, str],
        principal: Principal,
        *,
        trigger: str,
        incident_id: str | None = None,
    ) -> Awaitable[str]: ...


class WebhookBody(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    name: str
    description: str = ""
    auth: HookAuth
    kind: Literal["generic", "alertmanager"]
    runbook: str | None = None
    mapping: dict[str, str] = Field(default_factory=dict)
    groups: list[str] = Field(default_factory=list)
    secret_name: str
    created_by: str | None = None


class StatsBody(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    webhook_id: str
    accepted: int = 0
    rejected: dict[str, int] = Field(default_factory=dict)


class DeliveryBody(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    webhook_id: str
    delivery_id: str


class Refused(Exception):
    """A delivery refused: the error to answer with, already counted."""

    def __init__(self, error: DomainError) -> None:
        super().__init__(str(error))
        self.error = error


IncidentAudit = AuditOf[tuple[IncidentBody | None, Entity[IncidentBody]]]


class Webhooks:
    def __init__(
        self,
        store: Store,
        secret_service: SecretService,
        directory: Directory,
        incidents: Incidents,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kind = EntityKind(store, "webhook", WebhookBody, lambda b: b.name, "whk")
        self._stats = EntityKind(store, "webhook_stats", StatsBody, lambda b: b.webhook_id, "whs")
        self._deliveries = EntityKind(
            store, "hook_delivery", DeliveryBody, lambda b: f"{b.webhook_id}/{b.delivery_id}", "dlv"
        )
        self._store = store
        self._secrets = secret_service
        self._directory = directory
        self.incidents = incidents
        self._clock = clock
        # Set by the server's wiring once runbooks exist; None: a webhook cannot name one.
        self.starter: RunStarter | None = None
        # Whether a runbook takes the mapped inputs (Invalid if not); set with the starter.
        self.check_runbook: Callable[[str, Iterable[str]], Awaitable[None]] | None = None

    # -- definitions ------------------------------------------------------------------

    async def view(self, e: Entity[WebhookBody]) -> WebhookView:
        stats = await self._stats.get(_stats_id(e.id))
        return WebhookView(
            id=e.id,
            path=f"/hooks/{e.id}",
            created_at=e.created_at,
            accepted=0 if stats is None else stats.body.accepted,
            rejected={} if stats is None else dict(stats.body.rejected),
            **e.body.model_dump(),
        )

    async def all(self) -> list[Entity[WebhookBody]]:
        return await self.kind.list()

    async def get(self, name: str) -> Entity[WebhookBody]:
        found = await self.kind.by_key(name) or await self.kind.get(name)
        if found is None:
            raise NotFound("not_found", f"no webhook {name!r}")
        return found

    async def groups_named(self, names: list[str]) -> list[Entity[GroupBody]]:
        """The groups a webhook acts with; Invalid naming one that does not exist."""
        by_name = {g.body.name: g for g in await self._directory.groups.list()}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise Invalid("invalid", f"no group {missing[0]!r}", field="groups")
        return [by_name[n] for n in names]

    async def create(
        self,
        req: WebhookCreate,
        actor: str | None,
        *,
        audit: AuditOf[Entity[WebhookBody]] | None = None,
    ) -> tuple[Entity[WebhookBody], str]:
        """The webhook and its secret (answered once, never stored in the clear). ``audit``:
        the webhook's event, which stands for the secret's too (one request, one event)."""
        if req.runbook is not None and self.starter is None:
            raise Invalid("invalid", "runbooks are not available on this manager", field="runbook")
        for name, path in req.mapping.items():
            try:
                check_path(path)
            except MappingError as exc:
                raise Invalid("invalid", f"mapping {name!r}: {exc}", field="mapping") from None
        if req.runbook is not None and self.check_runbook is not None:
            await self.check_runbook(req.runbook, req.mapping.keys())
        if await self.kind.by_key(req.name) is not None:
            raise Conflicting("conflict", f"a webhook named {req.name!r} exists")
        webhook_id = _new_webhook_id()
        value = secrets.token_urlsafe(32)
        secret_name = f"webhooks.{webhook_id}"
        await self._secrets.create_secret(
            SecretCreate(
                name=secret_name, value=value, description=f"the secret of webhook {req.name}"
            ),
            actor,
            scope=_NOWHERE,
        )
        body = WebhookBody(**req.model_dump(), secret_name=secret_name, created_by=actor)
        try:
            made = await self.kind.insert(body, entity_id=webhook_id, audit=audit)
        except BaseException as exc:
            # Not stored (taken meanwhile, or its event could not be written): nor is its
            # secret, so a failed create leaves nothing behind.
            with contextlib.suppress(Exception):
                await self._secrets.delete_secret(secret_name)
            if isinstance(exc, Conflict):
                raise Conflicting("conflict", f"a webhook named {req.name!r} exists") from None
            raise
        return made, value

    async def rotate(
        self, name: str, actor: str | None, *, audit: AuditOf[SecretRecord] | None = None
    ) -> tuple[Entity[WebhookBody], str]:
        found = await self.get(name)
        value = secrets.token_urlsafe(32)
        await self._secrets.update_secret(
            found.body.secret_name, SecretUpdate(value=value), actor, audit=audit
        )
        return found, value

    async def delete(
        self,
        name: str,
        *,
        audit: AuditOf[Entity[WebhookBody]] | None = None,
    ) -> Entity[WebhookBody]:
        """The webhook (``audit``: its event, naming its secret), then its secret and its
        counts."""
        found = await self.get(name)
        if not await self.kind.delete(found.id, audit=audit):
            raise NotFound("not_found", f"no webhook {name!r}")
        try:
            await self._secrets.delete_secret(found.body.secret_name)
        except DomainError:
            log.warning("webhook secret already gone", webhook=found.id)
        await self._stats.delete(_stats_id(found.id))
        return found

    # -- deliveries -------------------------------------------------------------------

    async def _count(self, webhook_id: str, reason: str | None) -> None:
        """Count a delivery, accepted (None) or refused for ``reason``. Best effort: a lost
        count must not turn an answer into a 503."""

        def bump(s: StatsBody) -> StatsBody:
            if reason is None:
                s.accepted += 1
            else:
                s.rejected[reason] = s.rejected.get(reason, 0) + 1
            return s

        try:
            try:
                await self._stats.update(_stats_id(webhook_id), bump)
            except Gone:
                with contextlib.suppress(Conflict):
                    await self._stats.insert(
                        bump(StatsBody(webhook_id=webhook_id)), entity_id=_stats_id(webhook_id)
                    )
        except StoreError:
            log.warning("webhook delivery not counted", webhook=webhook_id, reason=reason)

    async def count_refusal(self, webhook_id: str, reason: str) -> None:
        """Count a delivery refused before it was judged (too large) on its webhook."""
        if await self.kind.get(webhook_id) is not None:
            await self._count(webhook_id, reason)

    async def _refuse(self, webhook_id: str, reason: str, error: DomainError) -> Refused:
        log.info("webhook delivery refused", webhook=webhook_id, reason=reason)
        await self._count(webhook_id, reason)
        return Refused(error)

    async def deliver(
        self,
        webhook_id: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        incident_audit: Callable[[Entity[WebhookBody]], IncidentAudit] | None = None,
    ) -> DeliveryAccepted:
        """Judge and act on one delivery; :class:`Refused` carries the error to answer."""
        hook = await self.kind.get(webhook_id)
        if hook is None:
            # Not counted: nothing to count it on, and unknown ids must not grow the store.
            raise Refused(NotFound("not_found", "no such webhook"))
        try:
            secret = await self._secrets.builtin_value(hook.body.secret_name)
        except ValueError:
            raise await self._refuse(
                hook.id, "secret unavailable", Unauthenticated("unauthenticated", "no secret")
            ) from None
        verdict = verify(hook.body.auth, secret, headers, body, self._clock())
        if verdict.reason is not None:
            raise await self._refuse(
                hook.id,
                verdict.reason,
                Unauthenticated("unauthenticated", f"delivery refused: {verdict.reason}"),
            )
        if verdict.delivery_id is not None:
            try:
                await self._deliveries.insert(
                    DeliveryBody(webhook_id=hook.id, delivery_id=verdict.delivery_id)
                )
            except Conflict:
                raise await self._refuse(
                    hook.id,
                    "replay",
                    Conflicting("replay", "delivery refused: this delivery id was seen before"),
                ) from None
        try:
            payload: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise await self._refuse(
                hook.id, "not JSON", Invalid("invalid", "delivery refused: the body is not JSON")
            ) from None
        try:
            inputs = map_inputs(payload, hook.body.mapping)
        except MappingError as exc:
            raise await self._refuse(
                hook.id, "mapping", Invalid("invalid", f"delivery refused: {exc}")
            ) from None
        answer = DeliveryAccepted(webhook=hook.body.name, delivery_id=verdict.delivery_id)
        start = hook.body.runbook is not None
        if hook.body.kind == "alertmanager":
            try:
                alert = alert_of(payload)
            except Invalid as exc:
                raise await self._refuse(hook.id, "not an alert", exc) from None
            incident, opened = await self.incidents.on_alert(
                hook.id,
                hook.body.name,
                alert,
                verdict.delivery_id or "delivery",
                audit=None if incident_audit is None else incident_audit(hook),
            )
            answer.incident_id = incident.id
            start = start and opened
        if start:
            answer.run_id = await self._start(hook, inputs, answer.incident_id)
        await self._count(hook.id, None)
        log.info(
            "webhook delivery accepted",
            webhook=hook.body.name,
            delivery_id=answer.delivery_id,
            incident_id=answer.incident_id,
            run_id=answer.run_id,
        )
        return answer

    async def _start(
        self, hook: Entity[WebhookBody], inputs: dict[str, str], incident_id: str | None
    ) -> str | None:
        starter, runbook = self.starter, hook.body.runbook
        if starter is None or runbook is None:
            return None
        grants = await self._directory.grants_of_groups(names=hook.body.groups)
        actor = Actor("system", f"webhook:{hook.id}", f"webhook {hook.body.name}")
        try:
            run_id = await starter(
                runbook,
                inputs,
                Principal(actor, grants),
                trigger=f"webhook:{hook.body.name}",
                incident_id=incident_id,
            )
        except DomainError as exc:
            if incident_id is not None:
                with contextlib.suppress(NotFound):
                    await self.incidents.change(
                        incident_id,
                        actor=f"webhook {hook.body.name}",
                        note=f"runbook {runbook} refused: {exc.message}",
                    )
            raise await self._refuse(hook.id, "run refused", exc) from None
        if incident_id is not None:
            with contextlib.suppress(NotFound):
                await self.incidents.change(
                    incident_id,
                    actor=f"webhook {hook.body.name}",
                    run=f"runbook {runbook}: {run_id}",
                )
        return run_id

    async def purge_deliveries(self, now: float, *, batch: int = 500) -> int:
        """Forget delivery ids older than :data:`DELIVERY_TTL_S`, ``batch`` at a time."""
        total = 0
        for _ in range(100):
            gone: list[EntityRecord] = await self._store.purge_entities(
                self._deliveries.kind, now - DELIVERY_TTL_S, batch
            )
            total += len(gone)
            if len(gone) < batch:
                break
        return total


def _stats_id(webhook_id: str) -> str:
    return f"{webhook_id}.stats"


def _new_webhook_id() -> str:
    # The id is the URL: long enough that it cannot be guessed (the signature is the guard,
    # and an unguessable id keeps blind traffic from being counted against a webhook).
    return "whk_" + secrets.token_urlsafe(16)

"""Secret usage scopes: where a secret (or every secret of a manager) may be used.

A scope is "the account" (delegate profiles), and/or a list of targets, each some
applications and some of their environments (all, a type, or a list). Following Harness:

- a secret without a scope of its own has its manager's; a manager without one is unrestricted
  (the account and every application and environment);
- a secret's own scope must lie within its manager's;
- a task may use a secret whose scope covers the task's application and environment (a task
  outside any application: a scope covering every one), and only if the submitter's groups hold
  create, read and update there;
- delegate profiles may use a secret scoped to the account, or with an empty scope (no usage
  scope at all); one scoped to applications only serves those applications.

Scopes are stored as entities (``secret_scope`` keyed by secret id, ``manager_scope`` keyed by
manager id) holding ids; the API speaks in names (:class:`ScopeSpec`) and this module converts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from manager.access.directory import Directory
from manager.access.entities import EntityKind
from manager.access.places import Places, places
from manager.core.audit_chain import AuditOf
from manager.errors import Invalid
from manager.schemas.grants import Target
from manager.schemas.secrets import EnvChoice, ScopeSpec, ScopeTarget
from manager.store.base import EntityWrite, Store

__all__ = ["UNRESTRICTED", "Scopes", "UsageScope"]


class UsageScope(ScopeSpec):
    """Stored: application and environment ids (the API's :class:`ScopeSpec` holds names)."""

    def covers(self, t: Target | None) -> bool:
        if t is None:
            return any(x.universal for x in self.targets)
        return any(x.covers(t) for x in self.targets)

    @property
    def serves_profiles(self) -> bool:
        return self.account or not self.targets

    def within(self, outer: UsageScope, where: Places) -> bool:
        """Every environment this scope covers, ``outer`` covers too (and the account)."""
        if self.account and not outer.account:
            return False
        if any(x.universal for x in self.targets) and not any(x.universal for x in outer.targets):
            return False
        return all(outer.covers(t) for t in _targets(self, where))


UNRESTRICTED = UsageScope(account=True, targets=[ScopeTarget()])


class _Stored(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")
    owner_id: str
    scope: UsageScope


def _targets(scope: UsageScope, where: Places) -> list[Target]:
    return [
        t
        for env_id, (app_id, _name, env_type) in where.envs.items()
        if (t := Target(app_id, env_id, env_type)) and scope.covers(t)
    ]


class Scopes:
    def __init__(self, store: Store) -> None:
        self.directory = Directory(store)
        self._secrets = EntityKind(store, "secret_scope", _Stored, lambda b: b.owner_id, "ssc")
        self._managers = EntityKind(store, "manager_scope", _Stored, lambda b: b.owner_id, "msc")

    async def places(self) -> Places:
        return await places(self.directory)

    # -- reading

    async def of_manager(self, manager_id: str) -> UsageScope | None:
        found = await self._managers.get(manager_id)
        return None if found is None else found.body.scope

    async def of_secret(self, secret_id: str) -> UsageScope | None:
        found = await self._secrets.get(secret_id)
        return None if found is None else found.body.scope

    async def effective(self, secret_id: str, manager_id: str) -> UsageScope:
        return await self.of_secret(secret_id) or await self.of_manager(manager_id) or UNRESTRICTED

    # -- writing

    async def set_manager(
        self,
        manager_id: str,
        scope: UsageScope | None,
        *,
        audit: AuditOf[UsageScope | None] | None = None,
    ) -> None:
        """``audit``: as :func:`_put`'s."""
        await _put(self._managers, manager_id, scope, audit)

    async def set_secret(
        self,
        secret_id: str,
        scope: UsageScope | None,
        *,
        audit: AuditOf[UsageScope | None] | None = None,
    ) -> None:
        """``audit``: as :func:`_put`'s."""
        await _put(self._secrets, secret_id, scope, audit)

    # -- writes that go with a secret's or a manager's own (in its transaction)

    def made_for_secret(self, secret_id: str, scope: UsageScope | None) -> list[EntityWrite]:
        """The scope of a secret being created."""
        return _made(self._secrets, secret_id, scope)

    def made_for_manager(self, manager_id: str, scope: UsageScope | None) -> list[EntityWrite]:
        """The scope of a secret manager being created."""
        return _made(self._managers, manager_id, scope)

    async def gone_with_secret(self, secret_id: str) -> list[EntityWrite]:
        """The scope of a secret being deleted."""
        return await _gone(self._secrets, secret_id)

    async def gone_with_manager(self, manager_id: str) -> list[EntityWrite]:
        """The scope of a secret manager being deleted."""
        return await _gone(self._managers, manager_id)

    # -- names <-> ids

    @staticmethod
    def resolve(spec: ScopeSpec, where: Places) -> UsageScope:
        """Names to ids; 400 naming what does not exist."""
        targets: list[ScopeTarget] = []
        for i, x in enumerate(spec.targets):
            apps: Literal["all"] | list[str] = "all"
            if x.apps != "all":
                apps = [_app_id(where, name, f"scope.targets.{i}.apps") for name in x.apps]
            envs: EnvChoice = x.envs
            if isinstance(x.envs, list):
                within = where.apps.keys() if apps == "all" else apps
                envs = [_env_id(where, within, n, f"scope.targets.{i}.envs") for n in x.envs]
            targets.append(ScopeTarget(apps=apps, envs=envs))
        return UsageScope(account=spec.account, targets=targets)

    @staticmethod
    def describe(scope: UsageScope | None, where: Places) -> ScopeSpec | None:
        if scope is None:
            return None
        targets = []
        for x in scope.targets:
            apps = x.apps if x.apps == "all" else [where.apps.get(a, a) for a in x.apps]
            envs = x.envs
            if isinstance(x.envs, list):
                envs = [where.envs[e][1] if e in where.envs else e for e in x.envs]
            targets.append(ScopeTarget(apps=apps, envs=envs))
        return ScopeSpec(account=scope.account, targets=targets)


async def _put(
    kind: EntityKind[_Stored],
    owner_id: str,
    scope: UsageScope | None,
    audit: AuditOf[UsageScope | None] | None,
) -> None:
    """Set (or, None, clear) the scope of ``owner_id``. ``audit``: the event of the scope as
    written (None: cleared), chained in the write's transaction; none when it was already
    so, as nothing is written."""
    if scope is None:
        await kind.delete(owner_id, audit=None if audit is None else lambda _gone: audit(None))
        return
    body = _Stored(owner_id=owner_id, scope=scope)
    await kind.put(
        owner_id, body, audit=None if audit is None else lambda w: audit(w[1].body.scope)
    )


def _made(kind: EntityKind[_Stored], owner_id: str, scope: UsageScope | None) -> list[EntityWrite]:
    if scope is None:
        return []
    return [kind.inserted(_Stored(owner_id=owner_id, scope=scope), entity_id=owner_id)]


async def _gone(kind: EntityKind[_Stored], owner_id: str) -> list[EntityWrite]:
    found = await kind.get(owner_id)
    return [] if found is None else [kind.deleted(found, any_version=True)]


def _app_id(where: Places, name: str, field: str) -> str:
    found = next((i for i, n in where.apps.items() if name in (i, n)), None)
    if found is None:
        raise Invalid("invalid", f"no application {name!r}", field=field)
    return found


def _env_id(where: Places, apps: Iterable[str], name: str, field: str) -> str:
    allowed = set(apps)
    found = next(
        (i for i, (a, n, _) in where.envs.items() if a in allowed and name in (i, n)), None
    )
    if found is None:
        raise Invalid("invalid", f"no environment {name!r} in the scope's apps", field=field)
    return found

"""Delegate tokens and API keys: random, shown once, stored only as hashes."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from manager.access.directory import Directory
from manager.access.places import Places, places
from manager.core.audit_chain import AuditOf
from manager.core.eligibility import ACCOUNT_WIDE, DelegateScope
from manager.errors import Conflicting, Forbidden, Invalid
from manager.records import ApiKeyRecord, TokenRecord
from manager.schemas.grants import EnvType
from manager.schemas.tasks import TokenScopeView
from manager.store.base import Conflict, Store
from shared.ids import hash_secret, new_id, new_token

__all__ = [
    "ADMIN_BURST",
    "ADMIN_MAX_QPS",
    "ApiKeyInUse",
    "ScopeError",
    "TokenInUse",
    "Tokens",
    "create_api_key",
    "create_token",
    "resolve_scope",
    "scope_view",
]

# The admin key made at first start drives the CLI, scripts, the demo and the benchmarks,
# which send far more than one request a second: it gets a limit no person reaches, so it
# still has one (a runaway script cannot starve the manager), just not the account default.
ADMIN_MAX_QPS = 10000.0
ADMIN_BURST = 10000
# The visible part of a key, shown in listings: "tak_" and four characters of the random part.
_PREFIX_LEN = 8


class TokenInUse(Exception):
    pass


class ApiKeyInUse(Exception):
    pass


class ScopeError(ValueError):
    """A scope names an application or environment that does not exist."""


async def resolve_scope(
    store: Store,
    scope: Iterable[str],
    env_types: Iterable[EnvType] = (),
    selectors: Iterable[str] | None = None,
) -> DelegateScope:
    """A token scope from names: each of ``scope`` is "APP" (all of its environments) or
    "APP/ENV"."""
    directory = Directory(store)
    apps: set[str] = set()
    envs: set[str] = set()
    for item in scope:
        app, sep, env = item.partition("/")
        if sep:
            target = await directory.target(app, env)
            if target is None:
                raise ScopeError(f"scope: no environment {env!r} in application {app!r}")
            envs.add(target.env_id)
        else:
            found = await directory.apps.by_key(app)
            if found is None:
                raise ScopeError(f"scope: no application {app!r}")
            apps.add(found.id)
    return DelegateScope(
        apps=frozenset(apps),
        envs=frozenset(envs),
        env_types=frozenset(env_types),
        selectors=None if selectors is None else frozenset(selectors),
    )


def scope_view(scope: DelegateScope, where: Places) -> TokenScopeView:
    """A scope in names (an application or environment deleted since shows its id)."""

    def env_name(env_id: str) -> str:
        found = where.envs.get(env_id)
        if found is None:
            return env_id
        return f"{where.apps.get(found[0], found[0])}/{found[1]}"

    return TokenScopeView(
        account_wide=scope.account_wide,
        apps=sorted(where.apps.get(a, a) for a in scope.apps),
        envs=sorted(env_name(e) for e in scope.envs),
        env_types=sorted(scope.env_types),
        selectors=None if scope.selectors is None else sorted(scope.selectors),
    )


async def scope_views(store: Store) -> tuple[Places, dict[str, TokenScopeView]]:
    """Every token's scope in names, by token id (one read of the places)."""
    where = await places(Directory(store))
    views = {
        t.id: scope_view(DelegateScope.load(t.scope), where) for t in await store.list_tokens()
    }
    return where, views


async def create_token(
    store: Store,
    name: str,
    scope: DelegateScope = ACCOUNT_WIDE,
    *,
    audit: AuditOf[TokenRecord] | None = None,
) -> tuple[TokenRecord, str]:
    token = new_token("tdt")
    record = TokenRecord(
        id=new_id("tok"),
        name=name,
        token_hash=hash_secret(token),
        created_at=time.time(),
        scope=scope.dump(),
    )
    try:
        await store.create_token(record, audit=audit)
    except Conflict:
        raise TokenInUse(f"a live token named {name!r} exists; revoke it first") from None
    return record, token


async def create_api_key(
    store: Store,
    name: str,
    *,
    owner: str = "",
    owner_user_id: str | None = None,
    service_account: bool = False,
    groups: Sequence[str] = (),
    max_qps: float | None = None,
    burst: int | None = None,
    expires_at: float | None = None,
    now: float | None = None,
    created_by: str | None = None,
    audit: AuditOf[ApiKeyRecord] | None = None,
) -> tuple[ApiKeyRecord, str]:
    """A new key and its one showing. ``max_qps`` and ``burst`` default to the account's
    settings (:meth:`Store.access_settings`). ``audit``: its event, chained with it."""
    if max_qps is None or burst is None:
        defaults = await store.access_settings()
        max_qps = defaults.api_key_max_qps if max_qps is None else max_qps
        burst = defaults.api_key_burst if burst is None else burst
    key = new_token("tak")
    record = ApiKeyRecord(
        id=new_id("key"),
        name=name,
        prefix=key[:_PREFIX_LEN],
        key_hash=hash_secret(key),
        created_at=time.time() if now is None else now,
        owner=owner,
        owner_user_id=owner_user_id,
        service_account=service_account,
        groups=tuple(groups),
        max_qps=max_qps,
        burst=burst,
        expires_at=expires_at,
        created_by=created_by,
    )
    try:
        await store.create_api_key(record, audit=audit)
    except Conflict:
        raise ApiKeyInUse(f"a live API key named {name!r} exists; revoke it first") from None
    return record, key


class Tokens:
    """Delegate tokens as the routes see them. ``revoked`` is told each revoked token's id,
    once committed, so every session on it ends (this replica at once, the others through
    the bus: manager.server.app wires it)."""

    def __init__(
        self,
        store: Store,
        revoked: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._revoked = revoked
        self._clock = clock

    async def create(
        self,
        name: str,
        scope: Iterable[str],
        env_types: Iterable[EnvType],
        selectors: Iterable[str] | None,
        *,
        outside: Outside | None = None,
        audit: Callable[[DelegateScope], AuditOf[TokenRecord]] | None = None,
    ) -> tuple[TokenRecord, str, DelegateScope]:
        """The token, its one showing, and its scope; Invalid for a scope naming nothing,
        Conflicting while a live token has the name, Forbidden for a scope with parts the
        caller may not run tasks in (``outside`` names them). ``audit``: given the scope, the
        event of the token, chained in its insert's transaction."""
        try:
            resolved = await resolve_scope(self._store, scope, env_types, selectors)
        except ScopeError as exc:
            raise Invalid("invalid", str(exc), field="scope") from None
        await _check_within(resolved, outside)
        try:
            record, token = await create_token(
                self._store, name, resolved, audit=None if audit is None else audit(resolved)
            )
        except TokenInUse as exc:
            raise Conflicting("conflict", str(exc), field="name") from None
        return record, token, resolved

    async def by_token(self, token: str) -> TokenRecord | None:
        """The record of a presented token (live or revoked); None if it was never issued."""
        return await self._store.token_by_hash(hash_secret(token))

    async def list(self) -> list[tuple[TokenRecord, TokenScopeView | None]]:
        _, scopes = await scope_views(self._store)
        return [(t, scopes.get(t.id)) for t in await self._store.list_tokens()]

    async def scope_of(self, token_id: str) -> TokenScopeView | None:
        _, scopes = await scope_views(self._store)
        return scopes.get(token_id)

    async def revoke(
        self,
        name: str,
        *,
        outside: Outside | None = None,
        audit: AuditOf[TokenRecord] | None = None,
    ) -> TokenRecord | None:
        live = {t.name: t for t in await self._store.list_tokens() if t.revoked_at is None}
        if name in live:
            await _check_within(DelegateScope.load(live[name].scope), outside)
        record = await self._store.revoke_token(name, self._clock(), audit=audit)
        if record is not None:
            self._revoked(record.id)
        return record


# The parts of a token's scope the caller may not run tasks in (empty: none). A token hands
# its delegates the tasks and secrets of its scope, so making or revoking one is running
# there (manager.core.rbac.uncovered_delegate_scope).
Outside = Callable[[DelegateScope], Awaitable[list[str]]]


async def _check_within(scope: DelegateScope, outside: Outside | None) -> None:
    missing = [] if outside is None else await outside(scope)
    if missing:
        raise Forbidden(
            "forbidden",
            "a delegate token's scope must lie within your own rights to run tasks:"
            f" you may not run tasks in {', '.join(missing)}",
            field="scope",
        )

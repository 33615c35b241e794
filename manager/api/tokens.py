"""Delegate tokens through the API: create (shown once), list, revoke."""

from __future__ import annotations

import time

import structlog
from aiohttp import web
from pydantic import BaseModel

from manager.access.places import Places, places
from manager.access.principal import principal_of
from manager.access.tokens import (
    ScopeError,
    TokenInUse,
    create_token,
    resolve_scope,
    scope_view,
    scope_views,
)
from manager.api.audit_record import record
from manager.api.context import Context, ctx
from manager.api.guards import ACCESS
from manager.api.http import ApiProblem, AuthKind, Route, RouteTable, json_response, parse_body
from manager.core.eligibility import DelegateScope
from manager.core.rbac import uncovered_delegate_scope
from manager.records import (
    TokenRecord,
)
from manager.schemas.grants import Target
from manager.schemas.tasks import (
    TokenCreate,
    TokenCreated,
    TokenScopeView,
    TokenView,
)

__all__ = ["TokenList", "add_token_routes", "revoke_token"]

log = structlog.get_logger("tether.api")


class TokenList(BaseModel):
    tokens: list[TokenView]


# A follow stream writes a ping this often when idle, under common proxy idle limits.
def _token_view(t: TokenRecord, scope: TokenScopeView | None) -> TokenView:
    return TokenView(
        id=t.id, name=t.name, created_at=t.created_at, revoked_at=t.revoked_at, scope=scope
    )


async def create_token_route(request: web.Request) -> web.Response:
    c = ctx(request)
    req = await parse_body(request, TokenCreate)
    try:
        scope = await resolve_scope(c.store, req.scope, req.scope_env_types, req.selectors)
    except ScopeError as exc:
        raise ApiProblem(400, "invalid", str(exc), field="scope") from None
    where = await places(request.app[ACCESS].directory)
    _within_author(request, scope, where)
    try:
        created, token = await create_token(c.store, req.name, scope)
    except TokenInUse as exc:
        raise ApiProblem(409, "conflict", str(exc), field="name") from None
    view = _token_view(created, scope_view(scope, where))
    record(
        request,
        resource_id=created.id,
        name=created.name,
        action="create",
        summary=f"created delegate token {created.name}",
        after=view.model_dump(mode="json"),
    )
    return json_response(TokenCreated(**view.model_dump(), token=token), status=201)


def _within_author(request: web.Request, scope: DelegateScope, where: Places) -> None:
    """A token hands its delegates the tasks and secrets of its scope: making or revoking one
    needs ``execute`` on all of that scope (manage_delegates alone is not a way to reach
    production, nor to take its delegates away)."""
    envs = []
    for env_id in sorted(scope.envs):
        app_id, _, env_type = where.envs.get(env_id, ("", env_id, "production"))
        envs.append(Target(app_id, env_id, env_type))
    missing = uncovered_delegate_scope(
        principal_of(request).grants,
        account_wide=scope.account_wide,
        apps=sorted(scope.apps),
        envs=envs,
        env_types=sorted(scope.env_types),
    )
    if missing:
        raise ApiProblem(
            403,
            "forbidden",
            "a delegate token's scope must lie within your own rights to run tasks:"
            f" you may not run tasks in {', '.join(missing)}",
            field="scope",
        )


async def list_tokens(request: web.Request) -> web.Response:
    c = ctx(request)
    _, scopes = await scope_views(c.store)
    tokens = [_token_view(t, scopes.get(t.id)) for t in await c.store.list_tokens()]
    return json_response(TokenList(tokens=tokens))


async def revoke_token(c: Context, name: str) -> TokenRecord | None:
    record = await c.store.revoke_token(name, time.time())
    if record is not None:
        # Committed: every replica refuses its credentials from here (manager.access.
        # delegate_tokens); this one at once, the others on the event or their next read.
        c.tokens.forget(record.id)
        c.hub.revoke(record.id)
        c.bus.publish("revoked", record.id)
        log.info("token revoked", token=name)
    return record


async def revoke_token_route(request: web.Request) -> web.Response:
    c = ctx(request)
    name = request.match_info["name"]
    live = {t.name: t for t in await c.store.list_tokens() if t.revoked_at is None}
    if name in live:
        where = await places(request.app[ACCESS].directory)
        _within_author(request, DelegateScope.load(live[name].scope), where)
    revoked = await revoke_token(c, name)
    if revoked is None:
        raise ApiProblem(404, "not_found", f"no live token named {request.match_info['name']!r}")
    _, scopes = await scope_views(c.store)
    view = _token_view(revoked, scopes.get(revoked.id))
    record(
        request,
        resource_id=revoked.id,
        name=revoked.name,
        action="revoke",
        summary=f"revoked delegate token {revoked.name}",
        before=view.model_copy(update={"revoked_at": None}).model_dump(mode="json"),
        after=view.model_dump(mode="json"),
    )
    return json_response(view)


def add_token_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    table.add(
        Route(
            "POST",
            "/api/v1/tokens",
            create_token_route,
            "Create a delegate token",
            u,
            TokenCreate,
            TokenCreated,
            201,
            errors=(400, 409),
            audit="token",
        )
    )
    table.add(
        Route("GET", "/api/v1/tokens", list_tokens, "List delegate tokens", u, None, TokenList)
    )
    table.add(
        Route(
            "DELETE",
            "/api/v1/tokens/{name}",
            revoke_token_route,
            "Revoke a delegate token",
            u,
            None,
            TokenView,
            errors=(404,),
            audit="token",
        )
    )

"""Delegate tokens through the API: create (shown once), list, revoke."""

from __future__ import annotations

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from manager.access.places import places
from manager.access.principal import principal_of
from manager.access.tokens import (
    Outside,
    scope_view,
)
from manager.api.audit_record import Change, in_transaction
from manager.api.context import ctx
from manager.api.guards import ACCESS
from manager.api.http import ApiProblem, AuthKind, Route, RouteTable, json_response, parse_body
from manager.core.audit_chain import AuditOf
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

__all__ = ["TokenList", "add_token_routes"]

log = structlog.get_logger("tether.api")


class TokenList(BaseModel):
    model_config = ConfigDict(defer_build=True)
    tokens: list[TokenView]


# A follow stream writes a ping this often when idle, under common proxy idle limits.
def _token_view(t: TokenRecord, scope: TokenScopeView | None) -> TokenView:
    return TokenView(
        id=t.id, name=t.name, created_at=t.created_at, revoked_at=t.revoked_at, scope=scope
    )


async def create_token_route(request: web.Request) -> web.Response:
    req = await parse_body(request, TokenCreate)
    where = await places(request.app[ACCESS].directory)

    def audit(scope: DelegateScope) -> AuditOf[TokenRecord]:
        def created(t: TokenRecord) -> Change:
            after = _token_view(t, scope_view(scope, where)).model_dump(mode="json")
            summary = f"created delegate token {t.name}"
            return Change(t.id, t.name, "create", summary, after=after)

        return in_transaction(request, created)

    created, token, scope = await ctx(request).delegate_tokens.create(
        req.name,
        req.scope,
        req.scope_env_types,
        req.selectors,
        outside=_outside(request),
        audit=audit,
    )
    view = _token_view(created, scope_view(scope, where))
    return json_response(TokenCreated(**view.model_dump(), token=token), status=201)


def _outside(request: web.Request) -> Outside:
    """What of a token's scope the caller may not run tasks in."""

    async def outside(scope: DelegateScope) -> list[str]:
        where = await places(request.app[ACCESS].directory)
        envs = []
        for env_id in sorted(scope.envs):
            app_id, _, env_type = where.envs.get(env_id, ("", env_id, "production"))
            envs.append(Target(app_id, env_id, env_type))
        return uncovered_delegate_scope(
            principal_of(request).grants,
            account_wide=scope.account_wide,
            apps=sorted(scope.apps),
            envs=envs,
            env_types=sorted(scope.env_types),
        )

    return outside


async def list_tokens(request: web.Request) -> web.Response:
    tokens = [_token_view(t, scope) for t, scope in await ctx(request).delegate_tokens.list()]
    return json_response(TokenList(tokens=tokens))


async def revoke_token_route(request: web.Request) -> web.Response:
    tokens = ctx(request).delegate_tokens
    where = await places(request.app[ACCESS].directory)

    def revoked_one(t: TokenRecord) -> Change:
        view = _token_view(t, scope_view(DelegateScope.load(t.scope), where))
        return Change(
            t.id,
            t.name,
            "revoke",
            f"revoked delegate token {t.name}",
            before=view.model_copy(update={"revoked_at": None}).model_dump(mode="json"),
            after=view.model_dump(mode="json"),
        )

    revoked = await tokens.revoke(
        request.match_info["name"],
        outside=_outside(request),
        audit=in_transaction(request, revoked_one),
    )
    if revoked is None:
        raise ApiProblem(404, "not_found", f"no live token named {request.match_info['name']!r}")
    log.info("token revoked", token=revoked.name)
    return json_response(_token_view(revoked, await tokens.scope_of(revoked.id)))


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

"""SCIM 2.0 routes under /scim/v2 (RFC 7644), for an identity provider's provisioning
client, authenticated by a SCIM token (manager.access.scim); and the admin's routes that
make and revoke those tokens under /api/v1/scim/tokens.

The /scim/v2 routes answer in SCIM's own media type and error format (``urn:ietf:params:
scim:api:messages:2.0:Error``), never Tether's: every error a handler meets is turned into
one here. They are judged by the IP allowlist like user traffic. Each write is audited in
its own transaction, its actor the SCIM token ("scim").
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    Context,
    ETag,
    Filter,
    Group,
    ListResponse,
    Patch,
    ResourceType,
    ResponseParameters,
    Schema,
    SearchRequest,
    ServiceProviderConfig,
    Sort,
    User,
)
from scim2_models.exceptions import SCIMException

from manager.access.entities import Entity
from manager.access.scim import MAX_RESULTS, Scim, ScimError, ScimTokenBody, Written
from manager.api.audit_record import Change, in_transaction
from manager.api.context import ctx
from manager.api.guards import ACCESS
from manager.api.http import ApiProblem, Handler, json_response, parse_body
from manager.api.identity import ACTOR_KEY, actor_of
from manager.api.scim_routes import BASE
from manager.core.identity import Actor
from manager.errors import DomainError
from manager.schemas.directory_auth import (
    ScimTokenCreate,
    ScimTokenCreated,
    ScimTokenList,
    ScimTokenRevoked,
    ScimTokenView,
)
from manager.store.base import StoreError

__all__ = ["handlers"]

MEDIA = "application/scim+json"
_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
MAX_BODY = 1 << 20
# The SCIM token the request authenticated with.
_TOKEN: web.RequestKey[Entity[ScimTokenBody]] = web.RequestKey("tether_scim_token", Entity)


def scim_of(request: web.Request) -> Scim:
    c = ctx(request)
    access = request.app[ACCESS]
    return Scim(access.directory, access.principals, clock=c.clock)


def _base(request: web.Request) -> str:
    return str(request.url.origin()) + BASE


def scim_error(status: int, detail: str, scim_type: str | None = None) -> web.Response:
    body: dict[str, Any] = {"schemas": [_ERROR], "status": str(status), "detail": detail}
    if scim_type:
        body["scimType"] = scim_type
    return web.Response(status=status, text=json.dumps(body), content_type=MEDIA)


def _answer(data: dict[str, Any], status: int = 200, location: str | None = None) -> web.Response:
    resp = web.Response(status=status, text=json.dumps(data), content_type=MEDIA)
    if location:
        resp.headers["Location"] = location
    return resp


async def _body(request: web.Request) -> Any:
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ScimError(413, "the request body is too large")
    if request.content_type not in (MEDIA, "application/json"):
        raise ScimError(400, f"send {MEDIA} (or application/json)", "invalidSyntax")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ScimError(400, "the body is not JSON", "invalidSyntax") from None


ScimHandler = Callable[[web.Request, Scim], Awaitable[web.Response]]


def _scim(handler: ScimHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The SCIM token checked, and every refusal answered in SCIM's error format."""

    async def run(request: web.Request) -> web.Response:
        scim = scim_of(request)
        try:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            found = await scim.authenticate(token.strip() if scheme.lower() == "bearer" else None)
            request[ACTOR_KEY] = Actor("scim", found.id, f"SCIM token {found.body.name}")
            request[_TOKEN] = found
            return await handler(request, scim)
        except ScimError as exc:
            resp = scim_error(exc.status, exc.detail, exc.scim_type)
            if exc.status == 401:
                resp.headers["WWW-Authenticate"] = 'Bearer realm="scim"'
            return resp
        except DomainError as exc:
            return scim_error(400, str(exc))
        except StoreError as exc:
            status = 400 if type(exc).__name__ == "BadData" else 503
            return scim_error(status, "the request could not be stored; try again")

    run.__name__ = handler.__name__
    return run


def _shape(model: Any, q: Any) -> Any:
    """The ``attributes`` / ``excludedAttributes`` a client asked for (RFC 7644 3.9)."""
    wanted = {k: q[k] for k in ("attributes", "excludedAttributes") if q.get(k)}
    if not wanted:
        return None
    try:
        return ResponseParameters[model].model_validate(wanted)
    except (ValidationError, SCIMException) as exc:
        raise ScimError(400, f"attributes: {_why(exc)}", "invalidValue") from None


def _why(exc: Exception) -> str:
    if isinstance(exc, SCIMException):
        return exc.detail or "not valid"
    if isinstance(exc, ValidationError):
        return str(exc.errors(include_input=False, include_url=False)[0]["msg"])
    return "not valid"


def _dump(resource: Any, ctx: Context, q: Any) -> dict[str, Any]:
    shape = _shape(type(resource), q)
    dumped: dict[str, Any] = resource.model_dump(scim_ctx=ctx, response_parameters=shape)
    return dumped


def _paged(request: web.Request, resources: list[Any], model: Any, q: Any = None) -> web.Response:
    q = request.query if q is None else q
    try:
        start = max(1, int(q.get("startIndex") or 1))
        count = min(MAX_RESULTS, max(0, int(q.get("count") or MAX_RESULTS)))
    except (TypeError, ValueError):
        raise ScimError(400, "startIndex and count are integers", "invalidValue") from None
    page = resources[start - 1 : start - 1 + count]
    shape = _shape(model, q)
    listing = ListResponse[model](
        total_results=len(resources),
        start_index=start,
        items_per_page=len(page),
        resources=page,
    )
    return _answer(
        listing.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE, response_parameters=shape)
    )


def _audit(request: web.Request) -> Any:
    def describe(w: Written) -> Change:
        what = "user" if w.kind == "user" else "group"
        summary = f"SCIM {w.action}d {what} {w.name}".replace("eed ", "ed ")
        return Change(w.scim_id, w.name, w.action, summary, before=w.before, after=w.after)

    return in_transaction(request, describe)


# -- discovery


def _config(request: web.Request) -> ServiceProviderConfig:
    return ServiceProviderConfig(
        documentation_uri=None,
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=False),
        authentication_schemes=[
            AuthenticationScheme(
                type="oauthbearertoken",
                name="SCIM token",
                description="A SCIM token an administrator made: tether scim token create",
                primary=True,
            )
        ],
    )


async def service_provider_config(request: web.Request, scim: Scim) -> web.Response:
    found = _config(request)
    found.meta = None
    return _answer(found.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))


def _resource_types(request: web.Request) -> list[ResourceType]:
    base = _base(request)
    out = []
    for model, endpoint in ((User, "/Users"), (Group, "/Groups")):
        rt = ResourceType.from_resource(model)
        rt.endpoint = endpoint  # type: ignore[assignment]  # a relative URI, as RFC 7643 6
        rt.schema_extensions = [] if not rt.schema_extensions else rt.schema_extensions
        rt.meta = _type_meta("ResourceType", f"{base}/ResourceTypes/{rt.id}")
        out.append(rt)
    return out


def _type_meta(kind: str, location: str) -> Any:
    from scim2_models import Meta

    return Meta(resource_type=kind, location=location)


async def resource_types(request: web.Request, scim: Scim) -> web.Response:
    return _paged(request, _resource_types(request), ResourceType)


async def resource_type(request: web.Request, scim: Scim) -> web.Response:
    wanted = request.match_info["name"]
    for rt in _resource_types(request):
        if rt.id == wanted or rt.name == wanted:
            return _answer(rt.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    raise ScimError(404, f"no resource type {wanted!r}")


def _schemas(request: web.Request) -> list[Any]:
    base = _base(request)
    out = []
    for model in (User, Group):
        schema = model.to_schema()
        schema.meta = _type_meta("Schema", f"{base}/Schemas/{schema.id}")
        out.append(schema)
    return out


async def schemas(request: web.Request, scim: Scim) -> web.Response:
    return _paged(request, _schemas(request), Schema)


async def schema(request: web.Request, scim: Scim) -> web.Response:
    wanted = request.match_info["schema_id"]
    for s in _schemas(request):
        if s.id == wanted:
            return _answer(s.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    raise ScimError(404, f"no schema {wanted!r}")


async def search_all(request: web.Request, scim: Scim) -> web.Response:
    # RFC 7644 3.4.3 lets a server decline a search over every resource type at once.
    raise ScimError(501, "search /Users/.search or /Groups/.search, not every type at once")


async def unknown(request: web.Request, scim: Scim) -> web.Response:
    raise ScimError(404, f"no SCIM endpoint {request.match_info['resource']!r}")


# -- users


async def _changed(request: web.Request, write: Any, read: Any, answer: Context) -> web.Response:
    """A PUT or PATCH of ``scim_id``: ``write`` it (audited), answer it as ``read`` now."""
    scim_id = request.match_info["scim_id"]
    await write(scim_id, await _body(request), audit=_audit(request))
    resource = await read(scim_id, _base(request))
    return _answer(resource.model_dump(scim_ctx=answer))


async def list_users(request: web.Request, scim: Scim) -> web.Response:
    found = await scim.list_users(_base(request), request.query.get("filter"))
    return _paged(request, found, User)


async def get_user(request: web.Request, scim: Scim) -> web.Response:
    user = await scim.user(request.match_info["scim_id"], _base(request))
    return _answer(_dump(user, Context.RESOURCE_QUERY_RESPONSE, request.query))


async def create_user(request: web.Request, scim: Scim) -> web.Response:
    data = await _body(request)
    made = await scim.create_user(data, request[_TOKEN], audit=_audit(request))
    user = await scim.user(made, _base(request))
    dumped = user.model_dump(scim_ctx=Context.RESOURCE_CREATION_RESPONSE)
    return _answer(dumped, 201, location=f"{_base(request)}/Users/{made}")


async def replace_user(request: web.Request, scim: Scim) -> web.Response:
    return await _changed(
        request, scim.replace_user, scim.user, Context.RESOURCE_REPLACEMENT_RESPONSE
    )


async def patch_user(request: web.Request, scim: Scim) -> web.Response:
    return await _changed(request, scim.patch_user, scim.user, Context.RESOURCE_PATCH_RESPONSE)


async def delete_user(request: web.Request, scim: Scim) -> web.Response:
    await scim.delete_user(request.match_info["scim_id"], audit=_audit(request))
    return web.Response(status=204)


async def _searched(request: web.Request, model: Any) -> tuple[str | None, dict[str, Any]]:
    """A POST .search body (RFC 7644 3.4.3): its filter, and its paging and attributes."""
    data = await _body(request)
    if not isinstance(data, dict):
        raise ScimError(400, "a SearchRequest is a JSON object", "invalidSyntax")
    try:
        search = SearchRequest[model].model_validate(data, scim_ctx=Context.SEARCH_REQUEST)
    except (ValidationError, SCIMException) as exc:
        raise ScimError(400, _why(exc), "invalidValue") from None
    shown = search.model_dump(scim_ctx=Context.SEARCH_REQUEST)
    q = {k: shown.get(k) for k in ("startIndex", "count")}
    for key in ("attributes", "excludedAttributes"):
        if shown.get(key):
            q[key] = ",".join(str(a) for a in shown[key])
    return (str(search.filter) if search.filter else None), q


async def search_users(request: web.Request, scim: Scim) -> web.Response:
    query, q = await _searched(request, User)
    found = await scim.list_users(_base(request), query)
    return _paged(request, found, User, q)


async def search_groups(request: web.Request, scim: Scim) -> web.Response:
    query, q = await _searched(request, Group)
    found = await scim.list_groups(_base(request), query)
    return _paged(request, found, Group, q)


# -- groups


async def list_groups(request: web.Request, scim: Scim) -> web.Response:
    found = await scim.list_groups(_base(request), request.query.get("filter"))
    return _paged(request, found, Group)


async def get_group(request: web.Request, scim: Scim) -> web.Response:
    group = await scim.group(request.match_info["scim_id"], _base(request))
    return _answer(_dump(group, Context.RESOURCE_QUERY_RESPONSE, request.query))


async def create_group(request: web.Request, scim: Scim) -> web.Response:
    made = await scim.create_group(await _body(request), audit=_audit(request))
    group = await scim.group(made, _base(request))
    dumped = group.model_dump(scim_ctx=Context.RESOURCE_CREATION_RESPONSE)
    return _answer(dumped, 201, location=f"{_base(request)}/Groups/{made}")


async def replace_group(request: web.Request, scim: Scim) -> web.Response:
    return await _changed(
        request, scim.replace_group, scim.group, Context.RESOURCE_REPLACEMENT_RESPONSE
    )


async def patch_group(request: web.Request, scim: Scim) -> web.Response:
    return await _changed(request, scim.patch_group, scim.group, Context.RESOURCE_PATCH_RESPONSE)


async def delete_group(request: web.Request, scim: Scim) -> web.Response:
    await scim.delete_group(request.match_info["scim_id"], audit=_audit(request))
    return web.Response(status=204)


# -- the admin's tokens


def _token_view(body: Any) -> ScimTokenView:
    return ScimTokenView(
        name=body.name, issuer=body.issuer, created_at=body.created_at, created_by=body.created_by
    )


async def create_token(request: web.Request) -> web.Response:
    body = await parse_body(request, ScimTokenCreate)

    def made(entity: Any) -> Change:
        view = _token_view(entity.body).model_dump(mode="json")
        return Change(entity.id, body.name, "create", f"created SCIM token {body.name}", after=view)

    try:
        token, entity = await scim_of(request).create_token(
            body.name, body.issuer, actor_of(request).name, audit=in_transaction(request, made)
        )
    except ScimError as exc:
        raise ApiProblem(exc.status, "conflict", exc.detail, field="name") from None
    view = _token_view(entity.body)
    return json_response(ScimTokenCreated(**view.model_dump(), token=token), status=201)


async def list_tokens(request: web.Request) -> web.Response:
    found = await scim_of(request).tokens.list()
    views = sorted((_token_view(t.body) for t in found), key=lambda v: v.name)
    return json_response(ScimTokenList(tokens=views))


async def revoke_token(request: web.Request) -> web.Response:
    name = request.match_info["name"]

    def gone(entity: Any) -> Change:
        view = _token_view(entity.body).model_dump(mode="json")
        return Change(entity.id, name, "delete", f"revoked SCIM token {name}", before=view)

    if not await scim_of(request).revoke_token(name, audit=in_transaction(request, gone)):
        raise ApiProblem(404, "not_found", f"no SCIM token {name!r}")
    return json_response(ScimTokenRevoked(revoked=True))


def handlers() -> dict[str, Handler]:
    """Each route's handler by name, for manager.api.scim_routes (which lists the routes)."""
    scim: dict[str, ScimHandler] = {
        "service_provider_config": service_provider_config,
        "resource_types": resource_types,
        "resource_type": resource_type,
        "schemas": schemas,
        "schema": schema,
        "list_users": list_users,
        "create_user": create_user,
        "search_users": search_users,
        "get_user": get_user,
        "replace_user": replace_user,
        "patch_user": patch_user,
        "delete_user": delete_user,
        "list_groups": list_groups,
        "create_group": create_group,
        "search_groups": search_groups,
        "get_group": get_group,
        "replace_group": replace_group,
        "patch_group": patch_group,
        "delete_group": delete_group,
        "search_all": search_all,
        "unknown": unknown,
    }
    plain: dict[str, Handler] = {
        "create_token": create_token,
        "list_tokens": list_tokens,
        "revoke_token": revoke_token,
    }
    return {**{name: _scim(h) for name, h in scim.items()}, **plain}

"""Delegate profiles under /api/v1/profiles."""

from __future__ import annotations

import re
import time

from aiohttp import web

from manager.api.audit_record import Change, in_transaction
from manager.api.context import ctx
from manager.api.http import ApiProblem, AuthKind, Route, RouteTable, json_response, parse_body
from manager.records import ProfileRecord
from manager.schemas.tasks import ProfileList, ProfilePut, ProfileView
from shared.protocol import ShellPayload
from shared.task_secrets import referenced_secrets

__all__ = ["add_profile_routes"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


def _view(p: ProfileRecord, runs: int = 0) -> ProfileView:
    return ProfileView(
        name=p.name,
        selectors=list(p.selectors),
        script=p.script,
        interpreter=p.interpreter,
        updated_at=p.updated_at,
        runs_started=runs,
    )


async def put_profile(request: web.Request) -> web.Response:
    c = ctx(request)
    name = request.match_info["name"]
    if not re.match(_NAME, name):
        raise ApiProblem(400, "invalid", "name: letters, digits, '.', '_' and '-'", field="name")
    body = await parse_body(request, ProfilePut)
    await _check_profile_secrets(request, body.script)
    before = await _find(request, name)
    profile = ProfileRecord(name, tuple(body.selectors), body.script, body.interpreter, time.time())

    def written(p: ProfileRecord) -> Change:
        # Made before the runs start (they follow the commit): the event says what was set.
        return Change(
            name,
            name,
            "create" if before is None else "update",
            f"{'created' if before is None else 'changed'} delegate profile {name}",
            before=None if before is None else _audit_view(before),
            after=_audit_view(p),
        )

    runs = await c.profiles.put(profile, audit=in_transaction(request, written))
    return json_response(_view(profile, runs))


async def _check_profile_secrets(request: web.Request, script: str) -> None:
    """Expressions must parse, and each secret they name must serve delegate profiles (scoped
    to the account, or with no usage scope): 400 naming the first that does not."""
    c = ctx(request)
    try:
        names = sorted(referenced_secrets(ShellPayload(script=script)))
    except ValueError as exc:
        raise ApiProblem(400, "invalid", f"script: {exc}", field="script") from None
    if not names:
        return
    found = await c.secrets.secrets_named(names)
    for name in names:
        secret = found.get(name)
        if secret is None:
            raise ApiProblem(400, "invalid", f"no secret {name!r}", field="script")
        if refusal := await c.secrets.task_refusal(secret):
            raise ApiProblem(
                400,
                "invalid",
                f"secret {name!r} may not be used in profiles: {refusal}",
                field="script",
            )
        scope = await c.secrets.scopes.effective(secret.id, secret.manager_id)
        if not scope.serves_profiles:
            raise ApiProblem(
                400,
                "invalid",
                f"secret {name!r} is scoped to applications; profiles may use only secrets"
                " scoped to the account",
                field="script",
            )


async def _find(request: web.Request, name: str) -> ProfileRecord | None:
    return await ctx(request).profiles.find(name)


def _audit_view(p: ProfileRecord) -> dict[str, object]:
    return _view(p).model_dump(mode="json", exclude={"runs_started", "updated_at"})


async def list_profiles(request: web.Request) -> web.Response:
    c = ctx(request)
    return json_response(ProfileList(profiles=[_view(p) for p in await c.profiles.all()]))


async def delete_profile(request: web.Request) -> web.Response:
    name = request.match_info["name"]

    def deleted(p: ProfileRecord) -> Change:
        return Change(name, name, "delete", f"deleted delegate profile {name}", _audit_view(p))

    await ctx(request).profiles.delete(name, audit=in_transaction(request, deleted))
    return web.Response(status=204)


def add_profile_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    base = "/api/v1/profiles"
    table.add(
        Route(
            "PUT",
            f"{base}/{{name}}",
            put_profile,
            "Create or change a delegate profile",
            u,
            ProfilePut,
            ProfileView,
            errors=(400,),
            audit="profile",
        )
    )
    table.add(Route("GET", base, list_profiles, "List delegate profiles", u, None, ProfileList))
    table.add(
        Route(
            "DELETE",
            f"{base}/{{name}}",
            delete_profile,
            "Delete a delegate profile",
            u,
            status=204,
            errors=(404,),
            audit="profile",
        )
    )

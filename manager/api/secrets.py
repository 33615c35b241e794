"""Secret managers and secrets under /api/v1. No route returns a value, only metadata."""

from __future__ import annotations

from aiohttp import web

from manager.access.places import Places
from manager.access.principal import principal_of
from manager.api.audit_record import Change, in_transaction, record_now
from manager.api.context import ctx
from manager.api.http import ApiProblem, AuthKind, Route, RouteTable, json_response, parse_body
from manager.records import (
    BUILTIN_MANAGER_ID,
    SecretManagerRecord,
    SecretRecord,
    SecretVersionRecord,
)
from manager.schemas.grants import Target
from manager.schemas.secrets import (
    ScopePut,
    ScopeSpec,
    SecretCreate,
    SecretList,
    SecretManagerCreate,
    SecretManagerList,
    SecretManagerTestResult,
    SecretManagerUpdate,
    SecretManagerView,
    SecretMigrate,
    SecretUpdate,
    SecretVersionList,
    SecretVersionView,
    SecretView,
)
from manager.secrets.scope import UNRESTRICTED, Scopes, UsageScope
from manager.secrets.service import SecretService
from shared.envelope import Envelope, EnvelopeError
from shared.secretspec import RefSpec

__all__ = ["add_secret_routes"]


def _service(request: web.Request) -> SecretService:
    return ctx(request).secrets


def _manager_view(m: SecretManagerRecord) -> SecretManagerView:
    return SecretManagerView.model_validate(
        {
            "id": m.id,
            "name": m.name,
            "kind": m.kind,
            "settings": dict(m.settings),
            "credentials_secret": m.credentials_secret,
            "selectors": list(m.selectors),
            "description": m.description,
            "builtin": m.id == BUILTIN_MANAGER_ID,
            "created_at": m.created_at,
            "updated_at": m.updated_at,
        }
    )


def _secret_view(s: SecretRecord, m: SecretManagerRecord | None) -> SecretView:
    return SecretView.model_validate(
        {
            "id": s.id,
            "name": s.name,
            "manager": m.name if m else s.manager_id,
            "manager_kind": m.kind if m else "builtin",
            "type": s.type,
            "mode": s.mode,
            "current_version": s.current_version,
            "description": s.description,
            "created_by": s.created_by,
            "created_at": s.created_at,
            "updated_at": s.updated_at,
        }
    )


def _version_view(v: SecretVersionRecord, current: int) -> SecretVersionView:
    key = None
    if v.envelope is not None:
        try:
            envelope = Envelope.from_json(v.envelope)
            key = f"{envelope.kek_kind}:{envelope.kek_id}"
        except EnvelopeError:
            key = "unreadable"
    return SecretVersionView(
        version=v.version,
        current=v.version == current,
        created_at=v.created_at,
        created_by=v.created_by,
        size=v.size,
        key=key,
        ref=RefSpec.model_validate(v.ref) if v.ref is not None else None,
    )


def _secret_view_of(
    s: SecretRecord,
    m: SecretManagerRecord | None,
    scope: UsageScope | None,
    where: Places,
) -> SecretView:
    """The secret's view with its own scope (None: none of its own): what its events hold,
    made of the row written inside the write's transaction, hence read before it."""
    view = _secret_view(s, m)
    if scope is None:
        return view
    return view.model_copy(update={"scope": Scopes.describe(scope, where)})


def _manager_view_of(
    m: SecretManagerRecord, scope: UsageScope | None, where: Places
) -> SecretManagerView:
    view = _manager_view(m)
    if scope is None:
        return view
    return view.model_copy(update={"scope": Scopes.describe(scope, where)})


async def _secret_context(
    request: web.Request, s: SecretRecord
) -> tuple[SecretManagerRecord | None, UsageScope | None, Places]:
    """(its manager, its own scope, the places scopes name) of ``s``."""
    scopes = _service(request).scopes
    manager = await _service(request).manager_by_id(s.manager_id)
    return manager, await scopes.of_secret(s.id), await scopes.places()


async def _manager_context(
    request: web.Request, m: SecretManagerRecord
) -> tuple[UsageScope | None, Places]:
    scopes = _service(request).scopes
    return await scopes.of_manager(m.id), await scopes.places()


async def _secret_full_view(request: web.Request, s: SecretRecord) -> SecretView:
    return _secret_view_of(s, *await _secret_context(request, s))


async def _manager_full_view(request: web.Request, m: SecretManagerRecord) -> SecretManagerView:
    return _manager_view_of(m, *await _manager_context(request, m))


async def _checked_scope(
    request: web.Request, spec: ScopeSpec | None, manager_id: str | None
) -> UsageScope | None:
    """``spec`` in ids, once it lies within the manager's scope (for a secret's)."""
    if spec is None:
        return None
    scopes = _service(request).scopes
    where = await scopes.places()
    scope = Scopes.resolve(spec, where)
    if manager_id is not None:
        outer = await scopes.of_manager(manager_id) or UNRESTRICTED
        if not scope.within(outer, where):
            raise ApiProblem(
                400,
                "invalid",
                "a secret's scope must lie within its secret manager's scope",
                field="scope",
            )
    return scope


def _visible(request: web.Request, scope: UsageScope, where: Places) -> bool:
    """A secret scoped to applications shows only to those who may read one of its
    environments (and to secret managers); others show to every signed-in caller."""
    grants = principal_of(request).grants
    if grants.has("manage_secrets") or not scope.targets:
        return True
    if scope.covers(None) and grants.everywhere("read"):
        return True
    return any(
        scope.covers(t) and grants.allows(t, "read")
        for env_id, (app_id, _name, env_type) in where.envs.items()
        if (t := Target(app_id, env_id, env_type))
    )


def _audit(view: SecretView | SecretManagerView) -> dict[str, object]:
    """A secret's or a manager's diff is its metadata: no view has a field for a value."""
    return view.model_dump(mode="json")


# -- secret managers ---------------------------------------------------------------------


async def list_managers(request: web.Request) -> web.Response:
    managers = await _service(request).managers()
    views = [await _manager_full_view(request, m) for m in managers]
    return json_response(SecretManagerList(secret_managers=views))


async def create_manager(request: web.Request) -> web.Response:
    body = await parse_body(request, SecretManagerCreate)
    scope = await _checked_scope(request, body.scope, None)
    where = await _service(request).scopes.places()

    def made(m: SecretManagerRecord) -> Change:
        after = _audit(_manager_view_of(m, scope, where))
        summary = f"created secret manager {m.name} ({m.kind})"
        return Change(m.id, m.name, "create", summary, after=after)

    created = await _service(request).create_manager(
        body, scope=scope, audit=in_transaction(request, made)
    )
    return json_response(await _manager_full_view(request, created), status=201)


async def get_manager(request: web.Request) -> web.Response:
    manager = await _service(request).manager(request.match_info["name"])
    return json_response(await _manager_full_view(request, manager))


async def update_manager(request: web.Request) -> web.Response:
    body = await parse_body(request, SecretManagerUpdate)
    service, name = _service(request), request.match_info["name"]
    current = await service.manager(name)
    own, where = await _manager_context(request, current)

    def changed(m: SecretManagerRecord) -> Change:
        before, after = _manager_view_of(current, own, where), _manager_view_of(m, own, where)
        summary = f"changed secret manager {m.name}"
        return Change(m.id, m.name, "update", summary, _audit(before), _audit(after))

    updated = await service.update_manager(name, body, audit=in_transaction(request, changed))
    return json_response(await _manager_full_view(request, updated))


async def delete_manager(request: web.Request) -> web.Response:
    service, name = _service(request), request.match_info["name"]
    own, where = await _manager_context(request, await service.manager(name))

    def deleted(m: SecretManagerRecord) -> Change:
        before = _audit(_manager_view_of(m, own, where))
        return Change(m.id, m.name, "delete", f"deleted secret manager {m.name}", before)

    await service.delete_manager(name, audit=in_transaction(request, deleted))
    return web.Response(status=204)


async def test_manager(request: web.Request) -> web.Response:
    service, name = _service(request), request.match_info["name"]
    manager = await service.manager(name)
    outcome = await service.test_manager(name)
    if outcome is None:
        result = SecretManagerTestResult(ok=True)
    else:
        result = SecretManagerTestResult(
            ok=outcome.ok,
            task_id=outcome.task.id,
            delegate_id=outcome.task.delegate_id,
            error=None if outcome.ok else outcome.error,
        )
    # A test changes no setting, but it runs the manager's credentials on a delegate: its
    # event is all it writes, and no result is answered that the trail does not hold.
    await record_now(
        request,
        Change(
            manager.id,
            manager.name,
            "test",
            f"tested secret manager {manager.name}: {'ok' if result.ok else 'failed'}",
            after=result.model_dump(mode="json"),
        ),
    )
    return json_response(result)


# -- secrets -----------------------------------------------------------------------------


async def list_secrets(request: web.Request) -> web.Response:
    service = _service(request)
    manager_id = None
    if name := request.query.get("manager"):
        manager_id = (await service.manager(name)).id
    managers = {m.id: m for m in await service.managers()}
    secrets = await service.secrets(manager_id)
    scopes = service.scopes
    where = await scopes.places()
    views = []
    for s in secrets:
        own = await scopes.of_secret(s.id)
        if not _visible(request, await scopes.effective(s.id, s.manager_id), where):
            continue
        view = _secret_view(s, managers.get(s.manager_id))
        views.append(view.model_copy(update={"scope": Scopes.describe(own, where)}))
    return json_response(SecretList(secrets=views))


async def create_secret(request: web.Request) -> web.Response:
    body = await parse_body(request, SecretCreate)
    service = _service(request)
    # An unknown manager is create_secret's 400; only a known one has a scope to lie within.
    manager = await service.manager_named(body.manager)
    scope = await _checked_scope(request, body.scope, None if manager is None else manager.id)
    where = await service.scopes.places()

    def made(s: SecretRecord) -> Change:
        view = _secret_view_of(s, manager, scope, where)
        summary = f"created secret {s.name} in {view.manager} ({s.mode})"
        return Change(s.id, s.name, "create", summary, after=_audit(view))

    created = await service.create_secret(body, scope=scope, audit=in_transaction(request, made))
    return json_response(await _secret_full_view(request, created), status=201)


async def _secret(request: web.Request) -> SecretRecord:
    """The secret the path names, through the one visibility check every route of a secret
    shares (the listing's): one the caller may not see is a 404 on each, as a missing one."""
    service, name = _service(request), request.match_info["name"]
    secret = await service.secret(name)
    scope = await service.scopes.effective(secret.id, secret.manager_id)
    if not _visible(request, scope, await service.scopes.places()):
        raise ApiProblem(404, "not_found", f"no secret {name!r}")
    return secret


async def get_secret(request: web.Request) -> web.Response:
    return json_response(await _secret_full_view(request, await _secret(request)))


async def put_secret_scope(request: web.Request) -> web.Response:
    body = await parse_body(request, ScopePut)
    service, secret = _service(request), await _secret(request)
    manager, own, where = await _secret_context(request, secret)
    scope = await _checked_scope(request, body.scope, secret.manager_id)

    def changed(new: UsageScope | None) -> Change:
        before = _secret_view_of(secret, manager, own, where)
        after = _secret_view_of(secret, manager, new, where)
        summary = f"changed the usage scope of secret {secret.name}"
        return Change(secret.id, secret.name, "update", summary, _audit(before), _audit(after))

    await service.scopes.set_secret(secret.id, scope, audit=in_transaction(request, changed))
    return json_response(await _secret_full_view(request, secret))


async def put_manager_scope(request: web.Request) -> web.Response:
    body = await parse_body(request, ScopePut)
    service, name = _service(request), request.match_info["name"]
    manager = await service.manager(name)
    own, where = await _manager_context(request, manager)
    scope = await _checked_scope(request, body.scope, None)
    outer = scope or UNRESTRICTED
    for s in await service.secrets(manager.id):
        theirs = await service.scopes.of_secret(s.id)
        if theirs is not None and not theirs.within(outer, where):
            raise ApiProblem(
                409,
                "conflict",
                f"secret {s.name!r} is scoped beyond that; narrow or clear its scope first",
            )

    def changed(new: UsageScope | None) -> Change:
        before = _manager_view_of(manager, own, where)
        after = _manager_view_of(manager, new, where)
        summary = f"changed the usage scope of secret manager {manager.name}"
        return Change(manager.id, manager.name, "update", summary, _audit(before), _audit(after))

    await service.scopes.set_manager(manager.id, scope, audit=in_transaction(request, changed))
    return json_response(await _manager_full_view(request, manager))


async def update_secret(request: web.Request) -> web.Response:
    body = await parse_body(request, SecretUpdate)
    service, name = _service(request), request.match_info["name"]
    current = await _secret(request)
    manager, own, where = await _secret_context(request, current)

    def changed(s: SecretRecord) -> Change:
        before = _secret_view_of(current, manager, own, where)
        after = _secret_view_of(s, manager, own, where)
        summary = f"secret {s.name} is now at version {s.current_version}"
        return Change(s.id, s.name, "update", summary, _audit(before), _audit(after))

    updated = await service.update_secret(name, body, audit=in_transaction(request, changed))
    return json_response(await _secret_full_view(request, updated))


async def delete_secret(request: web.Request) -> web.Response:
    service, name = _service(request), request.match_info["name"]
    manager, own, where = await _secret_context(request, await _secret(request))

    def deleted(s: SecretRecord) -> Change:
        before = _audit(_secret_view_of(s, manager, own, where))
        return Change(s.id, s.name, "delete", f"deleted secret {s.name}", before)

    await service.delete_secret(name, audit=in_transaction(request, deleted))
    return web.Response(status=204)


async def secret_versions(request: web.Request) -> web.Response:
    await _secret(request)
    secret, versions = await _service(request).versions(request.match_info["name"])
    return json_response(
        SecretVersionList(
            name=secret.name,
            versions=[_version_view(v, secret.current_version) for v in versions],
        )
    )


async def migrate_secret(request: web.Request) -> web.Response:
    body = await parse_body(request, SecretMigrate)
    service, name = _service(request), request.match_info["name"]
    current = await _secret(request)
    source, own, where = await _secret_context(request, current)
    target = await service.manager_named(body.to)  # None: migrate's 400

    def moved(s: SecretRecord) -> Change:
        before = _secret_view_of(current, source, own, where)
        after = _secret_view_of(
            s, target if s.manager_id != current.manager_id else source, own, where
        )
        summary = f"moved secret {s.name} from {before.manager} to {after.manager}"
        return Change(s.id, s.name, "migrate", summary, _audit(before), _audit(after))

    migrated = await service.migrate(name, body.to, audit=in_transaction(request, moved))
    return json_response(await _secret_full_view(request, migrated))


def add_secret_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    sm = "/api/v1/secret-managers"
    one_sm = f"{sm}/{{name}}"
    s = "/api/v1/secrets"
    # Names may hold "/": clients send it as %2F, which the router matches as one segment.
    one_s = f"{s}/{{name}}"
    for route in (
        Route(
            "PUT",
            f"{one_sm}/scope",
            put_manager_scope,
            "Set where a secret manager's secrets may be used",
            u,
            ScopePut,
            SecretManagerView,
            errors=(400, 404, 409),
            audit="secret_manager",
        ),
        Route(
            "PUT",
            f"{one_s}/scope",
            put_secret_scope,
            "Set where a secret may be used",
            u,
            ScopePut,
            SecretView,
            errors=(400, 404),
            audit="secret",
        ),
        Route("GET", sm, list_managers, "List secret managers", u, None, SecretManagerList),
        Route(
            "POST",
            sm,
            create_manager,
            "Create a secret manager",
            u,
            SecretManagerCreate,
            SecretManagerView,
            status=201,
            errors=(400, 409),
            audit="secret_manager",
        ),
        Route(
            "GET",
            one_sm,
            get_manager,
            "Show a secret manager",
            u,
            None,
            SecretManagerView,
            errors=(404,),
        ),
        Route(
            "PATCH",
            one_sm,
            update_manager,
            "Change a secret manager",
            u,
            SecretManagerUpdate,
            SecretManagerView,
            errors=(400, 404, 409),
            audit="secret_manager",
        ),
        Route(
            "DELETE",
            one_sm,
            delete_manager,
            "Delete a secret manager that keeps no secrets",
            u,
            status=204,
            errors=(404, 409),
            audit="secret_manager",
        ),
        Route(
            "POST",
            f"{one_sm}/test",
            test_manager,
            "Test a secret manager's connection from a delegate",
            u,
            None,
            SecretManagerTestResult,
            errors=(404, 504),
            audit="secret_manager",
        ),
        Route(
            "GET",
            s,
            list_secrets,
            "List secrets (metadata only)",
            u,
            None,
            SecretList,
            query={"manager": "string"},
            errors=(404,),
        ),
        Route(
            "POST",
            s,
            create_secret,
            "Create a secret: a value to encrypt, or a reference",
            u,
            SecretCreate,
            SecretView,
            status=201,
            errors=(400, 409, 413, 502, 504),
            audit="secret",
        ),
        Route(
            "GET", one_s, get_secret, "Show a secret's metadata", u, None, SecretView, errors=(404,)
        ),
        Route(
            "PATCH",
            one_s,
            update_secret,
            "Give a secret a new version",
            u,
            SecretUpdate,
            SecretView,
            errors=(400, 404, 409, 413, 502, 504),
            audit="secret",
        ),
        Route(
            "DELETE",
            one_s,
            delete_secret,
            "Delete a secret (a referenced value stays where it is)",
            u,
            status=204,
            errors=(404, 409),
            audit="secret",
        ),
        Route(
            "GET",
            f"{one_s}/versions",
            secret_versions,
            "List a secret's versions (metadata only)",
            u,
            None,
            SecretVersionList,
            errors=(404,),
        ),
        Route(
            "POST",
            f"{one_s}/migrate",
            migrate_secret,
            "Move a secret to another secret manager",
            u,
            SecretMigrate,
            SecretView,
            errors=(400, 404, 409, 502, 504),
            audit="secret",
        ),
    ):
        table.add(route)

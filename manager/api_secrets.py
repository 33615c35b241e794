"""Secret managers and secrets under /api/v1. No route returns a value, only metadata."""

from __future__ import annotations

from aiohttp import web

from manager.audit_record import record
from manager.context import ctx
from manager.http import AuthKind, Route, RouteTable, json_response, parse_body
from manager.secret_models import (
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
from manager.secrets import SecretService
from manager.store.records import (
    BUILTIN_MANAGER_ID,
    SecretManagerRecord,
    SecretRecord,
    SecretVersionRecord,
)
from shared.envelope import Envelope, EnvelopeError
from shared.secretspec import RefSpec

__all__ = ["add_secret_routes"]


def _service(request: web.Request) -> SecretService:
    service = ctx(request).secrets
    assert service is not None, "the app builds the secrets service before serving"
    return service


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


async def _secret_full_view(request: web.Request, s: SecretRecord) -> SecretView:
    return _secret_view(s, await ctx(request).store.get_secret_manager(s.manager_id))


def _audit(view: SecretView | SecretManagerView) -> dict[str, object]:
    """A secret's or a manager's diff is its metadata: no view has a field for a value."""
    return view.model_dump(mode="json")


# -- secret managers ---------------------------------------------------------------------


async def list_managers(request: web.Request) -> web.Response:
    managers = await ctx(request).store.list_secret_managers()
    return json_response(SecretManagerList(secret_managers=[_manager_view(m) for m in managers]))


async def create_manager(request: web.Request) -> web.Response:
    body = await parse_body(request, SecretManagerCreate)
    created = _manager_view(await _service(request).create_manager(body))
    record(
        request,
        resource_id=created.id,
        name=created.name,
        action="create",
        summary=f"created secret manager {created.name} ({created.kind})",
        after=_audit(created),
    )
    return json_response(created, status=201)


async def get_manager(request: web.Request) -> web.Response:
    return json_response(_manager_view(await _service(request).manager(request.match_info["name"])))


async def update_manager(request: web.Request) -> web.Response:
    body = await parse_body(request, SecretManagerUpdate)
    service, name = _service(request), request.match_info["name"]
    before = _manager_view(await service.manager(name))
    after = _manager_view(await service.update_manager(name, body))
    record(
        request,
        resource_id=after.id,
        name=after.name,
        action="update",
        summary=f"changed secret manager {after.name}",
        before=_audit(before),
        after=_audit(after),
    )
    return json_response(after)


async def delete_manager(request: web.Request) -> web.Response:
    service, name = _service(request), request.match_info["name"]
    before = _manager_view(await service.manager(name))
    await service.delete_manager(name)
    record(
        request,
        resource_id=before.id,
        name=before.name,
        action="delete",
        summary=f"deleted secret manager {before.name}",
        before=_audit(before),
    )
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
    # A test changes no setting, but it runs the manager's credentials on a delegate.
    record(
        request,
        resource_id=manager.id,
        name=manager.name,
        action="test",
        summary=f"tested secret manager {manager.name}: {'ok' if result.ok else 'failed'}",
        after=result.model_dump(mode="json"),
    )
    return json_response(result)


# -- secrets -----------------------------------------------------------------------------


async def list_secrets(request: web.Request) -> web.Response:
    c = ctx(request)
    manager_id = None
    if name := request.query.get("manager"):
        manager_id = (await _service(request).manager(name)).id
    managers = {m.id: m for m in await c.store.list_secret_managers()}
    secrets = await c.store.list_secrets(manager_id=manager_id)
    return json_response(
        SecretList(secrets=[_secret_view(s, managers.get(s.manager_id)) for s in secrets])
    )


async def create_secret(request: web.Request) -> web.Response:
    body = await parse_body(request, SecretCreate)
    created = await _secret_full_view(request, await _service(request).create_secret(body))
    record(
        request,
        resource_id=created.id,
        name=created.name,
        action="create",
        summary=f"created secret {created.name} in {created.manager} ({created.mode})",
        after=_audit(created),
    )
    return json_response(created, status=201)


async def get_secret(request: web.Request) -> web.Response:
    secret = await _service(request).secret(request.match_info["name"])
    return json_response(await _secret_full_view(request, secret))


async def update_secret(request: web.Request) -> web.Response:
    body = await parse_body(request, SecretUpdate)
    service, name = _service(request), request.match_info["name"]
    before = await _secret_full_view(request, await service.secret(name))
    after = await _secret_full_view(request, await service.update_secret(name, body))
    record(
        request,
        resource_id=after.id,
        name=after.name,
        action="update",
        summary=f"secret {after.name} is now at version {after.current_version}",
        before=_audit(before),
        after=_audit(after),
    )
    return json_response(after)


async def delete_secret(request: web.Request) -> web.Response:
    service, name = _service(request), request.match_info["name"]
    before = await _secret_full_view(request, await service.secret(name))
    await service.delete_secret(name)
    record(
        request,
        resource_id=before.id,
        name=before.name,
        action="delete",
        summary=f"deleted secret {before.name}",
        before=_audit(before),
    )
    return web.Response(status=204)


async def secret_versions(request: web.Request) -> web.Response:
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
    before = await _secret_full_view(request, await service.secret(name))
    after = await _secret_full_view(request, await service.migrate(name, body.to))
    record(
        request,
        resource_id=after.id,
        name=after.name,
        action="migrate",
        summary=f"moved secret {after.name} from {before.manager} to {after.manager}",
        before=_audit(before),
        after=_audit(after),
    )
    return json_response(after)


def add_secret_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    sm = "/api/v1/secret-managers"
    one_sm = f"{sm}/{{name}}"
    s = "/api/v1/secrets"
    # Names may hold "/": clients send it as %2F, which the router matches as one segment.
    one_s = f"{s}/{{name}}"
    for route in (
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

"""Verifications under /api/v1/verifications: named specs (versioned, audited) and runs.

A run is an ordinary task of type ``verify``, submitted as the caller in the deployment's
application and environment (so the same execute and secret checks apply), carrying the
spec and the absolute windows computed here from the deployment task's record. The manager
never talks to the monitoring itself: the delegate does.
"""

from __future__ import annotations

import re

from aiohttp import web

from manager.access.places import places
from manager.access.principal import principal_of
from manager.api.audit_record import Change, in_transaction, unchanged
from manager.api.context import ctx
from manager.api.guards import ACCESS
from manager.api.http import ApiProblem, AuthKind, Route, RouteTable, json_response, parse_body
from manager.api.task_access import check_task
from manager.api.tasks import submit_parsed
from manager.records import VerificationRecord
from manager.schemas.tasks import TaskView
from manager.schemas.verify import VerificationList, VerificationPut, VerificationView, VerifyRun
from manager.verify.runs import verify_request
from manager.verify.service import Verifications, spec_of
from shared.verify.spec import VerifySpec

__all__ = ["VERIFICATIONS", "add_verification_routes"]

VERIFICATIONS: web.AppKey[Verifications] = web.AppKey("tether_verifications", Verifications)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _view(r: VerificationRecord) -> VerificationView:
    return VerificationView(
        name=r.name,
        version=r.version,
        spec=spec_of(r),
        created_at=r.created_at,
        created_by=r.created_by,
    )


def _audit_view(r: VerificationRecord) -> dict[str, object]:
    # Secret names only, never values: a spec holds no value.
    return {"version": r.version, "spec": spec_of(r).model_dump(mode="json")}


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not _NAME.match(name):
        raise ApiProblem(400, "invalid", "name: letters, digits, '.', '_' and '-'", field="name")
    return name


async def put_verification(request: web.Request) -> web.Response:
    name = _name(request)
    body = await parse_body(request, VerificationPut)
    service = request.app[VERIFICATIONS]
    before = await service.get(name)

    def written(r: VerificationRecord) -> Change:
        return Change(
            name,
            name,
            "create" if before is None else "update",
            f"{'created' if before is None else 'changed'} verification {name} (version"
            f" {r.version})",
            before=None if before is None else _audit_view(before),
            after=_audit_view(r),
        )

    actor = principal_of(request).actor.id
    record, created = await service.apply(
        name, body.spec, actor=actor, audit=in_transaction(request, written)
    )
    if not created:
        unchanged(request)
    return json_response(_view(record), status=201 if created else 200)


async def get_verification(request: web.Request) -> web.Response:
    name = _name(request)
    raw = request.query.get("version")
    version = None
    if raw is not None:
        if not raw.isdigit() or int(raw) < 1:
            raise ApiProblem(400, "invalid", "version: a positive integer", field="version")
        version = int(raw)
    record = await request.app[VERIFICATIONS].get(name, version)
    if record is None:
        what = name if version is None else f"{name} version {version}"
        raise ApiProblem(404, "not_found", f"no verification {what}")
    return json_response(_view(record))


async def list_verifications(request: web.Request) -> web.Response:
    records = await request.app[VERIFICATIONS].all()
    return json_response(VerificationList(verifications=[_view(r) for r in records]))


async def delete_verification(request: web.Request) -> web.Response:
    name = _name(request)

    def deleted(r: VerificationRecord) -> Change:
        return Change(
            name, name, "delete", f"deleted verification {name} (every version)", _audit_view(r)
        )

    found = await request.app[VERIFICATIONS].delete(name, audit=in_transaction(request, deleted))
    if not found:
        raise ApiProblem(404, "not_found", f"no verification {name}")
    return web.Response(status=204)


async def run_verification(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await parse_body(request, VerifyRun)
    where = await places(request.app[ACCESS].directory)
    task = check_task(
        request, await c.task_reads.get(body.deployment), where, "read", body.deployment
    )
    if task.deployment is None:
        raise ApiProblem(
            409,
            "conflict",
            f"task {task.id} is not a deployment (it carries no deployment data)",
            field="deployment",
        )
    if task.started_at is None or task.finished_at is None:
        raise ApiProblem(
            409, "conflict", f"deployment task {task.id} has not finished", field="deployment"
        )
    spec = body.spec or await _named_spec(request, body)
    submit = verify_request(
        spec,
        task.started_at,
        task.finished_at,
        now=c.clock(),
        selectors=body.selectors,
        timeout_s=body.timeout_s,
        # The deployment's place: the caller must be allowed to execute there.
        app=task.app_id,
        env=task.env_id,
    )
    return await submit_parsed(request, submit)


async def _named_spec(request: web.Request, body: VerifyRun) -> VerifySpec:
    assert body.verification is not None
    record = await request.app[VERIFICATIONS].get(body.verification, body.version)
    if record is None:
        raise ApiProblem(
            404, "not_found", f"no verification {body.verification}", field="verification"
        )
    return spec_of(record)


def add_verification_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    base = "/api/v1/verifications"
    table.add(
        Route(
            "PUT",
            f"{base}/{{name}}",
            put_verification,
            "Create or change a verification (a changed spec is a new version)",
            u,
            VerificationPut,
            VerificationView,
            errors=(400, 409),
            audit="verification",
        )
    )
    table.add(
        Route(
            "GET",
            base,
            list_verifications,
            "List verifications (latest versions)",
            u,
            None,
            VerificationList,
        )
    )
    table.add(
        Route(
            "GET",
            f"{base}/{{name}}",
            get_verification,
            "A verification's spec (the latest version, or ?version=N)",
            u,
            None,
            VerificationView,
            query={"version": "integer"},
            errors=(400, 404),
        )
    )
    table.add(
        Route(
            "DELETE",
            f"{base}/{{name}}",
            delete_verification,
            "Delete a verification and all its versions",
            u,
            status=204,
            errors=(400, 404),
            audit="verification",
        )
    )
    table.add(
        Route(
            "POST",
            "/api/v1/verification-runs",
            run_verification,
            "Verify a finished deployment task: submits a verify task",
            u,
            VerifyRun,
            TaskView,
            201,
            errors=(400, 404, 409),
            audit="task",
        )
    )

"""Runbooks, their runs and governance standards: ``/api/v1/runbooks``,
``/api/v1/runbook-runs``, ``/api/v1/standards``.

Who may do what: defining a runbook needs ``update`` where it runs (``manage_applications``
when its env is an input); reading one needs ``read`` there; starting or cancelling a run
needs ``execute`` in the run's app and env; deciding on an approval step needs membership of
a group it names (never the run's starter unless the runbook allows it); standards are
governance (``manage_governance`` to change them). A run the caller may not read answers 404.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from manager.access.entities import Entity
from manager.access.principal import Principal, principal_of
from manager.api.audit_record import AuditRecorder, Change, in_transaction
from manager.api.context import ctx
from manager.api.http import ApiProblem, AuthKind, Route, RouteTable, json_response, parse_body
from manager.core.audit_chain import AuditAppend
from manager.runbooks.service import RunBody, RunbookBody, RunbookService
from manager.runbooks.standards import StandardBody
from manager.schemas.runbooks import (
    ApprovalDecision,
    RunbookDefinition,
    RunbookList,
    RunbookView,
    RunList,
    RunStart,
    RunView,
    StandardDefinition,
    StandardList,
    StandardView,
)

__all__ = ["add_runbook_routes", "runbook_trigger_audit"]


def _service(request: web.Request) -> RunbookService:
    service = ctx(request).runbooks
    if service is None:
        raise ApiProblem(503, "unavailable", "runbooks are not enabled on this manager")
    return service


def _name(request: web.Request, field: str = "name") -> str:
    return request.match_info[field]


def _run_audit(run: RunBody) -> dict[str, object]:
    # Names, never input values or outputs (sealed at rest, and not for the trail).
    return {
        "runbook": run.runbook,
        "version": run.version,
        "app": run.app,
        "env": run.env,
        "state": run.progress.state,
        "trigger": run.trigger,
        "inputs": run.input_names,
        "steps": {
            str(spec.get("name")): p.status
            for spec, p in zip(run.definition.get("steps", []), run.progress.steps, strict=False)
        },
        **({} if run.freeze_override is None else {"freeze_override": run.freeze_override}),
    }


def runbook_trigger_audit(
    recorder: AuditRecorder,
) -> Callable[[Principal, str, Any], AuditAppend]:
    """The event of a run started by no request of its own (a webhook's trigger)."""

    def entry(principal: Principal, trigger: str, run: Entity[RunBody]) -> AuditAppend:
        return recorder.entry(
            principal.actor,
            Change(
                run.id,
                run.body.runbook,
                "create",
                f"started run {run.id} of runbook {run.body.runbook} ({trigger})",
                after=_run_audit(run.body),
            ),
            resource_type="runbook_run",
            method="TRIGGER",
            path=trigger,
            client_ip="local",
        )

    return entry


# -- definitions ----------------------------------------------------------------------------


async def put_runbook(request: web.Request) -> web.Response:
    name = _name(request)
    definition = await parse_body(request, RunbookDefinition)
    if definition.name != name:
        raise ApiProblem(400, "invalid", f"the body names {definition.name!r}, not {name!r}")

    def written(pair: tuple[RunbookBody | None, RunbookBody]) -> Change:
        before, after = pair
        return Change(
            name,
            name,
            "create" if before is None else "update",
            f"runbook {name} version {after.version}",
            before=None if before is None else before.definition,
            after=after.definition,
            app=definition.app,
        )

    view, _ = await _service(request).apply(
        definition, principal_of(request), audit=in_transaction(request, written)
    )
    return json_response(view)


async def _readable(request: web.Request, view: RunbookView) -> bool:
    return await _service(request).may_read(principal_of(request), view.definition)


async def list_runbooks(request: web.Request) -> web.Response:
    views = await _service(request).list_runbooks()
    shown = [v for v in views if await _readable(request, v)]
    return json_response(RunbookList(runbooks=shown))


async def get_runbook(request: web.Request) -> web.Response:
    raw = request.query.get("version")
    version = None
    if raw is not None:
        if not raw.isdigit() or not 0 < int(raw) < 2**31:
            raise ApiProblem(400, "invalid", "version: a positive number", field="version")
        version = int(raw)
    view = await _service(request).get(_name(request), version)
    if not await _readable(request, view):
        raise ApiProblem(404, "not_found", f"no runbook {_name(request)!r}")
    return json_response(view)


async def delete_runbook(request: web.Request) -> web.Response:
    name = _name(request)
    service = _service(request)
    view = await service.get(name)
    await service.may_define(view.definition, principal_of(request))

    def deleted(e: Entity[RunbookBody]) -> Change:
        return Change(name, name, "delete", f"deleted runbook {name}", e.body.definition)

    await service.delete(name, audit=in_transaction(request, deleted))
    return web.Response(status=204)


# -- runs -----------------------------------------------------------------------------------


async def start_run(request: web.Request) -> web.Response:
    body = await parse_body(request, RunStart)
    service = _service(request)

    def started(run: Entity[RunBody]) -> Change:
        return Change(
            run.id,
            run.body.runbook,
            "create",
            f"started run {run.id} of runbook {run.body.runbook}",
            after=_run_audit(run.body),
        )

    run, new = await service.start(
        _name(request),
        body.inputs,
        principal_of(request),
        trigger="api",
        idempotency_key=body.idempotency_key,
        override_freeze=body.override_freeze,
        audit=in_transaction(request, started),
    )
    return json_response(await service.view(run), status=201 if new else 200)


async def _visible_run(request: web.Request) -> Entity[RunBody]:
    service = _service(request)
    run_id = request.match_info["run_id"]
    run = await service.get_run(run_id)
    if not service.may_see_run(principal_of(request), run):
        raise ApiProblem(404, "not_found", f"no run {run_id}")
    return run


async def list_runs(request: web.Request) -> web.Response:
    service = _service(request)
    principal = principal_of(request)
    runbook = request.query.get("runbook")
    runs = [
        r
        for r in await service.list_runs()
        if service.may_see_run(principal, r) and (runbook is None or r.body.runbook == runbook)
    ]
    return json_response(RunList(runs=await service.views(runs[:500])))


async def get_run(request: web.Request) -> web.Response:
    return json_response(await _service(request).view(await _visible_run(request)))


def _decided(action: str) -> Callable[[tuple[RunBody, Entity[RunBody]]], Change]:
    def describe(pair: tuple[RunBody, Entity[RunBody]]) -> Change:
        before, after = pair
        return Change(
            after.id,
            after.body.runbook,
            action,
            f"{action} run {after.id} of runbook {after.body.runbook}",
            before=_run_audit(before),
            after=_run_audit(after.body),
        )

    return describe


async def _decide(request: web.Request, approve: bool) -> web.Response:
    body = await parse_body(request, ApprovalDecision)
    run = await _visible_run(request)
    service = _service(request)
    written = await service.decide(
        run.id,
        principal_of(request),
        approve=approve,
        reason=body.reason,
        step=body.step,
        audit=in_transaction(request, _decided("approve" if approve else "reject")),
    )
    return json_response(await service.view(written))


async def approve_run(request: web.Request) -> web.Response:
    return await _decide(request, True)


async def reject_run(request: web.Request) -> web.Response:
    return await _decide(request, False)


async def cancel_run(request: web.Request) -> web.Response:
    run = await _visible_run(request)
    service = _service(request)
    principal = principal_of(request)
    if not service.may_execute(principal, run):
        raise ApiProblem(403, "forbidden", f"you may not execute in {run.body.app}/{run.body.env}")
    written = await service.cancel(
        run.id, principal, audit=in_transaction(request, _decided("cancel"))
    )
    return json_response(await service.view(written))


# -- standards ------------------------------------------------------------------------------


async def put_standard(request: web.Request) -> web.Response:
    name = _name(request)
    definition = await parse_body(request, StandardDefinition)
    if definition.name != name:
        raise ApiProblem(400, "invalid", f"the body names {definition.name!r}, not {name!r}")

    def written(pair: tuple[StandardBody | None, Entity[StandardBody]]) -> Change:
        before, after = pair
        return Change(
            after.id,
            name,
            "create" if before is None else "update",
            f"standard {name} version {after.body.version}",
            before=None if before is None else before.definition,
            after=after.body.definition,
        )

    view, _ = await _service(request).standards.apply(
        definition, audit=in_transaction(request, written)
    )
    return json_response(view)


async def list_standards(request: web.Request) -> web.Response:
    return json_response(StandardList(standards=await _service(request).standards.list_all()))


async def get_standard(request: web.Request) -> web.Response:
    return json_response(await _service(request).standards.get(_name(request)))


async def delete_standard(request: web.Request) -> web.Response:
    name = _name(request)

    def deleted(e: Entity[StandardBody]) -> Change:
        return Change(e.id, name, "delete", f"deleted standard {name}", e.body.definition)

    await _service(request).standards.delete(name, audit=in_transaction(request, deleted))
    return web.Response(status=204)


def add_runbook_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    rb = "/api/v1/runbooks"
    runs = "/api/v1/runbook-runs"
    std = "/api/v1/standards"
    table.add(
        Route(
            "PUT",
            f"{rb}/{{name}}",
            put_runbook,
            "Create a runbook or store its next version",
            u,
            RunbookDefinition,
            RunbookView,
            errors=(400, 403, 409),
            audit="runbook",
        )
    )
    table.add(Route("GET", rb, list_runbooks, "List runbooks", u, None, RunbookList))
    table.add(
        Route(
            "GET",
            f"{rb}/{{name}}",
            get_runbook,
            "A runbook (a version of it), with its conformance scores",
            u,
            None,
            RunbookView,
            query={"version": "integer"},
            errors=(400, 404),
        )
    )
    table.add(
        Route(
            "DELETE",
            f"{rb}/{{name}}",
            delete_runbook,
            "Delete a runbook (its versions and runs stay)",
            u,
            status=204,
            errors=(403, 404),
            audit="runbook",
        )
    )
    table.add(
        Route(
            "POST",
            f"{rb}/{{name}}/runs",
            start_run,
            "Start a run of a runbook",
            u,
            RunStart,
            RunView,
            status=201,
            errors=(400, 403, 404, 409),
            audit="runbook_run",
        )
    )
    table.add(
        Route(
            "GET",
            runs,
            list_runs,
            "List runbook runs, newest first",
            u,
            None,
            RunList,
            query={"runbook": "string"},
        )
    )
    table.add(Route("GET", f"{runs}/{{run_id}}", get_run, "A run", u, None, RunView, errors=(404,)))
    for verb, handler, summary in (
        ("approve", approve_run, "Approve the step a run waits on"),
        ("reject", reject_run, "Reject the step a run waits on"),
    ):
        table.add(
            Route(
                "POST",
                f"{runs}/{{run_id}}/{verb}",
                handler,
                summary,
                u,
                ApprovalDecision,
                RunView,
                errors=(400, 403, 404, 409),
                audit="runbook_run",
            )
        )
    table.add(
        Route(
            "POST",
            f"{runs}/{{run_id}}/cancel",
            cancel_run,
            "Cancel a run",
            u,
            None,
            RunView,
            errors=(403, 404, 409),
            audit="runbook_run",
        )
    )
    table.add(
        Route(
            "PUT",
            f"{std}/{{name}}",
            put_standard,
            "Create a governance standard or change it",
            u,
            StandardDefinition,
            StandardView,
            errors=(400, 409),
            audit="standard",
        )
    )
    table.add(Route("GET", std, list_standards, "List governance standards", u, None, StandardList))
    table.add(
        Route(
            "GET",
            f"{std}/{{name}}",
            get_standard,
            "A governance standard",
            u,
            None,
            StandardView,
            errors=(404,),
        )
    )
    table.add(
        Route(
            "DELETE",
            f"{std}/{{name}}",
            delete_standard,
            "Delete a governance standard",
            u,
            status=204,
            errors=(404,),
            audit="standard",
        )
    )

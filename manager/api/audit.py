"""The audit trail under /api/v1/audit: query, export, verify, and saved filters."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict

from aiohttp import web
from pydantic import ValidationError

from manager.api.audit_record import AUDIT, Change, in_transaction
from manager.api.context import ctx
from manager.api.http import ApiProblem, AuthKind, Route, RouteTable, json_response, parse_body
from manager.api.identity import actor_of
from manager.core.audit_chain import (
    EVENT_FIELDS,
    AuditEvent,
    AuditQuery,
    SavedAuditFilter,
)
from manager.schemas.audit import (
    AuditBroken,
    AuditEventView,
    AuditFilterCreate,
    AuditFilterList,
    AuditFilterView,
    AuditList,
    AuditQueryModel,
    AuditVerifyReport,
)
from shared.ids import new_id
from shared.protocol import describe_validation_error

__all__ = ["add_audit_routes"]

_FILTERS = ("since", "until", "actor", "type", "app", "action", "text", "limit")
_FILTER_TYPES = {
    "since": "number",
    "until": "number",
    "actor": "string",
    "type": "string",
    "app": "string",
    "action": "string",
    "text": "string",
    "limit": "integer",
    # The name of a saved filter; the parameters given beside it win over its own.
    "filter": "string",
}
# A cursor beyond any seq a BIGINT holds is no cursor.
_MAX_SEQ = 2**62
_EXPORT_CHUNK = 64 * 1024


def _event_view(e: AuditEvent) -> AuditEventView:
    return AuditEventView(**asdict(e))


def _filter_view(f: SavedAuditFilter) -> AuditFilterView:
    return AuditFilterView(
        id=f.id, name=f.name, query=AuditQueryModel.model_validate(f.query), created_at=f.created_at
    )


def _validate_query(data: dict[str, object]) -> AuditQueryModel:
    try:
        return AuditQueryModel.model_validate(data)
    except ValidationError as exc:
        field, message = describe_validation_error(exc)
        raise ApiProblem(400, "invalid", message, field=field) from None


async def _query(request: web.Request) -> AuditQuery:
    """The filters of the request's query string, over the saved filter it names."""
    given: dict[str, object] = {k: v for k in _FILTERS if (v := request.query.get(k))}
    model = _validate_query(given)
    if name := request.query.get("filter"):
        saved = await ctx(request).audit.saved_filter(actor_of(request).id, name)
        if saved is None:
            raise ApiProblem(404, "not_found", f"no saved audit filter {name!r}", field="filter")
        model = _validate_query({**saved.query, **model.model_dump(exclude_none=True)})
    before = None
    if raw := request.query.get("before"):
        # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
        if not (raw.isascii() and raw.isdigit()) or int(raw) > _MAX_SEQ:
            raise ApiProblem(400, "invalid", "before: expected a seq (an integer)", field="before")
        before = int(raw)
    return AuditQuery(
        since=model.since,
        until=model.until,
        actor=model.actor,
        resource_type=model.type,
        app=model.app,
        action=model.action,
        text=model.text,
        before=before,
        limit=model.limit or 100,
    )


async def list_audit(request: web.Request) -> web.Response:
    query = await _query(request)
    events = await ctx(request).audit.page(query)
    more = len(events) == query.limit
    return json_response(
        AuditList(
            events=[_event_view(e) for e in events],
            next=str(events[-1].seq) if events and more else None,
        )
    )


async def export_audit(request: web.Request) -> web.StreamResponse:
    """Every matching event, oldest first, streamed a page at a time (no limit applies)."""
    fmt = request.query.get("format", "jsonl")
    if fmt not in ("jsonl", "csv"):
        raise ApiProblem(400, "invalid", "format: jsonl or csv", field="format")
    query = await _query(request)
    content_type = "application/x-ndjson" if fmt == "jsonl" else "text/csv; charset=utf-8"
    resp = web.StreamResponse(
        headers={
            "Content-Type": content_type,
            "Content-Disposition": f'attachment; filename="audit.{fmt}"',
        }
    )
    await resp.prepare(request)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(EVENT_FIELDS)
    async for event in ctx(request).audit.every(query):
        if fmt == "csv":
            writer.writerow(["" if v is None else v for v in asdict(event).values()])
        else:
            buf.write(json.dumps(asdict(event), separators=(",", ":"), ensure_ascii=False))
            buf.write("\n")
        if buf.tell() >= _EXPORT_CHUNK:
            await resp.write(buf.getvalue().encode())
            buf.seek(0)
            buf.truncate()
    await resp.write(buf.getvalue().encode())
    await resp.write_eof()
    return resp


async def verify_audit(request: web.Request) -> web.Response:
    """Check every stored event, past the head too (manager.audit.trail.AuditTrail.verify)."""
    # With the chain's keys: a trail re-hashed from the database alone does not pass.
    verified = await ctx(request).audit.verify(request.app[AUDIT].keys.lookup)
    broken = verified.broken
    return json_response(
        AuditVerifyReport(
            ok=broken is None,
            checked=verified.checked,
            head_seq=verified.head_seq,
            broken=None if broken is None else AuditBroken(seq=broken.seq, reason=broken.reason),
        )
    )


# -- saved filters -----------------------------------------------------------------------


async def list_filters(request: web.Request) -> web.Response:
    saved = await ctx(request).audit.saved_filters(actor_of(request).id)
    return json_response(AuditFilterList(filters=[_filter_view(f) for f in saved]))


async def create_filter(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await parse_body(request, AuditFilterCreate)
    saved = SavedAuditFilter(
        id=new_id("af"),
        owner=actor_of(request).id,
        name=body.name,
        query=body.query.model_dump(exclude_none=True),
        created_at=c.clock(),
    )

    def made(f: SavedAuditFilter) -> Change:
        after = _filter_view(f).model_dump(mode="json")
        return Change(f.id, f.name, "create", f"saved audit filter {f.name}", after=after)

    await c.audit.save_filter(saved, audit=in_transaction(request, made))
    return json_response(_filter_view(saved), status=201)


async def delete_filter(request: web.Request) -> web.Response:
    owner, name = actor_of(request).id, request.match_info["name"]

    def deleted(f: SavedAuditFilter) -> Change:
        before = _filter_view(f).model_dump(mode="json")
        return Change(f.id, f.name, "delete", f"deleted saved audit filter {f.name}", before)

    await ctx(request).audit.delete_filter(owner, name, audit=in_transaction(request, deleted))
    return web.Response(status=204)


def add_audit_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    base = "/api/v1/audit"
    for route in (
        Route(
            "GET",
            base,
            list_audit,
            "List audit events, newest first",
            u,
            None,
            AuditList,
            query={**_FILTER_TYPES, "before": "integer"},
            errors=(400, 404),
        ),
        Route(
            "GET",
            f"{base}/export",
            export_audit,
            "Export audit events, oldest first, as JSON Lines or CSV",
            u,
            query={**{k: v for k, v in _FILTER_TYPES.items() if k != "limit"}, "format": "string"},
            streaming="export",
            errors=(400, 404),
        ),
        Route(
            "GET",
            f"{base}/verify",
            verify_audit,
            "Verify the audit trail's hash chain; name the first broken link",
            u,
            None,
            AuditVerifyReport,
        ),
        Route(
            "GET",
            f"{base}/filters",
            list_filters,
            "List your saved audit filters",
            u,
            None,
            AuditFilterList,
        ),
        Route(
            "POST",
            f"{base}/filters",
            create_filter,
            "Save an audit filter",
            u,
            AuditFilterCreate,
            AuditFilterView,
            201,
            errors=(400, 409),
            audit="audit_filter",
        ),
        Route(
            "DELETE",
            f"{base}/filters/{{name}}",
            delete_filter,
            "Delete a saved audit filter",
            u,
            status=204,
            errors=(404,),
            audit="audit_filter",
        ),
    ):
        table.add(route)

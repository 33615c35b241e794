"""The delegates as users see them: the list, drain and resume, and delete."""

from __future__ import annotations

import re

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from manager.api.audit_record import Change, in_transaction
from manager.api.context import Context, ctx
from manager.api.http import ApiProblem, AuthKind, Route, RouteTable, json_response
from manager.records import (
    DelegateRecord,
)
from manager.schemas.tasks import (
    DelegateView,
)
from shared import __version__
from shared.protocol import PROTOCOL_VERSION

__all__ = ["DelegateList", "add_delegate_list_routes", "is_outdated"]


class DelegateList(BaseModel):
    model_config = ConfigDict(defer_build=True)
    delegates: list[DelegateView]


# A follow stream writes a ping this often when idle, under common proxy idle limits.
async def _delegate_views(c: Context, records: list[DelegateRecord]) -> list[DelegateView]:
    views = []
    known = await c.delegates.known()
    for d in records:
        session = c.hub.sessions.get(d.id)
        last = c.hub.last_heartbeat(d.id)
        status = c.hub.status(d.id)
        remote = known.elsewhere.get(d.id)
        if status == "disconnected" and remote is not None and remote.replica_id != c.replica_id:
            status = "connected" if remote.mode == "stream" else "polling"
            last = remote.last_heartbeat
        views.append(
            DelegateView(
                id=d.id,
                name=d.name,
                hostname=d.hostname,
                version=d.version,
                protocol_version=d.protocol_version,
                selectors=list(d.selectors),
                task_types=list(d.task_types),
                capacity=d.capacity,
                status=status,
                last_heartbeat=last if last is not None else d.last_seen,
                running=sorted(c.hub.leases.held_by(d.id) | set(session.listed if session else ())),
                draining=d.draining,
                outdated=is_outdated(d.version, d.protocol_version),
                isolation="task_users" if d.isolation == "task_users" else "shared_user",
                token=known.token_names.get(d.token_id),
                scope=known.scopes.get(d.token_id),
            )
        )
    return views


def is_outdated(version: str, protocol_version: int, manager_version: str = __version__) -> bool:
    """Older than this manager: an older protocol, or an older release of the same one.

    A manager built without its git tag (``0.0.0+unknown``, a tagless clone) knows no release
    to compare with, so only the protocol can mark a delegate outdated then.
    """
    if protocol_version < PROTOCOL_VERSION:
        return True
    mine = _release(manager_version)
    if not any(mine):
        return False
    return _release(version) < mine


def _release(version: str) -> tuple[int, ...]:
    """The leading release numbers: ``0.2.0rc1`` and ``0.2.0.dev3+g12ab`` are both (0, 2, 0)."""
    found = _RELEASE.match(version)
    return tuple(int(n) for n in found.group(0).split(".")) if found else ()


_RELEASE = re.compile(r"\d+(?:\.\d+)*")


async def list_delegates(request: web.Request) -> web.Response:
    c = ctx(request)
    return json_response(DelegateList(delegates=await _delegate_views(c, await c.delegates.all())))


async def _set_draining(request: web.Request, draining: bool) -> web.Response:
    """Drain (or resume) every delegate with that id or name: a name may cover a group."""
    c = ctx(request)
    ref = request.match_info["delegate"]
    verb = "drain" if draining else "resume"

    def flipped(rows: list[DelegateRecord]) -> Change:
        # One request, one event, however many delegates share the name: of the rows that
        # flipped (none flipped, none written: no event).
        return Change(
            ",".join(d.id for d in rows),
            ref,
            verb,
            f"{verb}: {len(rows)} delegate(s) matching {ref!r}",
            before=[{"id": d.id, "name": d.name, "draining": not draining} for d in rows],
            after=[{"id": d.id, "name": d.name, "draining": d.draining} for d in rows],
        )

    changed, _ = await c.delegates.set_draining(
        await c.delegates.matching(ref), draining, audit=in_transaction(request, flipped)
    )
    return json_response(DelegateList(delegates=await _delegate_views(c, changed)))


async def drain_delegate(request: web.Request) -> web.Response:
    return await _set_draining(request, True)


async def resume_delegate(request: web.Request) -> web.Response:
    return await _set_draining(request, False)


async def delete_delegate(request: web.Request) -> web.Response:
    """Forget delegates (by id or name) that are gone, so their name and key are free for
    another token. A connected one is refused unless ``force``: its stream is then closed
    as revoked, and the tasks it ran are requeued when their leases run out."""
    c = ctx(request)
    ref = request.match_info["delegate"]
    force = request.query.get("force", "").lower() in ("1", "true", "yes")
    matches = await c.delegates.matching(ref)
    views = {v.id: v for v in await _delegate_views(c, matches)}
    live = [v.id for v in views.values() if v.status != "disconnected"]
    if live and not force:
        raise ApiProblem(
            409,
            "conflict",
            f"delegate {ref!r} is connected ({', '.join(live)}); stop it first, or pass force",
        )

    def deleted_ones(rows: list[DelegateRecord]) -> Change:
        fields = {"id", "name", "token", "status"}
        return Change(
            ",".join(d.id for d in rows),
            ref,
            "delete",
            f"deleted {len(rows)} delegate(s) matching {ref!r}",
            before=[views[d.id].model_dump(mode="json", include=fields) for d in rows],
        )

    deleted = await c.delegates.delete(matches, audit=in_transaction(request, deleted_ones))
    if not deleted:
        raise ApiProblem(404, "not_found", f"no delegate named {ref!r}")
    return json_response(DelegateList(delegates=[views[d.id] for d in deleted]))


def add_delegate_list_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    table.add(
        Route("GET", "/api/v1/delegates", list_delegates, "List delegates", u, None, DelegateList)
    )
    for action, handler, summary in (
        ("drain", drain_delegate, "Drain delegates (by id or name): no new tasks"),
        ("resume", resume_delegate, "Let drained delegates take tasks again"),
    ):
        table.add(
            Route(
                "POST",
                f"/api/v1/delegates/{{delegate}}/{action}",
                handler,
                summary,
                u,
                None,
                DelegateList,
                errors=(404,),
                audit="delegate",
            )
        )
    table.add(
        Route(
            "DELETE",
            "/api/v1/delegates/{delegate}",
            delete_delegate,
            "Delete delegates (by id or name) that are gone; force: connected ones too",
            u,
            None,
            DelegateList,
            query={"force": "boolean"},
            errors=(404, 409),
            audit="delegate",
        )
    )

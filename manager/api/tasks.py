"""The user API under /api/v1: tasks, their logs, delegates and delegate tokens."""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from manager.api.audit_record import record, unchanged
from manager.api.context import Context, ctx
from manager.api.guards import ACCESS, recheck
from manager.api.http import ApiProblem, AuthKind, Route, RouteTable, json_response, parse_body
from manager.api.task_access import check_secrets, check_task, submit_target
from manager.errors import DomainError
from manager.records import (
    AttemptRecord,
    DelegateRecord,
    LogRecord,
    TaskFilter,
    TaskRecord,
    TokenRecord,
)
from manager.schemas.grants import Action
from manager.schemas.tasks import (
    AttemptView,
    DelegateView,
    LogEntry,
    LogPage,
    TaskList,
    TaskSubmit,
    TaskView,
    TokenCreate,
    TokenCreated,
    TokenScopeView,
    TokenView,
)
from manager.tasks.idempotency import shown
from shared import __version__
from shared.protocol import FINAL_STATES, PROTOCOL_VERSION, CloseCode, TaskDrain, TaskState

__all__ = ["DelegateList", "TokenList", "add_user_routes", "revoke_token"]

log = structlog.get_logger("tether.api")

# A follow stream writes a ping this often when idle, under common proxy idle limits.
FOLLOW_PING_S = 15.0
# How often a follow stream judges its credential again when no change here wakes it sooner.
FOLLOW_RECHECK_S = 2.0
LOG_PAGE_MAX = 5000


class DelegateList(BaseModel):
    delegates: list[DelegateView]


class TokenList(BaseModel):
    tokens: list[TokenView]


# -- views --------------------------------------------------------------------------------


def task_view(
    task: TaskRecord,
    attempts: list[AttemptRecord] | None = None,
    names: dict[str, str] | None = None,
    where: Places | None = None,
) -> TaskView:
    names = names or {}
    app, env = (None, None) if where is None else where.names(task)
    return TaskView.model_validate(
        {
            "id": task.id,
            "type": task.type,
            "state": task.state,
            "payload": task.payload,
            "selectors": list(task.selectors),
            "secret_env_names": list(task.secret_env_names),
            "timeout_s": task.timeout_s,
            "queue_timeout_s": task.queue_timeout_s,
            "max_attempts": task.max_attempts,
            "attempt": task.attempt,
            "delegate_id": task.delegate_id,
            "idempotency_key": shown(task.idempotency_key),
            "created_at": task.created_at,
            "started_at": task.started_at,
            "finished_at": task.finished_at,
            "exit_code": task.exit_code,
            "outputs": task.outputs,
            "error": task.error,
            "cancel_requested": task.cancel_requested,
            "deployment": task.deployment,
            "app_id": task.app_id,
            "env_id": task.env_id,
            "app": app,
            "env": env,
            "submitted_by": task.submitted_by,
            "attempts": [
                AttemptView(
                    attempt=a.attempt,
                    delegate_id=a.delegate_id,
                    delegate_name=names.get(a.delegate_id),
                    started_at=a.started_at,
                    finished_at=a.finished_at,
                    status=a.status,
                )
                for a in attempts or []
            ],
        }
    )


async def full_task_view(c: Context, task: TaskRecord, where: Places | None = None) -> TaskView:
    attempts = await c.store.attempts(task.id)
    names = {d.id: d.name for d in await c.store.list_delegates()} if attempts else {}
    return task_view(task, attempts, names, where)


async def _places(request: web.Request) -> Places:
    return await places(request.app[ACCESS].directory)


async def _task_for(request: web.Request, action: Action) -> tuple[TaskRecord, Places]:
    task_id = request.match_info["task_id"]
    where = await _places(request)
    task = check_task(request, await ctx(request).store.get_task(task_id), where, action, task_id)
    return task, where


def _log_entry(rec: LogRecord) -> LogEntry:
    return LogEntry(attempt=rec.attempt, seq=rec.seq, stream=rec.stream, ts=rec.ts, text=rec.text)


def _cursor(pos: tuple[int, int] | None) -> str:
    return "" if pos is None else f"{pos[0]}:{pos[1]}"


def _parse_cursor(raw: str | None) -> tuple[int, int] | None:
    if not raw:
        return None
    attempt, _, seq = raw.partition(":")
    try:
        return int(attempt), int(seq)
    except ValueError:
        raise ApiProblem(
            400, "invalid", "after: expected a cursor like '1:42'", field="after"
        ) from None


def _int_query(request: web.Request, name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiProblem(400, "invalid", f"{name}: expected an integer", field=name) from None
    if not lo <= value <= hi:
        raise ApiProblem(400, "invalid", f"{name}: must be between {lo} and {hi}", field=name)
    return value


def _float_query(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ApiProblem(400, "invalid", f"{name}: expected a number", field=name) from None


# -- tasks --------------------------------------------------------------------------------


async def submit_task(request: web.Request) -> web.Response:
    c = ctx(request)
    req = await parse_body(request, TaskSubmit)
    target = await submit_target(request, req.app, req.env)
    place = f"{req.app}/{req.env}" if target is not None else "tasks outside an application"
    await check_secrets(request, req.payload, target, place)
    actor = principal_of(request).actor
    task, created = await c.tasks.submit(req, target=target, submitted_by=actor.id)
    if created:
        record(
            request,
            resource_id=task.id,
            name=_task_name(task),
            action="create",
            summary=f"submitted {task.type} task {task.id}",
            after=_task_audit(task),
            app=req.app,
        )
    else:
        unchanged(request)  # the task of an earlier submit with the same idempotency key
    where = await _places(request)
    return json_response(task_view(task, where=where), status=201 if created else 200)


def _task_name(task: TaskRecord) -> str:
    d = task.deployment
    if d is not None:
        return f"deploy {d.get('service')} to {d.get('environment')}"
    return f"{task.type} task"


def _task_audit(task: TaskRecord) -> dict[str, object]:
    # What was asked for; secret env values are not in the view (names only).
    return task_view(task).model_dump(
        mode="json",
        include={
            "id",
            "type",
            "state",
            "payload",
            "selectors",
            "secret_env_names",
            "timeout_s",
            "queue_timeout_s",
            "max_attempts",
            "idempotency_key",
            "deployment",
            "app_id",
            "env_id",
        },
    )


async def list_tasks(request: web.Request) -> web.Response:
    tasks, where = await _filtered_tasks(request, deployments_only=False)
    return json_response(TaskList(tasks=[task_view(t, where=where) for t in tasks]))


async def list_deployments(request: web.Request) -> web.Response:
    """Deployment history: tasks that carry deployment data, by app, env, service, status
    and time."""
    tasks, where = await _filtered_tasks(request, deployments_only=True)
    return json_response(TaskList(tasks=[task_view(t, where=where) for t in tasks]))


async def _filtered_tasks(
    request: web.Request, *, deployments_only: bool
) -> tuple[list[TaskRecord], Places]:
    c = ctx(request)
    q = request.query
    state_raw = q.get("state") or q.get("status")
    try:
        state = TaskState(state_raw) if state_raw else None
    except ValueError:
        valid = ", ".join(s.value for s in TaskState)
        raise ApiProblem(400, "invalid", f"state: one of {valid}", field="state") from None
    where = await _places(request)
    app_id, env_id = _place_ids(where, q.get("app") or None, q.get("env") or None)
    flt = TaskFilter(
        state=state,
        delegate_id=q.get("delegate") or None,
        since=_float_query(request, "since"),
        until=_float_query(request, "until"),
        limit=_int_query(request, "limit", 100, lo=1, hi=1000),
        app_id=app_id,
        env_id=env_id,
        deployments_only=deployments_only,
        service=q.get("service") or None,
    )
    grants = principal_of(request).grants
    # Tasks the caller may not read are left out (a page may then hold fewer than limit).
    tasks = [t for t in await c.store.list_tasks(flt) if grants.allows(where.target(t), "read")]
    return tasks, where


def _place_ids(where: Places, app: str | None, env: str | None) -> tuple[str | None, str | None]:
    """Filter values by name or id; an unknown one is a 400, not an empty list."""
    app_id = None
    if app is not None:
        app_id = next((i for i, n in where.apps.items() if app in (i, n)), None)
        if app_id is None:
            raise ApiProblem(400, "invalid", f"no application {app!r}", field="app")
    env_id = None
    if env is not None:
        if app_id is None:
            raise ApiProblem(400, "invalid", "env needs app", field="env")
        env_id = next(
            (i for i, (a, n, _) in where.envs.items() if a == app_id and env in (i, n)), None
        )
        if env_id is None:
            raise ApiProblem(400, "invalid", f"no environment {env!r} in {app!r}", field="env")
    return app_id, env_id


async def get_task(request: web.Request) -> web.Response:
    task, where = await _task_for(request, "read")
    return json_response(await full_task_view(ctx(request), task, where))


async def cancel_task(request: web.Request) -> web.Response:
    c = ctx(request)
    task_id = request.match_info["task_id"]
    before, _ = await _task_for(request, "execute")
    task = await c.tasks.cancel(task_id)
    was = _cancel_fields(before)
    now = _cancel_fields(task)
    if was is None or was == now:
        unchanged(request)  # already final, or already asked to cancel
    else:
        cancelled = task.state is TaskState.CANCELLED
        record(
            request,
            resource_id=task.id,
            name=_task_name(task),
            action="cancel",
            summary=f"cancelled task {task.id}"
            if cancelled
            else f"asked the delegate running task {task.id} to cancel it",
            before=was,
            after=now,
        )
    return json_response(task_view(task))


def _cancel_fields(task: TaskRecord) -> dict[str, object]:
    return {"state": task.state.value, "cancel_requested": task.cancel_requested}


async def get_logs(request: web.Request) -> web.Response:
    c = ctx(request)
    task_id = request.match_info["task_id"]
    after = _parse_cursor(request.query.get("after"))
    limit = _int_query(request, "limit", 1000, lo=1, hi=LOG_PAGE_MAX)
    task, _ = await _task_for(request, "read")
    lines = await c.store.get_logs(task_id, after=after, limit=limit)
    pos = (lines[-1].attempt, lines[-1].seq) if lines else after
    return json_response(
        LogPage(lines=[_log_entry(r) for r in lines], cursor=_cursor(pos), state=task.state)
    )


async def follow_logs(request: web.Request) -> web.StreamResponse:
    c = ctx(request)
    access = request.app[ACCESS]
    task_id = request.match_info["task_id"]
    pos = _parse_cursor(request.query.get("after"))
    await _task_for(request, "read")
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    last_sent = last_check = loop.time()

    async def send(obj: dict[str, object]) -> None:
        nonlocal last_sent
        await resp.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        last_sent = loop.time()

    last_state: TaskState | None = None
    with contextlib.suppress(ConnectionResetError):
        while not c.stopping:
            changed = c.events.listen(task_id)
            revoked = access.principals.changed()
            task = await c.store.get_task(task_id)
            if task is None:
                break
            if task.state is not last_state:
                last_state = task.state
                await send({"kind": "state", "state": task.state.value})
            lines = await c.store.get_logs(task_id, after=pos, limit=1000)
            for rec in lines:
                await send({"kind": "log", "line": _log_entry(rec).model_dump(mode="json")})
            if lines:
                pos = (lines[-1].attempt, lines[-1].seq)
                if len(lines) == 1000:
                    continue
            if task.state in FINAL_STATES:
                # The delegate ships every log line before it reports, so once the state read
                # above is final, the read after it saw the whole log.
                view = await full_task_view(c, task)
                await send({"kind": "end", "task": view.model_dump(mode="json")})
                break
            await _first_of(changed, revoked, timeout=FOLLOW_RECHECK_S)
            if revoked.is_set() or loop.time() - last_check >= FOLLOW_RECHECK_S:
                # The stream outlives the check that opened it: a credential revoked, a user
                # disabled or a read permission taken away since ends it (a change here at
                # once, one on another replica within the recheck and the caches' 1 s).
                last_check = loop.time()
                try:
                    await recheck(request)
                    await _task_for(request, "read")
                except (ApiProblem, DomainError) as p:
                    await send({"kind": "error", "error": {"code": p.code, "message": p.message}})
                    break
            if loop.time() - last_sent >= FOLLOW_PING_S:
                await send({"kind": "ping"})
        await resp.write_eof()
    return resp


async def _first_of(a: asyncio.Event, b: asyncio.Event, *, timeout: float) -> None:
    """Until either event is set, or ``timeout``."""
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


# -- delegates and tokens -----------------------------------------------------------------


async def _delegate_views(c: Context, records: list[DelegateRecord]) -> list[DelegateView]:
    views = []
    # Delegates held by other replicas are known from the presence rows they write.
    elsewhere = await c.store.presence(c.clock() - c.timings.lost_after)
    _, scopes = await scope_views(c.store)
    token_names = {t.id: t.name for t in await c.store.list_tokens()}
    for d in records:
        session = c.hub.sessions.get(d.id)
        last = c.hub.liveness.last_seen(d.id)
        status = c.hub.status(d.id)
        remote = elsewhere.get(d.id)
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
                token=token_names.get(d.token_id),
                scope=scopes.get(d.token_id),
            )
        )
    return views


def is_outdated(version: str, protocol_version: int) -> bool:
    """Older than this manager: an older protocol, or an older release of the same one."""
    if protocol_version < PROTOCOL_VERSION:
        return True
    return _release(version) < _release(__version__)


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


async def list_delegates(request: web.Request) -> web.Response:
    c = ctx(request)
    return json_response(
        DelegateList(delegates=await _delegate_views(c, await c.store.list_delegates()))
    )


async def _set_draining(request: web.Request, draining: bool) -> web.Response:
    """Drain (or resume) every delegate with that id or name: a name may cover a group."""
    c = ctx(request)
    ref = request.match_info["delegate"]
    matches = [d for d in await c.store.list_delegates() if ref in (d.id, d.name)]
    if not matches:
        raise ApiProblem(404, "not_found", f"no delegate named {ref!r}")
    changed = []
    flipped = []
    for d in matches:
        updated = await c.store.set_draining(d.id, draining)
        if updated is None:
            continue
        changed.append(updated)
        if d.draining != draining:
            flipped.append(updated)
        session = c.hub.sessions.get(d.id)
        if session is not None:
            session.delegate = updated
            session.draining = draining
            if draining:
                c.hub.send(session, TaskDrain())
        log.info(
            "delegate drain" if draining else "delegate resumed", delegate_id=d.id, name=d.name
        )
    if not draining:
        c.dispatcher.kick()
    verb = "drain" if draining else "resume"
    if flipped:
        # One request, one event, however many delegates share the name.
        record(
            request,
            resource_id=",".join(d.id for d in flipped),
            name=ref,
            action=verb,
            summary=f"{verb}: {len(flipped)} delegate(s) matching {ref!r}",
            before=[{"id": d.id, "name": d.name, "draining": not draining} for d in flipped],
            after=[{"id": d.id, "name": d.name, "draining": draining} for d in flipped],
        )
    else:
        unchanged(request)
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
    matches = [d for d in await c.store.list_delegates() if ref in (d.id, d.name)]
    if not matches:
        raise ApiProblem(404, "not_found", f"no delegate named {ref!r}")
    views = await _delegate_views(c, matches)
    live = [v.id for v in views if v.status != "disconnected"]
    if live and not force:
        raise ApiProblem(
            409,
            "conflict",
            f"delegate {ref!r} is connected ({', '.join(live)}); stop it first, or pass force",
        )
    deleted = []
    for view in views:
        if await c.store.delete_delegate(view.id):
            c.hub.drop(view.id, CloseCode.REVOKED, "delegate deleted")
            deleted.append(view)
            log.info("delegate deleted", delegate_id=view.id, name=view.name)
    if not deleted:
        raise ApiProblem(404, "not_found", f"no delegate named {ref!r}")
    record(
        request,
        resource_id=",".join(v.id for v in deleted),
        name=ref,
        action="delete",
        summary=f"deleted {len(deleted)} delegate(s) matching {ref!r}",
        before=[
            v.model_dump(mode="json", include={"id", "name", "token", "status"}) for v in deleted
        ],
    )
    return json_response(DelegateList(delegates=deleted))


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
    try:
        created, token = await create_token(c.store, req.name, scope)
    except TokenInUse as exc:
        raise ApiProblem(409, "conflict", str(exc), field="name") from None
    where = await places(request.app[ACCESS].directory)
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
    revoked = await revoke_token(c, request.match_info["name"])
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


def add_user_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    table.add(
        Route(
            "POST",
            "/api/v1/tasks",
            submit_task,
            "Submit a task",
            u,
            TaskSubmit,
            TaskView,
            201,
            errors=(400, 413),
            audit="task",
        )
    )
    table.add(
        Route(
            "GET",
            "/api/v1/tasks",
            list_tasks,
            "List tasks (those the caller may read)",
            u,
            None,
            TaskList,
            query={
                "state": "string",
                "delegate": "string",
                "since": "number",
                "until": "number",
                "limit": "integer",
                "app": "string",
                "env": "string",
            },
            errors=(400,),
        )
    )
    table.add(
        Route(
            "GET",
            "/api/v1/deployments",
            list_deployments,
            "Deployment history: tasks with deployment data",
            u,
            None,
            TaskList,
            query={
                "app": "string",
                "env": "string",
                "service": "string",
                "status": "string",
                "since": "number",
                "until": "number",
                "limit": "integer",
            },
            errors=(400,),
        )
    )
    table.add(
        Route(
            "GET",
            "/api/v1/tasks/{task_id}",
            get_task,
            "Get a task",
            u,
            None,
            TaskView,
            errors=(404,),
        )
    )
    table.add(
        Route(
            "POST",
            "/api/v1/tasks/{task_id}/cancel",
            cancel_task,
            "Cancel a task",
            u,
            None,
            TaskView,
            errors=(404, 503),
            audit="task",
        )
    )
    table.add(
        Route(
            "GET",
            "/api/v1/tasks/{task_id}/logs",
            get_logs,
            "A page of a task's log",
            u,
            None,
            LogPage,
            query={"after": "string", "limit": "integer"},
            errors=(400, 404),
        )
    )
    table.add(
        Route(
            "GET",
            "/api/v1/tasks/{task_id}/logs/follow",
            follow_logs,
            "Follow a task's log live (NDJSON)",
            u,
            query={"after": "string"},
            streaming="ndjson",
            errors=(400, 404),
        )
    )
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

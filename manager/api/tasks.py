"""Tasks through the API: submit, list, get, cancel, deployments, and their logs (a page, or
followed live). Delegates and tokens have modules of their own."""

from __future__ import annotations

import asyncio
import contextlib
import json

import structlog
from aiohttp import web

from manager.access.places import Places, places
from manager.access.principal import principal_of
from manager.api.audit_record import record, unchanged
from manager.api.context import Context, ctx
from manager.api.guards import ACCESS, recheck
from manager.api.http import ApiProblem, AuthKind, Route, RouteTable, json_response, parse_body
from manager.api.task_access import check_secrets, check_task, submit_target
from manager.errors import DomainError
from manager.records import (
    AttemptRecord,
    LogRecord,
    TaskFilter,
    TaskRecord,
)
from manager.schemas.grants import Action
from manager.schemas.tasks import (
    AttemptView,
    LogEntry,
    LogPage,
    TaskList,
    TaskSubmit,
    TaskView,
)
from manager.tasks.idempotency import shown
from shared.protocol import FINAL_STATES, TaskState

__all__ = ["add_task_routes", "full_task_view", "task_view"]

log = structlog.get_logger("tether.api")

# A follow stream writes a ping this often when idle, under common proxy idle limits.
FOLLOW_PING_S = 15.0
# How often a follow stream judges its credential again when no change here wakes it sooner.
FOLLOW_RECHECK_S = 2.0
LOG_PAGE_MAX = 5000


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
    attempts, names = await c.task_reads.attempts(task.id)
    return task_view(task, attempts, names, where)


async def _places(request: web.Request) -> Places:
    return await places(request.app[ACCESS].directory)


async def _task_for(request: web.Request, action: Action) -> tuple[TaskRecord, Places]:
    task_id = request.match_info["task_id"]
    where = await _places(request)
    task = check_task(request, await ctx(request).task_reads.get(task_id), where, action, task_id)
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
    view = task_view(task, where=await _places(request))
    if created:
        record(
            request,
            resource_id=task.id,
            name=_task_name(task),
            action="create",
            summary=f"submitted {task.type} task {task.id}",
            after=_task_audit(view),
            app=req.app,
        )
    else:
        unchanged(request)  # the task of an earlier submit with the same idempotency key
    return json_response(view, status=201 if created else 200)


def _task_name(task: TaskRecord) -> str:
    d = task.deployment
    if d is not None:
        return f"deploy {d.get('service')} to {d.get('environment')}"
    return f"{task.type} task"


def _task_audit(view: TaskView) -> dict[str, object]:
    # What was asked for; secret env values are not in the view (names only).
    return view.model_dump(
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
    tasks = [t for t in await c.task_reads.page(flt) if grants.allows(where.target(t), "read")]
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
    lines = await c.task_reads.logs(task_id, after=after, limit=limit)
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
            task = await c.task_reads.get(task_id)
            if task is None:
                break
            if task.state is not last_state:
                last_state = task.state
                await send({"kind": "state", "state": task.state.value})
            lines = await c.task_reads.logs(task_id, after=pos, limit=1000)
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


def add_task_routes(table: RouteTable) -> None:
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

"""Tasks through the API: submit, list, get, cancel, deployments, and their logs (a page, or
followed live). Delegates and tokens have modules of their own."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import structlog
from aiohttp import web

from manager.access.places import Places, places
from manager.access.principal import principal_of
from manager.api.audit_record import Change, in_transaction, unchanged
from manager.api.context import Context, ctx
from manager.api.guards import ACCESS, recheck
from manager.api.http import (
    ApiProblem,
    AuthKind,
    Route,
    RouteTable,
    json_response,
    parse_body,
    status_of,
)
from manager.api.incident_services import services
from manager.api.task_access import check_secrets, check_task, readable, submit_target
from manager.api.task_wait import until_final, wait_param
from manager.errors import DomainError, Unavailable
from manager.governance.freeze import check_freeze
from manager.records import (
    AttemptRecord,
    LogRecord,
    TaskFilter,
    TaskRecord,
)
from manager.schemas.grants import Action
from manager.schemas.tasks import (
    ID_PREFIX,
    LABEL_KEY,
    AttemptView,
    LogEntry,
    LogPage,
    TaskList,
    TaskSubmit,
    TaskView,
)
from manager.tasks.idempotency import shown
from shared.aio import first_of
from shared.logbytes import to_base64
from shared.protocol import FINAL_STATES, TaskState

__all__ = [
    "FollowEvent",
    "add_task_routes",
    "follow_task",
    "full_task_view",
    "submit_parsed",
    "task_view",
]

log = structlog.get_logger("tether.api")

# A follow stream writes a ping this often when idle, under common proxy idle limits.
FOLLOW_PING_S = 15.0
# How often a follow stream judges its credential again when no change here wakes it sooner.
FOLLOW_RECHECK_S = 2.0
LOG_PAGE_MAX = 5000
# A page of a log (or a batch of a followed one) goes out in pieces of about this size; a
# reader that takes longer than LOG_WRITE_S over one loses its connection (_too_slow).
LOG_WRITE_CHUNK = 64 * 1024
LOG_WRITE_S = 60.0


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
            "name": task.name,
            "labels": task.labels,
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
    data = None if rec.data is None else to_base64(rec.data)
    return LogEntry(
        attempt=rec.attempt, seq=rec.seq, stream=rec.stream, ts=rec.ts, text=rec.text, data=data
    )


_MAX_ATTEMPT = 2**31 - 1
_MAX_SEQ = 2**63 - 1


def _cursor(pos: tuple[int, int] | None) -> str:
    return "" if pos is None else f"{pos[0]}:{pos[1]}"


def _parse_cursor(raw: str | None) -> tuple[int, int] | None:
    if not raw:
        return None
    attempt, _, seq = raw.partition(":")
    try:
        pos = int(attempt), int(seq)
    except ValueError:
        raise ApiProblem(
            400, "invalid", "after: expected a cursor like '1:42'", field="after"
        ) from None
    # As the log's columns hold them (an attempt a 32-bit integer, a line's number a 64-bit
    # one): a larger one is refused here, before a stream has begun (the database refused
    # it once the follow's answer was under way).
    if not (0 <= pos[0] <= _MAX_ATTEMPT and 0 <= pos[1] <= _MAX_SEQ):
        raise ApiProblem(
            400, "invalid", "after: a cursor's numbers are out of range", field="after"
        )
    return pos


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
    wait_s = wait_param(request)
    return await submit_parsed(request, await parse_body(request, TaskSubmit), wait_s=wait_s)


async def submit_parsed(
    request: web.Request, req: TaskSubmit, *, wait_s: float | None = None
) -> web.Response:
    """Submit ``req`` as the caller, checked and audited as any task (a route that makes a
    task of its own body, like a verification run, ends here too). ``wait_s``: answer with
    the task once final, waiting up to that long (manager.api.task_wait)."""
    c = ctx(request)
    target = await submit_target(request, req.app, req.env)
    # Judged once, before anything is written: a grant taken away later is the wait's to see.
    may_read = principal_of(request).grants.allows(target, "read")
    if wait_s is not None and not may_read:
        # Refused before anything is written: the outcome waited for is what a read shows.
        raise ApiProblem(
            403,
            "forbidden",
            "wait: waiting for a task's outcome needs read where it runs; submit without it",
        )
    place = f"{req.app}/{req.env}" if target is not None else "tasks outside an application"
    await check_secrets(request, req.payload, target, place)
    principal = principal_of(request)
    actor = principal.actor
    override = await check_freeze(
        services(request).freezes,
        target,
        principal.grants,
        override_reason=req.override_freeze,
        now=ctx(request).clock(),
    )
    where = await _places(request)
    _check_deployment_env(req, target, where)
    # Each task as it was asked for (queued), as its event tells it: the answer tells it so
    # too, though the insert may have claimed it already for a delegate.
    asked: dict[str, TaskRecord] = {}

    def submitted(task: TaskRecord) -> Change:
        asked[task.id] = task
        return Change(
            task.id,
            _task_name(task),
            "create",
            f"submitted {task.type} task {task.id}",
            after=_task_audit(task)
            if override is None
            else {**_task_audit(task), "freeze_override": override.audit()},
            app=req.app,
        )

    task, created = await c.tasks.submit(
        req, target=target, submitted_by=actor.id, audit=in_transaction(request, submitted)
    )
    if not created:
        unchanged(request)  # the task of an earlier submit with the same idempotency key
    status = 201 if created else 200
    if wait_s is not None:
        final = await until_final(request, task, wait_s, where)
        if final is not None:
            return json_response(await full_task_view(c, final, where), status=status)
    if task.id in asked:
        shown = asked[task.id]
    elif may_read:
        shown = task  # an earlier submit's task, as it is now: the caller may read it
    else:
        # An earlier submit's task, for a caller who may execute but not read there: what
        # that submit answered, never what became of it (a repeat was a way to poll it).
        shown = _as_asked(task, req)
    # The answer's view is built here, once the task is handed out: not in its transaction.
    return json_response(task_view(shown, where=where), status=status)


def _as_asked(task: TaskRecord, req: TaskSubmit) -> TaskRecord:
    """``task`` as its submit answered it: queued, before any attempt or outcome, with the
    deployment as submitted (a result may have reported more of it)."""
    return dataclasses.replace(
        task,
        state=TaskState.QUEUED,
        attempt=0,
        delegate_id=None,
        started_at=None,
        finished_at=None,
        exit_code=None,
        outputs={},
        error=None,
        cancel_requested=False,
        lease_until=None,
        acquire_key=None,
        deployment=None if req.deployment is None else req.deployment.model_dump(mode="json"),
    )


def _check_deployment_env(req: TaskSubmit, target: object, where: Places) -> None:
    """A task for an application's environment deploys to that environment: a deployment
    naming another one is refused rather than recorded twice over."""
    env_id = getattr(target, "env_id", None)
    if req.deployment is None or env_id is None:
        return
    names = {env_id, req.env}
    entry = where.envs.get(env_id)
    if entry is not None:
        names.add(entry[1])
    if req.deployment.environment not in names:
        raise ApiProblem(
            400,
            "invalid",
            f"deployment.environment {req.deployment.environment!r} differs from the task's "
            f"environment {req.env!r}: give one of them, or the same",
            field="deployment.environment",
        )


def _task_name(task: TaskRecord) -> str:
    d = task.deployment
    if d is not None:
        return f"deploy {d.get('service')} to {d.get('environment')}"
    return f"{task.type} task"


def _task_audit(task: TaskRecord) -> dict[str, object]:
    """What was asked for, as the answer's view tells it; secret env values are not in it
    (names only). The script, env values and deployment details are sealed at rest with the
    task (manager.tasks.sealing): the trail keeps their digest, not their text, so it holds
    none of them. Built from the record, not from the view: it is made inside the submit's
    transaction, on every task's way, and a model's validation and dump cost more than the
    rest of the event (the payload and deployment are their models' JSON dumps already)."""
    return {
        "id": task.id,
        "type": task.type,
        "state": task.state.value,
        "payload": _digest_of(task.payload, keep=("type",)),
        "selectors": list(task.selectors),
        "secret_env_names": list(task.secret_env_names),
        "timeout_s": float(task.timeout_s),
        "queue_timeout_s": float(task.queue_timeout_s),
        "max_attempts": task.max_attempts,
        "idempotency_key": shown(task.idempotency_key),
        "deployment": None
        if task.deployment is None
        else _digest_of(task.deployment, keep=("service", "environment")),
        "app_id": task.app_id,
        "env_id": task.env_id,
    }


def _digest_of(value: object, *, keep: tuple[str, ...]) -> dict[str, object]:
    """``keep``'s fields of ``value``, and the SHA-256 of all of it (canonical JSON)."""
    assert isinstance(value, dict)
    text = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return {**{k: value[k] for k in keep if k in value}, "sha256": hashlib.sha256(text).hexdigest()}


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
        name=q.get("name") or None,
        labels=_label_query(q.getall("label", [])),
        id_prefix=_id_prefix_query(q.get("id_prefix") or None),
        # Left out by the query, before its limit: the limit counts only readable tasks.
        readable=readable(principal_of(request).grants, where),
    )
    grants = principal_of(request).grants
    # And judged again here, as a read of each is (what the query's filter never keeps).
    tasks = [t for t in await c.task_reads.page(flt) if grants.allows(where.target(t), "read")]
    return tasks, where


def _label_query(values: list[str]) -> tuple[tuple[str, str], ...]:
    """``label=k=v`` parameters (each must hold); a key the labels could not have is a 400."""
    out: list[tuple[str, str]] = []
    for value in values[:32]:
        key, sep, want = value.partition("=")
        if not sep or not re.match(LABEL_KEY, key) or len(key) > 63:
            raise ApiProblem(
                400, "invalid", "label: KEY=VALUE, KEY of letters, digits, . _ / -", field="label"
            )
        out.append((key, want))
    return tuple(out)


def _id_prefix_query(value: str | None) -> str | None:
    if value is not None and not re.match(ID_PREFIX, value):
        raise ApiProblem(
            400, "invalid", "id_prefix: lower-case letters, digits and _", field="id_prefix"
        )
    return value


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

    def cancelled(change: tuple[TaskRecord, TaskRecord]) -> Change:
        was, task = change
        return Change(
            task.id,
            _task_name(task),
            "cancel",
            f"cancelled task {task.id}"
            if task.state is TaskState.CANCELLED
            else f"asked the delegate running task {task.id} to cancel it",
            before=_cancel_fields(was),
            after=_cancel_fields(task),
        )

    task = await c.tasks.cancel(task_id, audit=in_transaction(request, cancelled))
    if _cancel_fields(before) == _cancel_fields(task):
        unchanged(request)  # already final, or already asked to cancel
    return json_response(task_view(task))


def _cancel_fields(task: TaskRecord) -> dict[str, object]:
    return {"state": task.state.value, "cancel_requested": task.cancel_requested}


async def get_logs(request: web.Request) -> web.StreamResponse:
    c = ctx(request)
    task_id = request.match_info["task_id"]
    after = _parse_cursor(request.query.get("after"))
    limit = _int_query(request, "limit", 1000, lo=1, hi=LOG_PAGE_MAX)
    task, _ = await _task_for(request, "read")
    async with c.task_reads.log_page(task_id, after=after, limit=limit) as lines:
        pos = (lines[-1].attempt, lines[-1].seq) if lines else after
        # The page's own fields around its lines, so the answer is the LogPage model's
        # JSON while the lines go out a piece at a time instead of as one body.
        head, _, tail = (
            LogPage(lines=[], cursor=_cursor(pos), state=task.state)
            .model_dump_json()
            .partition('"lines":[]')
        )
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        try:
            async with asyncio.timeout(LOG_WRITE_S):
                await _write_lines(resp, f'{head}"lines":[', lines, f"]{tail}")
                await resp.write_eof()
        except TimeoutError:
            _too_slow(request)
        except ConnectionError:
            # The reader left (reset, or aiohttp's "Connection lost" while a write waited):
            # nothing to answer, nothing to log.
            pass
    return resp


async def _write_lines(
    resp: web.StreamResponse, head: str, lines: list[LogRecord], tail: str
) -> None:
    parts = [head]
    size = len(head)
    for i, rec in enumerate(lines):
        entry = _log_entry(rec).model_dump_json()
        parts.append(f",{entry}" if i else entry)
        size += len(entry) + 1
        if size >= LOG_WRITE_CHUNK:
            await resp.write("".join(parts).encode())
            parts, size = [], 0
    parts.append(tail)
    await resp.write("".join(parts).encode())


def _too_slow(request: web.Request) -> None:
    """Ends the connection of a reader that took longer than LOG_WRITE_S over one page: the
    page held for it holds one of the few turns log reads have (manager.tasks.reads)."""
    log.info("log reader too slow: connection closed", path=request.path)
    if request.transport is not None:
        request.transport.close()


async def follow_logs(request: web.Request) -> web.StreamResponse:
    task_id = request.match_info["task_id"]
    pos = _parse_cursor(request.query.get("after"))
    # Listened for before the check's read, so that read can be the stream's first: a
    # change after it has set these events already, and the stream reads again at once.
    changed = ctx(request).events.listen(task_id)
    revoked = request.app[ACCESS].principals.changed()
    task, _ = await _task_for(request, "read")
    first = FirstRead(changed, revoked, task)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    c = ctx(request)

    async def write(obj: dict[str, object]) -> None:
        await resp.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    async def send(event: FollowEvent) -> None:
        if event.kind == "lines":
            for rec in event.lines:
                await write({"kind": "log", "line": _log_entry(rec).model_dump(mode="json")})
        elif event.kind == "end":
            assert event.task is not None
            view = await full_task_view(c, event.task)
            await write({"kind": "end", "task": view.model_dump(mode="json")})
        elif event.kind == "error":
            await write({"kind": "error", "error": {"code": event.code, "message": event.message}})
        elif event.kind == "state":
            await write({"kind": "state", "state": event.state})
        else:
            await write({"kind": "ping"})

    with contextlib.suppress(ConnectionError):  # the reader left (reset, or "Connection lost")
        if await follow_task(request, task_id, pos, send, lambda: recheck(request), first=first):
            await resp.write_eof()
    return resp


@dataclass(frozen=True, slots=True)
class FirstRead:
    """A read of the task that the stream may take as its first, and the wake-ups listened
    for before it was made (taken after it, they would miss a change in between)."""

    changed: asyncio.Event
    revoked: asyncio.Event
    task: TaskRecord


@dataclass(frozen=True, slots=True)
class FollowEvent:
    """What a follow stream says: the task's new ``state``, a page of ``lines``, its ``end``
    (the final task), an ``error`` (the refusal that ended it), or a ``ping`` when idle."""

    kind: Literal["state", "lines", "end", "error", "ping"]
    state: str = ""
    lines: Sequence[LogRecord] = ()
    task: TaskRecord | None = None
    status: int = 0
    code: str = ""
    message: str = ""


async def follow_task(
    request: web.Request,
    task_id: str,
    pos: tuple[int, int] | None,
    send: Callable[[FollowEvent], Awaitable[None]],
    recheck_credential: Callable[[], Awaitable[object]],
    *,
    first: FirstRead | None = None,
) -> bool:
    """Follows a task's log from ``pos`` until it ends, the manager stops or the caller's
    credential or read permission goes; each event goes to ``send`` (the API writes it as
    NDJSON, the console as server-sent events: manager.console.follow). The credential is
    judged again (``recheck_credential``) each time the stream wakes, and the read
    permission on a revocation here or every FOLLOW_RECHECK_S. ``first``: the caller's own
    read of the task (its permission check), taken as the stream's first. False: the reader
    was too slow and its connection was closed."""
    c = ctx(request)
    access = request.app[ACCESS]
    loop = asyncio.get_running_loop()
    last_sent = last_check = loop.time()

    async def emit(event: FollowEvent) -> None:
        nonlocal last_sent
        await send(event)
        last_sent = loop.time()

    last_state: TaskState | None = None
    task: TaskRecord | None
    # What this stream learns between wakes (TaskNews): the log's notifies, and their count
    # when a read last reached the log's end, so a wake with no notify since (a state change,
    # a recheck) reads no page; and, alone, the task as this process last wrote it, so a
    # wake after a change made here reads no task. With other replicas (PostgreSQL) the task
    # is read at every wake: two writes' answers may come back out of commit order (a cancel
    # and a result decided from one snapshot), and another replica's word may be lost. And
    # the final state is always followed by one more page: another replica's word of its
    # last lines may come after the final state can be read here. Alone, every line's notify
    # came before its answer, and the delegate reports only once its lines were answered.
    # A wake by the timer reads the store in any case: the repair, within FOLLOW_RECHECK_S,
    # for a write whose word never came.
    news = c.events.news(task_id)
    shared = c.bus.shared
    timer_woke = False
    read_to_end_at: int | None = None
    # Set at the next change of access made here: held until a check has judged it, so one
    # that comes while pages of a long log are sent is not dropped for a fresh event.
    revoked = first.revoked if first is not None else access.principals.changed()

    async def still_allowed(*, woke: bool) -> bool:
        """The stream outlives the check that opened it: a session ended or expired, a key
        revoked or a user disabled since ends it (a change here at once, one on another
        replica within the principals' 1 s cache); a read permission taken away, on a change
        here or within FOLLOW_RECHECK_S. Judged at each wake, and on the way through a log
        that keeps coming (a reader behind a busy task never waits) when a change came or
        the re-check is due. False: the stream ended with the refusal."""
        nonlocal revoked, last_check
        due = revoked.is_set() or loop.time() - last_check >= FOLLOW_RECHECK_S
        if not (woke or due):
            return True
        try:
            await recheck_credential()
            if due:
                last_check = loop.time()
                # Listened for before the read it is judged by: a change meanwhile is seen.
                revoked = access.principals.changed()
                await _task_for(request, "read")
        except (ApiProblem, DomainError) as p:
            status = p.status if isinstance(p, ApiProblem) else status_of(p)
            await emit(FollowEvent("error", status=status, code=p.code, message=p.message))
            return False
        return True

    while not c.stopping:
        if first is not None:
            # The caller's own check read it, after listening: one read fewer per stream.
            changed, task, first = first.changed, first.task, None
        else:
            changed = c.events.listen(task_id)
            task = (
                news.task
                if not shared and not timer_woke and news.task is not None
                else await c.task_reads.get(task_id)
            )
        if task is None:
            break
        if task.state is not last_state:
            last_state = task.state
            await emit(FollowEvent("state", state=task.state.value))
        lines: Sequence[LogRecord] | None = ()
        if read_to_end_at != news.grown or (shared and task.state in FINAL_STATES):
            grown = news.grown  # before the read: a notify during it means read again
            deadline = asyncio.timeout(LOG_WRITE_S)
            try:
                async with (
                    c.task_reads.log_page(task_id, after=pos, limit=1000) as lines,
                    deadline,
                ):
                    if lines:
                        await emit(FollowEvent("lines", lines=lines))
            except Unavailable:
                lines = None  # every turn was taken: read again after the wait below
            except TimeoutError:
                if not deadline.expired():
                    raise
                _too_slow(request)
                return False
            if lines:
                # A page ends on its line or byte bound: read on until one comes back empty.
                pos = (lines[-1].attempt, lines[-1].seq)
                if not await still_allowed(woke=False):
                    break
                continue
            if lines is not None:
                read_to_end_at = grown
        if lines is not None and task.state in FINAL_STATES:
            # The delegate ships every log line before it reports, so once the state above
            # is final, a read to the log's end since its last line's notify saw it whole.
            await emit(FollowEvent("end", task=task))
            break
        await first_of(changed, revoked, timeout=FOLLOW_RECHECK_S)
        timer_woke = not changed.is_set() and not revoked.is_set()
        if not await still_allowed(woke=True):
            break
        if loop.time() - last_sent >= FOLLOW_PING_S:
            await emit(FollowEvent("ping"))
    return True


# -- delegates and tokens -----------------------------------------------------------------


def add_task_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    table.add(
        Route(
            "POST",
            "/api/v1/tasks",
            submit_task,
            "Submit a task (with wait: answered once it is final, or after that long)",
            u,
            TaskSubmit,
            TaskView,
            201,
            query={"wait": "number"},
            errors=(400, 403, 413),
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
                "name": "string",
                "label": "string",
                "id_prefix": "string",
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
            "A page of a task's log (up to 5000 lines and 4 MiB of text)",
            u,
            None,
            LogPage,
            query={"after": "string", "limit": "integer"},
            errors=(400, 404, 503),
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

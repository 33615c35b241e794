"""The console's pages and actions, each over the REST route it shows or performs.

Every console route names the API route it mirrors; it gets that route's permission in the
matrix (manager.api.permissions) and its audit resource type, so the guards judge it as
they judge the API route, and its handler calls that API route's handler
(manager.console.calls). Buttons are drawn only when the same permission test passes
(manager.console.render.may), and a task's cancel and rerun only where its application
and environment allow ``execute``.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from manager.access.directory import ADMIN_GROUP_ID
from manager.access.principal import principal_of
from manager.api import access as access_api
from manager.api import audit as audit_api
from manager.api import auth as auth_api
from manager.api import delegates as delegates_api
from manager.api import directory as directory_api
from manager.api import secrets as secrets_api
from manager.api import sso as sso_api
from manager.api import tasks as tasks_api
from manager.api.console_cookie import clear_cookie, set_cookie
from manager.api.context import CTX, ctx
from manager.api.http import ApiProblem, AuthKind, Handler, Route, RouteTable
from manager.api.permissions import ROUTE_PERMISSIONS
from manager.console import charts, follow, logs, runbooks, stream, verify_chart
from manager.console.calls import API_ROUTES, call_api
from manager.console.render import render, render_text
from manager.console.security import add_headers, console_middleware, refused
from manager.errors import DomainError
from manager.schemas.auth import CHAR_CLASSES, AuthSettings, verifier_hash
from manager.schemas.grants import ACCOUNT_PERMISSIONS, Target
from shared.protocol import FINAL_STATES, TaskState

__all__ = ["add_console_routes", "console_middleware", "install_console"]

STATIC = Path(__file__).parent / "static"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_FINAL = {s.value for s in FINAL_STATES}
_TASK_FILTERS = ("state", "app", "env", "delegate", "since", "until", "limit")


# -- helpers ---------------------------------------------------------------------------


async def _form(request: web.Request) -> dict[str, str]:
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _see_other(where: str) -> web.StreamResponse:
    return web.Response(status=303, headers={"Location": where})


def _time_query(raw: str | None) -> str | None:
    """A filter's time: epoch seconds, or minutes ago as "30m", hours as "2h"."""
    if not raw:
        return None
    raw = raw.strip()
    units = {"m": 60, "h": 3600, "d": 86400}
    try:
        if raw[-1:] in units:
            return str(time.time() - float(raw[:-1]) * units[raw[-1]])
        return str(float(raw))
    except ValueError:
        raise ApiProblem(400, "invalid", f"time: {raw!r} is not seconds, or 30m, 2h, 1d") from None


# -- sign in and out -------------------------------------------------------------------


async def root(_request: web.Request) -> web.StreamResponse:
    return _see_other("/console/tasks")


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = STATIC / name
    if "/" in name or path.suffix not in _TYPES or not path.is_file():
        raise ApiProblem(404, "not_found", "no such file")
    return web.Response(
        body=path.read_bytes(),
        content_type=_TYPES[path.suffix],
        headers={"Cache-Control": "public, max-age=3600"},
    )


async def login_page(request: web.Request) -> web.StreamResponse:
    return render(request, "login.html", {"error": None, "email": ""})


async def _sign_in(
    request: web.Request,
    handler: Handler,
    body: dict[str, Any],
    page: str,
    shown: dict[str, Any],
) -> web.StreamResponse:
    """The API's login or invite handler (its rate limit, lockout, failed-login count and
    event); a refusal is the form again with the API's message."""
    try:
        result = await call_api(request, handler, body=body)
    except (ApiProblem, DomainError) as exc:
        status, message = refused(exc)
        if status not in (400, 401, 403, 429):
            raise
        return render(request, page, {"error": message, **shown}, status=status)
    response = _see_other("/console/account" if result.get("restricted") else "/console/tasks")
    set_cookie(response, result["token"], result["expires_at"] - time.time())
    return response


async def login(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    body = {
        "email": form.get("email", ""),
        "password": form.get("password", ""),
        "totp_code": form.get("totp_code") or None,
    }
    return await _sign_in(request, auth_api.login, body, "login.html", {"email": body["email"]})


async def invite_page(request: web.Request) -> web.StreamResponse:
    return render(request, "invite.html", {"error": None, "token": request.query.get("token", "")})


async def accept_invite(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    body = {"token": form.get("token", ""), "password": form.get("password", "")}
    shown = {"token": body["token"]}
    return await _sign_in(request, auth_api.accept_invite, body, "invite.html", shown)


# The browser's half of an SSO sign-in: the verifier the API's poll asks for (as the CLI
# keeps its own), in a cookie only this origin's console can send, for as long as the
# sign-in may take.
_SSO_COOKIE = "__Host-tether_sso"


async def sso_start(request: web.Request) -> web.StreamResponse:
    """Begin an SSO sign-in through the API's own start: the provider's page opens, the
    API's callback asks the person to approve this client, and the console's poll collects
    the session into the cookie."""
    verifier = secrets.token_urlsafe(48)
    agent = request.headers.get("User-Agent", "")[:60]
    body = {"verifier_hash": verifier_hash(verifier), "client_name": f"the web console ({agent})"}
    started = await call_api(request, sso_api.start, body=body)
    response = render(request, "sso.html", {"started": started})
    ttl = max(int(started["expires_at"] - time.time()), 1)
    value = base64.urlsafe_b64encode(json.dumps([started["state"], verifier]).encode()).decode()
    response.set_cookie(
        _SSO_COOKIE, value, max_age=ttl, path="/", secure=True, httponly=True, samesite="Strict"
    )
    return response


async def sso_poll(request: web.Request) -> web.StreamResponse:
    raw = request.cookies.get(_SSO_COOKIE, "")
    try:
        state, verifier = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except ValueError:
        raise ApiProblem(
            400, "sso_failed", "no SSO sign-in is in progress here; start again"
        ) from None
    done = await call_api(request, sso_api.poll, body={"state": state, "verifier": verifier})
    if done["status"] == "pending":
        return web.Response(status=202, text="")
    where = "/console/account" if done.get("restricted") else "/console/tasks"
    response = web.Response(status=200, headers={"HX-Redirect": where})
    response.del_cookie(_SSO_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    if done["status"] == "done":
        set_cookie(response, done["token"], done["expires_at"] - time.time())
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    await call_api(request, auth_api.logout, body={})  # ends the session on the server
    response = _see_other("/console/login")
    clear_cookie(response)
    return response


async def account(request: web.Request) -> web.StreamResponse:
    me = await call_api(request, auth_api.me)
    return render(
        request, "account.html", {"me": me, "enrolment": None, "codes": None, "error": None}
    )


async def account_action(request: web.Request, step: str) -> web.StreamResponse:
    """Enrol in 2FA, confirm it, give the code after SSO, or change the password: what a
    restricted session may do, and what any user may do to their own account."""
    form = await _form(request)
    me = await call_api(request, auth_api.me)
    values: dict[str, Any] = {"me": me, "enrolment": None, "codes": None, "error": None}
    handlers: dict[str, tuple[Handler, dict[str, Any]]] = {
        "totp-enrol": (auth_api.totp_enrol, {"password": form.get("password") or None}),
        "totp-confirm": (auth_api.totp_confirm, {"code": form.get("code", "")}),
        "totp-verify": (auth_api.totp_verify, {"totp_code": form.get("code") or None}),
        "password": (
            auth_api.change_password,
            {"current": form.get("current", ""), "new": form.get("new", "")},
        ),
    }
    if step not in handlers:
        raise ApiProblem(404, "not_found", "no such step")
    handler, body = handlers[step]
    try:
        result = await call_api(request, handler, body=body)
    except (ApiProblem, DomainError) as exc:
        status, message = refused(exc)
        if status not in (400, 401, 409):
            raise
        values["error"] = message
        return render(request, "account.html", values, status=status)
    fresh: dict[str, Any] | None = None
    if step == "totp-enrol":
        values["enrolment"] = result
    elif step == "totp-confirm":
        values["codes"] = result["recovery_codes"]
        fresh = result.get("session")
    else:
        fresh = result
    response: web.StreamResponse = render(request, "account.html", values)
    if fresh:
        # The restricted session was swapped for a full one (or the password change ended
        # the others and made this one anew): the cookie follows.
        set_cookie(response, fresh["token"], fresh["expires_at"] - time.time())
        if step != "totp-confirm":
            response = _see_other("/console/tasks")
            set_cookie(response, fresh["token"], fresh["expires_at"] - time.time())
    return response


# -- tasks -----------------------------------------------------------------------------


def _task_query(request: web.Request) -> dict[str, str]:
    q = {k: v for k in _TASK_FILTERS if (v := request.query.get(k, "").strip())}
    for k in ("since", "until"):
        if k in q:
            q[k] = _time_query(q[k]) or ""
    q.setdefault("limit", "50")
    return q


async def _task_rows(request: web.Request) -> tuple[list[dict[str, Any]], dict[str, str]]:
    query = _task_query(request)
    tasks = (await call_api(request, tasks_api.list_tasks, query=query))["tasks"]
    submitter = request.query.get("submitter", "").strip()
    if submitter:
        tasks = [t for t in tasks if submitter in (t.get("submitted_by") or "")]
    return tasks, query


def _older(request: web.Request, tasks: list[dict[str, Any]]) -> str | None:
    """The next page's query: tasks created before the last one shown."""
    if not tasks:
        return None
    q = {k: v for k, v in request.query.items() if k != "until"}
    q["until"] = repr(min(t["created_at"] for t in tasks) - 1e-6)
    return str(request.rel_url.with_query(q).query_string)


async def tasks_page(request: web.Request) -> web.StreamResponse:
    tasks, _ = await _task_rows(request)
    values = {
        "tasks": tasks,
        "filters": request.query,
        "states": [s.value for s in TaskState],
        "query": request.rel_url.raw_query_string,  # as sent: a value may hold "&"
        "older": _older(request, tasks),
    }
    return render(request, "tasks.html", values)


async def tasks_live(request: web.Request) -> web.StreamResponse:
    """The list's rows, with the page's filters, as server-sent events: again when a task
    is created or changes state in this process (or another replica says so)."""

    async def rows() -> str:
        tasks, _ = await _task_rows(request)
        return render_text(request, "task_rows.html", {"tasks": tasks})

    return await stream.live_rows(request, rows, wake=ctx(request).events.listen_listed)


def _may_execute(request: web.Request, task: dict[str, Any], env_types: dict[str, str]) -> bool:
    grants = principal_of(request).grants
    target = None
    if task.get("app_id") and task.get("env_id"):
        kind = env_types.get(task["env_id"], "production")
        target = Target(task["app_id"], task["env_id"], kind)  # type: ignore[arg-type]
    return grants.allows(target, "execute")


async def _env_types(request: web.Request, task: dict[str, Any]) -> dict[str, str]:
    if not task.get("app_id"):
        return {}
    request.match_info["app"] = task["app_id"]
    envs = (await call_api(request, directory_api.list_envs))["envs"]
    return {e["id"]: e["type"] for e in envs}


async def _task_values(request: web.Request) -> dict[str, Any]:
    task = await call_api(request, tasks_api.get_task)
    types = await _env_types(request, task)
    verification = None
    if task["type"] == "verify":
        verification = verify_chart.verify_view(task.get("outputs") or {})
    return {
        "task": task,
        "final": task["state"] in _FINAL,
        "may_execute": _may_execute(request, task, types),
        "verification": verification,
        "VW": verify_chart.WIDTH,
        "VH": verify_chart.HEIGHT,
        "VP": verify_chart.PAD,
    }


async def task_page(request: web.Request) -> web.StreamResponse:
    values = await _task_values(request)
    block = await logs.tail_before(request, values["task"]["id"], None)
    values["log"] = block
    values["end"] = _cursor(block.end)
    values["before"] = _cursor((block.lines[0].attempt, block.lines[0].seq)) if block.lines else ""
    return render(request, "task.html", values)


async def task_summary(request: web.Request) -> web.StreamResponse:
    return render(request, "task_summary.html", await _task_values(request))


def _cursor(pos: tuple[int, int] | None) -> str:
    return "" if pos is None else f"{pos[0]}:{pos[1]}"


async def task_log(request: web.Request) -> web.StreamResponse:
    """The block of lines before ``before`` (*Load earlier lines*); without it, the tail.
    What arrives later comes through the follow stream (manager.console.follow)."""
    task_id = request.match_info["task_id"]
    await logs.readable_task(request, task_id)
    before = logs.parse_cursor(request.query.get("before"))
    block = await logs.tail_before(request, task_id, before)
    first = _cursor((block.lines[0].attempt, block.lines[0].seq)) if block.lines else ""
    values = {"log": block, "task_id": task_id, "before": first}
    return render(request, "log_earlier.html", values)


def _payload(form: dict[str, str]) -> dict[str, Any]:
    kind = form.get("type", "shell")
    if kind == "http":
        return {"type": "http", "url": form.get("url", ""), "method": form.get("method") or "GET"}
    if kind == "capability":
        return {"type": "capability", "target": form.get("target", "")}
    # A browser sends a textarea's line ends as CRLF: the script bash runs has LF.
    script = form.get("script", "").replace("\r\n", "\n")
    return {"type": "shell", "script": script, "interpreter": "bash"}


async def submit(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    body: dict[str, Any] = {
        "payload": _payload(form),
        "selectors": [s for s in form.get("selectors", "").replace(",", " ").split() if s],
    }
    if form.get("app") or form.get("env"):
        body["app"], body["env"] = form.get("app") or None, form.get("env") or None
    task = await call_api(request, tasks_api.submit_task, body=body)
    return _see_other(f"/console/tasks/{task['id']}")


async def cancel(request: web.Request) -> web.StreamResponse:
    task = await call_api(request, tasks_api.cancel_task, body={})
    return _see_other(f"/console/tasks/{task['id']}")


async def rerun(request: web.Request) -> web.StreamResponse:
    """The same task submitted again: the same payload, selectors, limits and place."""
    old = await call_api(request, tasks_api.get_task)
    if old["secret_env_names"]:
        raise ApiProblem(
            409,
            "conflict",
            "this task was given secret values, which are never kept: submit it anew",
        )
    body = {
        k: old[k] for k in ("payload", "selectors", "timeout_s", "queue_timeout_s", "max_attempts")
    }
    if old.get("deployment"):
        body["deployment"] = old["deployment"]
    if old.get("app_id"):
        body["app"], body["env"] = old["app_id"], old["env_id"]
    task = await call_api(request, tasks_api.submit_task, body=body)
    return _see_other(f"/console/tasks/{task['id']}")


async def deployments(request: web.Request) -> web.StreamResponse:
    query = {
        k: v
        for k in ("app", "env", "service", "status", "since", "until")
        if (v := request.query.get(k, "").strip())
    }
    for k in ("since", "until"):
        if k in query:
            query[k] = _time_query(query[k]) or ""
    found = (await call_api(request, tasks_api.list_deployments, query=query))["tasks"]
    return render(request, "deployments.html", {"tasks": found, "filters": request.query})


# -- delegates -------------------------------------------------------------------------


def _health(d: dict[str, Any], heartbeat_interval: float) -> str:
    if d["status"] == "disconnected":
        return "down"
    age = time.time() - d["last_heartbeat"] if d.get("last_heartbeat") else None
    if age is None or age > 3 * heartbeat_interval or d["outdated"]:
        return "warn"
    return "ok"


# Nothing announces a heartbeat, a connection or a disconnection (a polling delegate is
# judged gone by the time since it was heard, on whichever replica heard it), and the
# heartbeat age shown changes each second: the live delegate rows are drawn again this often.
DELEGATES_EVERY_S = 5.0


async def _delegate_rows(request: web.Request) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = (await call_api(request, delegates_api.list_delegates))[
        "delegates"
    ]
    c = ctx(request)
    reported = {s.delegate.id: s.metrics for s in c.hub.sessions.values()}
    interval = c.timings.heartbeat_interval
    for d in listed:
        d["metrics"] = reported.get(d["id"], {})
        d["health"] = _health(d, interval)
    return listed


async def delegates(request: web.Request) -> web.StreamResponse:
    return render(request, "delegates.html", {"delegates": await _delegate_rows(request)})


async def delegates_live(request: web.Request) -> web.StreamResponse:
    """The delegate rows as server-sent events, drawn again every DELEGATES_EVERY_S."""

    async def rows() -> str:
        values = {"delegates": await _delegate_rows(request)}
        return render_text(request, "delegate_rows.html", values)

    return await stream.live_rows(request, rows, every=DELEGATES_EVERY_S)


async def drain(request: web.Request) -> web.StreamResponse:
    await call_api(request, delegates_api.drain_delegate, body={})
    return _see_other("/console/delegates")


async def resume(request: web.Request) -> web.StreamResponse:
    await call_api(request, delegates_api.resume_delegate, body={})
    return _see_other("/console/delegates")


# -- secrets ---------------------------------------------------------------------------


async def secrets_page(request: web.Request) -> web.StreamResponse:
    # Metadata only: the API's lists carry no value, and nothing else is asked.
    listed = (await call_api(request, secrets_api.list_secrets, query={}))["secrets"]
    managers = (await call_api(request, secrets_api.list_managers, query={}))["secret_managers"]
    return render(request, "secrets.html", {"secrets": listed, "managers": managers})


# -- audit -----------------------------------------------------------------------------

_AUDIT_FILTERS = (
    "since",
    "until",
    "actor",
    "type",
    "app",
    "action",
    "text",
    "limit",
    "filter",
    "before",
)


async def audit(request: web.Request) -> web.StreamResponse:
    query = {k: v for k in _AUDIT_FILTERS if (v := request.query.get(k, "").strip())}
    events = (await call_api(request, audit_api.list_audit, query=query))["events"]
    saved = (await call_api(request, audit_api.list_filters, query={}))["filters"]
    older = None
    if events:
        q = {k: v for k, v in request.query.items() if k != "before"}
        q["before"] = str(min(e["seq"] for e in events))
        older = request.rel_url.with_query(q).query_string
    export = request.rel_url.with_query(
        {k: v for k, v in query.items() if k not in ("limit", "before")}
    )
    values = {
        "events": events,
        "filters": request.query,
        "saved": saved,
        "older": older,
        "export": export.query_string,
        "verdict": None,
    }
    return render(request, "audit.html", values)


async def audit_verify(request: web.Request) -> web.StreamResponse:
    verdict = await call_api(request, audit_api.verify_audit, query={})
    return render(request, "audit_verify.html", {"verdict": verdict})


async def audit_export(request: web.Request) -> web.StreamResponse:
    """The API's export, streamed as it streams it (the same filters and format)."""
    return await audit_api.export_audit(request)


async def save_filter(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    query: dict[str, Any] = {k: v for k in _AUDIT_FILTERS[:8] if (v := form.get(k, "").strip())}
    if "limit" in query:
        query["limit"] = int(query["limit"]) if query["limit"].isdigit() else query["limit"]
    await call_api(
        request, audit_api.create_filter, body={"name": form.get("name", ""), "query": query}
    )
    return _see_other(f"/console/audit?filter={form.get('name', '')}")


# -- administration --------------------------------------------------------------------


def _admin(section: str) -> Handler:
    """One handler per section: the route table knows a route by its handler."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await admin(request, section)

    handler.__name__ = f"admin_{section.replace('-', '_')}"
    return handler


def _account(step: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await account_action(request, step)

    handler.__name__ = f"account_{step.replace('-', '_')}"
    return handler


async def admin(
    request: web.Request, section: str, *, invited: dict[str, Any] | None = None
) -> web.StreamResponse:
    values: dict[str, Any] = {"section": section, "created": None, "invited": invited}
    if section == "users":
        values["users"] = (await call_api(request, directory_api.list_users, query={}))["users"]
    elif section == "groups":
        values["groups"] = (await call_api(request, directory_api.list_groups, query={}))["groups"]
        values["permissions"] = ACCOUNT_PERMISSIONS
        values["admin_group"] = ADMIN_GROUP_ID
    elif section == "apps":
        apps = (await call_api(request, directory_api.list_apps, query={}))["apps"]
        for a in apps:
            request.match_info["app"] = a["id"]
            a["envs"] = (await call_api(request, directory_api.list_envs, query={}))["envs"]
        values["apps"] = apps
    elif section == "api-keys":
        values["keys"] = (await call_api(request, access_api.list_api_keys, query={}))["api_keys"]
    elif section == "allowlist":
        values["allowlist"] = await call_api(request, access_api.get_allowlist, query={})
    elif section == "settings":
        values["settings"] = await call_api(request, auth_api.get_settings, query={})
        values["char_classes"] = list(CHAR_CLASSES)
    else:
        raise ApiProblem(404, "not_found", "no such page")
    return render(request, "admin.html", values)


async def create_api_key(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    body: dict[str, Any] = {"name": form.get("name", "")}
    groups = [g for g in form.get("groups", "").replace(",", " ").split() if g]
    if groups:
        body["groups"] = groups
    created = await call_api(request, access_api.create_api_key_route, body=body)
    keys = (await call_api(request, access_api.list_api_keys, query={}))["api_keys"]
    # Shown once, in this answer only: it is not kept anywhere the console can read again.
    values = {"section": "api-keys", "keys": keys, "created": created, "invited": None}
    return render(request, "admin.html", values, status=201)


async def _admin_action(
    request: web.Request, section: str, handler: Handler, body: dict[str, Any]
) -> web.StreamResponse:
    """An administration change through the API's own handler, then its section again (a
    user's invite token shown there, once)."""
    done = await call_api(request, handler, body=body)
    invited = done if isinstance(done, dict) and "invite_token" in done else None
    return await admin(request, section, invited=invited)


def _words(raw: str) -> list[str]:
    return [w for w in raw.replace(",", " ").split() if w]


async def invite_user(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    body = {
        "email": form.get("email", ""),
        "name": form.get("name", ""),
        "groups": _words(form.get("groups", "")),
    }
    return await _admin_action(request, "users", directory_api.create_user, body)


async def create_app(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    body = {"name": form.get("name", ""), "description": form.get("description", "")}
    return await _admin_action(request, "apps", directory_api.create_app, body)


async def create_env(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    body = {"name": form.get("name", ""), "type": form.get("type", "")}
    return await _admin_action(request, "apps", directory_api.create_env, body)


async def add_allowlist_entry(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    body = {"cidr": form.get("cidr", ""), "description": form.get("description", "")}
    return await _admin_action(request, "allowlist", access_api.add_allowlist_entry, body)


async def switch_allowlist(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    on = request.path.endswith("/enable")
    handler = access_api.enable_allowlist if on else access_api.disable_allowlist
    body = {"confirm": form.get("confirm") == "yes"}
    return await _admin_action(request, "allowlist", handler, body)


async def switch_allowlist_off(request: web.Request) -> web.StreamResponse:
    return await switch_allowlist(request)


async def edit_group(request: web.Request) -> web.StreamResponse:
    """A group's description and permissions, through the API's own PATCH (its check that
    nobody grants more than they hold, its event). The form always lists every account
    permission, so an unticked box is one taken away."""
    form = await request.post()
    lines = [ln.strip() for ln in str(form.get("app_permissions", "")).splitlines()]
    grants = []
    for n, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            grants.append(json.loads(line))
        except ValueError:
            raise ApiProblem(
                400,
                "invalid",
                f"application permissions, line {n}: not a JSON object"
                ' like {"apps": "all", "envs": "production", "actions": ["read"]}',
                field="app_permissions",
            ) from None
    body = {
        "description": str(form.get("description", "")),
        "account_permissions": [str(v) for v in form.getall("account_permissions", [])],
        "app_permissions": grants,
    }
    return await _admin_action(request, "groups", directory_api.update_group, body)


async def disable_user(request: web.Request) -> web.StreamResponse:
    return await _admin_action(request, "users", directory_api.disable_user, {})


async def enable_user(request: web.Request) -> web.StreamResponse:
    return await _admin_action(request, "users", directory_api.enable_user, {})


def _settings_body(form: Any) -> dict[str, Any]:
    """Every login setting from the form (the API's PUT replaces them all): ticked boxes,
    words, and numbers the API's model judges."""
    body: dict[str, Any] = {}
    for name, field in AuthSettings.model_fields.items():
        if name == "password_classes":
            body[name] = [str(v) for v in form.getall(name, [])]
        elif name == "allowed_email_domains":
            body[name] = _words(str(form.get(name, "")))
        elif field.annotation is bool:
            body[name] = form.get(name) == "yes"
        else:
            raw = str(form.get(name, "")).strip()
            body[name] = int(raw) if raw.isdigit() else raw
    return body


async def put_settings(request: web.Request) -> web.StreamResponse:
    body = _settings_body(await request.post())
    return await _admin_action(request, "settings", auth_api.put_settings, body)


# -- charts ----------------------------------------------------------------------------


async def charts_page(request: web.Request) -> web.StreamResponse:
    now = time.time()
    query = {"since": str(now - 3600), "limit": "1000"}
    recent = (await call_api(request, tasks_api.list_tasks, query=query))["tasks"]
    shown = [
        charts.outcome_chart(recent, now),
        charts.latency_chart(recent, now),
        charts.delegates_chart(request.app[charts.SAMPLES].series(), now),
    ]
    return render(
        request,
        "charts.html",
        {"charts": shown, "W": charts.WIDTH, "H": charts.HEIGHT, "PAD": charts.PAD},
    )


# -- the table -------------------------------------------------------------------------

# (method, console path, handler, the API route it mirrors (None: no credential), auth)
_PAGES: list[tuple[str, str, Handler, tuple[str, str] | None, AuthKind]] = [
    ("GET", "/", root, None, "none"),
    ("GET", "/console/static/{name}", static, None, "none"),
    ("GET", "/console/login", login_page, None, "login"),
    ("POST", "/console/login", login, ("POST", "/api/v1/auth/login"), "login"),
    ("POST", "/console/sso", sso_start, ("POST", "/api/v1/auth/sso/start"), "login"),
    ("POST", "/console/sso/poll", sso_poll, ("POST", "/api/v1/auth/sso/poll"), "login"),
    ("GET", "/console/invite", invite_page, None, "login"),
    ("POST", "/console/invite", accept_invite, ("POST", "/api/v1/auth/invite/accept"), "login"),
    ("POST", "/console/logout", logout, ("POST", "/api/v1/auth/logout"), "user"),
    ("GET", "/console/account", account, ("GET", "/api/v1/auth/me"), "user"),
    (
        "POST",
        "/console/account/totp-enrol",
        _account("totp-enrol"),
        ("POST", "/api/v1/auth/totp/enrol"),
        "user",
    ),
    (
        "POST",
        "/console/account/totp-confirm",
        _account("totp-confirm"),
        ("POST", "/api/v1/auth/totp/confirm"),
        "user",
    ),
    (
        "POST",
        "/console/account/totp-verify",
        _account("totp-verify"),
        ("POST", "/api/v1/auth/totp/verify"),
        "user",
    ),
    (
        "POST",
        "/console/account/password",
        _account("password"),
        ("POST", "/api/v1/auth/password"),
        "user",
    ),
    ("GET", "/console/tasks", tasks_page, ("GET", "/api/v1/tasks"), "user"),
    ("GET", "/console/tasks/live", tasks_live, ("GET", "/api/v1/tasks"), "user"),
    ("POST", "/console/tasks", submit, ("POST", "/api/v1/tasks"), "user"),
    ("GET", "/console/tasks/{task_id}", task_page, ("GET", "/api/v1/tasks/{task_id}"), "user"),
    (
        "GET",
        "/console/tasks/{task_id}/summary",
        task_summary,
        ("GET", "/api/v1/tasks/{task_id}"),
        "user",
    ),
    (
        "GET",
        "/console/tasks/{task_id}/log",
        task_log,
        ("GET", "/api/v1/tasks/{task_id}/logs"),
        "user",
    ),
    (
        "GET",
        "/console/tasks/{task_id}/log/follow",
        follow.follow_log,
        ("GET", "/api/v1/tasks/{task_id}/logs/follow"),
        "user",
    ),
    (
        "POST",
        "/console/tasks/{task_id}/cancel",
        cancel,
        ("POST", "/api/v1/tasks/{task_id}/cancel"),
        "user",
    ),
    ("POST", "/console/tasks/{task_id}/rerun", rerun, ("POST", "/api/v1/tasks"), "user"),
    ("GET", "/console/deployments", deployments, ("GET", "/api/v1/deployments"), "user"),
    ("GET", "/console/delegates", delegates, ("GET", "/api/v1/delegates"), "user"),
    ("GET", "/console/delegates/live", delegates_live, ("GET", "/api/v1/delegates"), "user"),
    (
        "POST",
        "/console/delegates/{delegate}/drain",
        drain,
        ("POST", "/api/v1/delegates/{delegate}/drain"),
        "user",
    ),
    (
        "POST",
        "/console/delegates/{delegate}/resume",
        resume,
        ("POST", "/api/v1/delegates/{delegate}/resume"),
        "user",
    ),
    ("GET", "/console/secrets", secrets_page, ("GET", "/api/v1/secrets"), "user"),
    ("GET", "/console/audit", audit, ("GET", "/api/v1/audit"), "user"),
    ("GET", "/console/audit/verify", audit_verify, ("GET", "/api/v1/audit/verify"), "user"),
    ("GET", "/console/audit/export", audit_export, ("GET", "/api/v1/audit/export"), "user"),
    ("POST", "/console/audit/filters", save_filter, ("POST", "/api/v1/audit/filters"), "user"),
    ("GET", "/console/admin/users", _admin("users"), ("GET", "/api/v1/users"), "user"),
    ("GET", "/console/admin/groups", _admin("groups"), ("GET", "/api/v1/groups"), "user"),
    ("GET", "/console/admin/apps", _admin("apps"), ("GET", "/api/v1/apps"), "user"),
    ("GET", "/console/admin/api-keys", _admin("api-keys"), ("GET", "/api/v1/api-keys"), "user"),
    ("GET", "/console/admin/allowlist", _admin("allowlist"), ("GET", "/api/v1/allowlist"), "user"),
    (
        "GET",
        "/console/admin/settings",
        _admin("settings"),
        ("GET", "/api/v1/auth/settings"),
        "user",
    ),
    ("POST", "/console/admin/api-keys", create_api_key, ("POST", "/api/v1/api-keys"), "user"),
    ("POST", "/console/admin/users", invite_user, ("POST", "/api/v1/users"), "user"),
    ("POST", "/console/admin/apps", create_app, ("POST", "/api/v1/apps"), "user"),
    (
        "POST",
        "/console/admin/apps/{app}/envs",
        create_env,
        ("POST", "/api/v1/apps/{app}/envs"),
        "user",
    ),
    (
        "POST",
        "/console/admin/allowlist/entries",
        add_allowlist_entry,
        ("POST", "/api/v1/allowlist/entries"),
        "user",
    ),
    (
        "POST",
        "/console/admin/allowlist/enable",
        switch_allowlist,
        ("POST", "/api/v1/allowlist/enable"),
        "user",
    ),
    (
        "POST",
        "/console/admin/allowlist/disable",
        switch_allowlist_off,
        ("POST", "/api/v1/allowlist/disable"),
        "user",
    ),
    ("GET", "/console/charts", charts_page, ("GET", "/api/v1/tasks"), "user"),
    (
        "POST",
        "/console/admin/groups/{group}",
        edit_group,
        ("PATCH", "/api/v1/groups/{group}"),
        "user",
    ),
    (
        "POST",
        "/console/admin/users/{user}/disable",
        disable_user,
        ("POST", "/api/v1/users/{user}/disable"),
        "user",
    ),
    (
        "POST",
        "/console/admin/users/{user}/enable",
        enable_user,
        ("POST", "/api/v1/users/{user}/enable"),
        "user",
    ),
    ("POST", "/console/admin/settings", put_settings, ("PUT", "/api/v1/auth/settings"), "user"),
    ("GET", "/console/runbooks", runbooks.runbooks_page, ("GET", "/api/v1/runbook-runs"), "user"),
    (
        "GET",
        "/console/runbooks/runs/{run_id}",
        runbooks.run_page,
        ("GET", "/api/v1/runbook-runs/{run_id}"),
        "user",
    ),
    (
        "POST",
        "/console/runbooks/runs/{run_id}/approve",
        runbooks.approve,
        ("POST", "/api/v1/runbook-runs/{run_id}/approve"),
        "user",
    ),
    (
        "POST",
        "/console/runbooks/runs/{run_id}/reject",
        runbooks.reject,
        ("POST", "/api/v1/runbook-runs/{run_id}/reject"),
        "user",
    ),
]


def add_console_routes(table: RouteTable) -> None:
    """Add the console's routes after the API's (each takes its mirror's permission and
    audit resource type)."""
    api = {(r.method, r.path): r for r in table.routes}
    # The guards find a route by its handler: one handler per route, or one would pass for
    # another's permission.
    assert len({(h, m) for m, _, h, _, _ in _PAGES}) == len(_PAGES)
    for method, path, handler, mirrors, auth in _PAGES:
        audit = None
        if mirrors is not None:
            audit = api[mirrors].audit
            if auth == "user":
                ROUTE_PERMISSIONS[(method, path)] = ROUTE_PERMISSIONS[mirrors]
        elif auth == "user":
            ROUTE_PERMISSIONS[(method, path)] = "authenticated"
        summary = f"console: {handler.__name__.replace('_', ' ')}"
        table.add(Route(method, path, handler, summary, auth, audit=audit, console=True))


def install_console(app: web.Application, table: RouteTable) -> None:
    """The console's headers on every answer under /console, the route table its calls
    judge, and its delegate samples."""
    app.on_response_prepare.append(add_headers)
    app[API_ROUTES] = table
    c = app[CTX]
    samples = app[charts.SAMPLES] = charts.ConnectedSamples(
        lambda: sum(
            1 for s in c.hub.sessions.values() if c.hub.status(s.delegate.id) != "disconnected"
        )
    )
    app.cleanup_ctx.append(charts.sampling(samples))

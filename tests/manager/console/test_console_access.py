"""The console's routes behind the API's guards: every page and action refuses whoever the
API route it mirrors refuses, state changes need the session's CSRF token and this origin,
and every answer carries the console's headers."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from manager.access.directory import Directory, SessionBody, UserBody
from manager.access.principal import SessionTokens
from manager.api.console_cookie import COOKIE
from manager.api.http import Route, RouteTable
from manager.api.permissions import ROUTE_PERMISSIONS
from manager.console.security import HEADERS, csrf_token
from manager.schemas.grants import ACCOUNT_PERMISSIONS
from manager.server.app import ROUTES
from manager.store.base import Store
from shared.ids import hash_secret
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.rbac_support import member


def console_routes(m: Manager) -> list[Route]:
    table: RouteTable = m.client.app[ROUTES]
    return [r for r in table.routes if r.console]


async def visit(
    m: Manager,
    method: str,
    path: str,
    token: str | None,
    *,
    csrf: str | None = "auto",
    origin: bool = True,
) -> tuple[int, str, Any]:
    headers = {}
    if token is not None:
        headers["Cookie"] = f"{COOKIE}={token}"
    if origin:
        headers["Sec-Fetch-Site"] = "same-origin"
    data = None
    if method == "POST":
        data = {}
        if csrf == "auto" and token is not None:
            data["csrf"] = csrf_token(token)
        elif csrf not in (None, "auto"):
            data["csrf"] = csrf
    resp = await m.client.request(method, path, data=data, headers=headers, allow_redirects=False)
    try:
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            # A live stream let through (it never ends by itself): its answer is the status.
            return resp.status, "", resp.headers
        return resp.status, await resp.text(), resp.headers
    finally:
        resp.close()


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "nothing-here", path).replace(
        "/static/nothing-here", "/static/console.css"
    )


async def test_every_console_route_refuses_as_the_api_route_it_mirrors(
    m: Manager, store: Store
) -> None:
    roles: dict[str, str | None] = {
        "anonymous": None,
        "nobody": await member(store, "nobody@example.com"),
    }
    for perm in ACCOUNT_PERMISSIONS:
        roles[perm] = await member(store, f"{perm}@example.com", account=[perm])
    routes = sorted(console_routes(m), key=lambda r: r.path == "/console/logout")
    assert len(routes) > 25
    for route in routes:
        for role, token in roles.items():
            status, body, headers = await visit(m, route.method, concrete(route.path), token)
            where = f"{route.method} {route.path} as {role}: {status} {body[:200]}"
            for name, value in HEADERS.items():
                assert headers.get(name) == value, where
            if route.auth in ("none", "login"):
                assert status not in (401, 403, 500), where
                continue
            need = ROUTE_PERMISSIONS[(route.method, route.path)]
            if token is None:
                assert status == 303, where
                assert headers["Location"] == "/console/login", where
            elif need in ("authenticated", "self") or role == need:
                # Past the guards: a page, or the handler's own answer (no such task; not
                # in an application this user may execute in).
                assert status in (200, 201, 303, 400, 403, 404, 409), where
                assert "this needs the" not in body, where
            else:
                assert status == 403, where
                assert f"this needs the {need} permission" in body, where


async def test_a_state_change_needs_the_sessions_token_and_this_origin(
    m: Manager, store: Store
) -> None:
    token = await member(store, "ops@example.com", account=["manage_delegates"])
    other = await member(store, "other@example.com", account=["manage_delegates"])
    path = "/console/delegates/nothing-here/drain"
    assert (await visit(m, "POST", path, token, csrf=None))[0] == 403
    assert "form token" in (await visit(m, "POST", path, token, csrf="wrong"))[1]
    # Another session's token is not this one's.
    assert (await visit(m, "POST", path, token, csrf=csrf_token(other)))[0] == 403
    # The right token from another site: refused before the token is read.
    status, body, _ = await visit(m, "POST", path, token, origin=False)
    assert status == 403
    assert "another site" in body
    # With both, the guards and the handler answer (no such delegate).
    assert (await visit(m, "POST", path, token))[0] == 404


async def test_pages_draw_only_the_buttons_the_user_may_use(m: Manager, store: Store) -> None:
    nobody = await member(store, "nobody@example.com")
    ops = await member(store, "ops@example.com", account=["manage_delegates", "view_audit"])
    _, page, _ = await visit(m, "GET", "/console/tasks", nobody)
    assert 'id="nav-audit"' not in page
    assert 'id="nav-users"' not in page
    _, page, _ = await visit(m, "GET", "/console/tasks", ops)
    assert 'id="nav-audit"' in page
    assert 'id="nav-users"' not in page


async def test_the_api_never_takes_the_cookie(m: Manager, store: Store) -> None:
    token = await member(store, "ops@example.com", account=["manage_users"])
    resp = await m.client.get("/api/v1/users", headers={"Cookie": f"{COOKIE}={token}"})
    assert resp.status == 401


async def test_login_through_the_console_sets_a_strict_cookie(m: Manager, store: Store) -> None:
    status, body, _ = await visit(m, "POST", "/console/login", None)
    assert status == 400
    assert "Sign in" in body
    # The API's own refusal, with no detail of which part was wrong.
    resp = await m.client.post(
        "/console/login",
        data={"email": "nobody@example.com", "password": "x" * 12},
        headers={"Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
    )
    assert resp.status == 401


@pytest.mark.parametrize("path", ["/", "/console/tasks"])
async def test_signed_out_the_console_sends_to_the_login(m: Manager, path: str) -> None:
    resp = await m.client.get(path, allow_redirects=False)
    assert resp.status == 303


async def restricted_session(store: Store, email: str, restricted: str) -> str:
    d = Directory(store)
    user = await d.users.insert(UserBody(email=email, status="active"))
    token = await SessionTokens(store).new()
    body = SessionBody(
        token_hash=hash_secret(token),
        user_id=user.id,
        expires_at=4_000_000_000.0,
        restricted=restricted,
    )
    await d.sessions.insert(body)
    return token


@pytest.mark.parametrize(
    ("restricted", "shown"),
    [("totp_enrolment", "Add a device"), ("password_change", "password has expired")],
)
async def test_a_restricted_session_is_shown_only_what_it_may_do(
    m: Manager, store: Store, restricted: str, shown: str
) -> None:
    token = await restricted_session(store, f"{restricted}@example.com", restricted)
    for method, path in (
        ("GET", "/console/tasks"),
        ("GET", "/console/delegates"),
        ("POST", "/console/tasks/nothing-here/cancel"),
    ):
        status, _, headers = await visit(m, method, path, token)
        assert (status, headers.get("Location")) == (303, "/console/account"), path
    status, page, _ = await visit(m, "GET", "/console/account", token)
    assert status == 200
    assert shown in page
    assert 'href="/console/tasks"' not in page.split("<main>")[0].split("Tether</a>")[1]


async def test_an_api_key_is_shown_once_on_the_page_that_created_it(
    m: Manager, store: Store
) -> None:
    token = await member(store, "keys@example.com", account=["manage_api_keys"])
    status, page, _ = await visit(m, "POST", "/console/admin/api-keys", token)
    assert status == 400  # no name: the API's own refusal, as a page
    resp = await m.client.post(
        "/console/admin/api-keys",
        data={"name": "ci-bot", "csrf": csrf_token(token)},
        headers={"Cookie": f"{COOKIE}={token}", "Sec-Fetch-Site": "same-origin"},
    )
    page = await resp.text()
    assert resp.status == 201
    assert resp.headers["Cache-Control"] == "no-store"
    key = re.search(r'<pre id="new-key">(tak_[^<]+)</pre>', page)
    assert key is not None
    # The key works, and the list shows only its prefix from then on.
    status, _ = await m.call("GET", "/api/v1/tasks", key=key.group(1))
    assert status == 200
    _, listed, _ = await visit(m, "GET", "/console/admin/api-keys", token)
    assert "ci-bot" in listed
    assert key.group(1) not in listed


async def test_the_audit_export_streams_as_the_apis(m: Manager, store: Store) -> None:
    token = await member(store, "auditor@example.com", account=["view_audit"])
    assert (await m.call("POST", "/api/v1/apps", {"name": "shop"}))[0] == 201
    resp = await m.client.get(
        "/console/audit/export?format=jsonl", headers={"Cookie": f"{COOKIE}={token}"}
    )
    body = await resp.text()
    assert resp.status == 200, body
    events = [json.loads(line) for line in body.splitlines()]
    assert [e["summary"] for e in events if e["resource_type"] == "application"] == [
        "created application shop"
    ]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_administration_changes_go_through_the_api_and_its_trail(
    m: Manager, store: Store
) -> None:
    token = await member(
        store, "admin@example.com", account=["manage_users", "manage_applications"]
    )
    cookie = {"Cookie": f"{COOKIE}={token}", "Sec-Fetch-Site": "same-origin"}
    csrf = csrf_token(token)

    async def post(path: str, **form: str) -> tuple[int, str]:
        resp = await m.client.post(path, data={"csrf": csrf, **form}, headers=cookie)
        return resp.status, await resp.text()

    status, page = await post("/console/admin/apps", name="shop")
    assert status == 200
    assert ">shop<" in page
    app_id = re.search(r'action="/console/admin/apps/(app_[^/]+)/envs"', page)
    assert app_id is not None
    status, page = await post(
        f"/console/admin/apps/{app_id.group(1)}/envs", name="qa", type="non_production"
    )
    assert status == 200
    assert "qa (non_production)" in page
    status, page = await post("/console/admin/users", email="new@example.com", name="New")
    assert status == 200
    link = re.search(r"/console/invite\?token=(tiv_[^<]+)<", page)
    assert link is not None
    # The invite works in the console, and the trail holds the three changes by this user.
    resp = await m.client.post(
        "/console/invite",
        data={"token": link.group(1), "password": "A-good-password-1"},
        headers={"Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert resp.cookies[COOKIE].value.startswith("tss_")
    status, listed = await m.call("GET", "/api/v1/audit?actor=admin@example.com")
    assert status == 200
    assert sorted(e["action"] for e in listed["events"]) == ["create", "create", "create"]
    assert all(e["path"].startswith("/console/admin/") for e in listed["events"])


async def test_console_logins_share_the_apis_rate_limit(m: Manager) -> None:
    settings = {"login_attempts_per_ip_per_minute": 2}
    assert (await m.call("PUT", "/api/v1/auth/settings", settings))[0] == 200
    form = {"email": "nobody@example.com", "password": "Not-the-password-1"}
    statuses = []
    for path in ("/api/v1/auth/login", "/console/login", "/console/login"):
        if path.startswith("/api"):
            resp = await m.client.post(path, json=form)
        else:
            resp = await m.client.post(path, data=form, headers={"Sec-Fetch-Site": "same-origin"})
        statuses.append(resp.status)
    # One budget for the address, whichever door the attempts come through.
    assert statuses == [401, 401, 429]


async def test_the_allowlist_judges_the_console_as_the_api(m: Manager) -> None:
    entry = {"cidr": "192.0.2.0/24", "description": "not this test"}
    assert (await m.call("POST", "/api/v1/allowlist/entries", entry))[0] == 201
    assert (await m.call("POST", "/api/v1/allowlist/enable", {"confirm": True}))[0] == 200
    for path in ("/console/login", "/console/tasks"):
        resp = await m.client.get(path, allow_redirects=False)
        assert resp.status == 403, path
        assert "is not in the IP allowlist" in await resp.text()

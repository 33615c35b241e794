"""The permission matrix: every route in the OpenAPI document, called by a caller of each role,
answers 401, 403 or gets past the guards as designed.

The roles: nobody signed in; a user whose group holds no permission; one user per account
permission holding only that one; the admin key. ``MATRIX`` below is the design, written out
by hand: a route in the document but not in it (or the other way round) fails the test, so a
new route cannot ship without a decision on who may call it.
"""

from __future__ import annotations

import re
from typing import Any

from manager.schemas.grants import ACCOUNT_PERMISSIONS, AccountPermission
from manager.store.base import Store
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.rbac_support import member

A = "authenticated"
SELF = "self"
NONE = "none"  # no credentials needed
LOGIN = "login"  # no credentials needed; a password or an invite instead
DELEGATE = "delegate"  # delegate credentials: a user's key or session is refused

HANDLER_ANSWERS = (400, 404, 409)

MATRIX: dict[str, str] = {
    "GET /healthz": NONE,
    "GET /readyz": NONE,
    "GET /metrics": A,
    "GET /api/v1/openapi.json": A,
    "POST /api/v1/tasks": A,
    "GET /api/v1/tasks": A,
    "GET /api/v1/tasks/{task_id}": A,
    "POST /api/v1/tasks/{task_id}/cancel": A,
    "GET /api/v1/tasks/{task_id}/logs": A,
    "GET /api/v1/tasks/{task_id}/logs/follow": A,
    "GET /api/v1/deployments": A,
    "GET /api/v1/delegates": A,
    "POST /api/v1/delegates/{delegate}/drain": "manage_delegates",
    "POST /api/v1/delegates/{delegate}/resume": "manage_delegates",
    "DELETE /api/v1/delegates/{delegate}": "manage_delegates",
    "POST /api/v1/tokens": "manage_delegates",
    "GET /api/v1/tokens": "manage_delegates",
    "DELETE /api/v1/tokens/{name}": "manage_delegates",
    "PUT /api/v1/profiles/{name}": "manage_delegates",
    "GET /api/v1/profiles": A,
    "DELETE /api/v1/profiles/{name}": "manage_delegates",
    "GET /api/v1/secret-managers": A,
    "POST /api/v1/secret-managers": "manage_secret_managers",
    "GET /api/v1/secret-managers/{name}": A,
    "PATCH /api/v1/secret-managers/{name}": "manage_secret_managers",
    "DELETE /api/v1/secret-managers/{name}": "manage_secret_managers",
    "POST /api/v1/secret-managers/{name}/test": "manage_secret_managers",
    "GET /api/v1/secrets": A,
    "POST /api/v1/secrets": "manage_secrets",
    "GET /api/v1/secrets/{name}": A,
    "PATCH /api/v1/secrets/{name}": "manage_secrets",
    "DELETE /api/v1/secrets/{name}": "manage_secrets",
    "GET /api/v1/secrets/{name}/versions": A,
    "POST /api/v1/secrets/{name}/migrate": "manage_secrets",
    "PUT /api/v1/secrets/{name}/scope": "manage_secrets",
    "PUT /api/v1/secret-managers/{name}/scope": "manage_secret_managers",
    "POST /api/v1/api-keys": "manage_api_keys",
    "GET /api/v1/api-keys": "manage_api_keys",
    "DELETE /api/v1/api-keys/{name}": "manage_api_keys",
    "GET /api/v1/api-key-defaults": "manage_api_keys",
    "PUT /api/v1/api-key-defaults": "manage_api_keys",
    "GET /api/v1/allowlist": "manage_governance",
    "POST /api/v1/allowlist/enable": "manage_governance",
    "POST /api/v1/allowlist/disable": "manage_governance",
    "POST /api/v1/allowlist/entries": "manage_governance",
    "DELETE /api/v1/allowlist/entries/{entry_id}": "manage_governance",
    "POST /api/v1/allowlist/entries/{entry_id}/enable": "manage_governance",
    "POST /api/v1/allowlist/entries/{entry_id}/disable": "manage_governance",
    "GET /api/v1/allowlist/trusted-proxies": "manage_governance",
    "PUT /api/v1/allowlist/trusted-proxies": "manage_governance",
    "GET /api/v1/audit": "view_audit",
    "GET /api/v1/audit/export": "view_audit",
    "GET /api/v1/audit/verify": "view_audit",
    "GET /api/v1/audit/filters": "view_audit",
    "POST /api/v1/audit/filters": "view_audit",
    "DELETE /api/v1/audit/filters/{name}": "view_audit",
    "GET /api/v1/users": "manage_users",
    "POST /api/v1/users": "manage_users",
    "GET /api/v1/users/{user}": "manage_users",
    "PATCH /api/v1/users/{user}": "manage_users",
    "POST /api/v1/users/{user}/disable": "manage_users",
    "POST /api/v1/users/{user}/enable": "manage_users",
    "POST /api/v1/users/{user}/invite": "manage_users",
    "POST /api/v1/users/{user}/unlock": "manage_users",
    "POST /api/v1/users/{user}/reset-2fa": "manage_users",
    "POST /api/v1/users/{user}/logout": "manage_users",
    "GET /api/v1/groups": A,
    "POST /api/v1/groups": "manage_user_groups",
    "GET /api/v1/groups/{group}": A,
    "PATCH /api/v1/groups/{group}": "manage_user_groups",
    "DELETE /api/v1/groups/{group}": "manage_user_groups",
    "GET /api/v1/apps": A,
    "POST /api/v1/apps": "manage_applications",
    "DELETE /api/v1/apps/{app}": "manage_applications",
    "GET /api/v1/apps/{app}/envs": A,
    "POST /api/v1/apps/{app}/envs": "manage_applications",
    "PATCH /api/v1/apps/{app}/envs/{env}": "manage_applications",
    "DELETE /api/v1/apps/{app}/envs/{env}": "manage_applications",
    "GET /api/v1/auth/settings": "manage_users",
    "PUT /api/v1/auth/settings": "manage_users",
    "GET /api/v1/auth/sso": "manage_users",
    "PUT /api/v1/auth/sso": "manage_users",
    "POST /api/v1/auth/sso/start": LOGIN,
    "GET /api/v1/auth/sso/callback": LOGIN,
    "POST /api/v1/auth/sso/poll": LOGIN,
    "POST /api/v1/auth/login": LOGIN,
    "POST /api/v1/auth/invite/accept": LOGIN,
    "GET /api/v1/auth/me": SELF,
    "POST /api/v1/auth/password": SELF,
    "POST /api/v1/auth/totp/enrol": SELF,
    "POST /api/v1/auth/totp/confirm": SELF,
    "POST /api/v1/auth/logout": SELF,
    "POST /api/v1/delegate/register": DELEGATE,
    "GET /api/v1/delegate/stream": DELEGATE,
    "POST /api/v1/delegate/heartbeat": DELEGATE,
    "GET /api/v1/delegate/tasks/next": DELEGATE,
    "POST /api/v1/delegate/tasks/{task_id}/acquire": DELEGATE,
    "POST /api/v1/delegate/tasks/{task_id}/logs": DELEGATE,
    "POST /api/v1/delegate/tasks/{task_id}/result": DELEGATE,
}


async def routes(m: Manager) -> list[str]:
    status, doc = await m.call("GET", "/api/v1/openapi.json")
    assert status == 200
    return [f"{method.upper()} {path}" for path, ops in doc["paths"].items() for method in ops]


async def call(m: Manager, route: str, token: str | None) -> tuple[int, Any]:
    method, path = route.split(" ", 1)
    # Path parameters name nothing that exists: a caller who gets past the guards meets a
    # 404 (or a 400 for the empty body), never a change.
    concrete = re.sub(r"\{[^}]+\}", "nothing-here", path)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    body: dict[str, Any] | None = None if method in ("GET", "DELETE") else {}
    resp = await m.client.request(method, concrete, json=body, headers=headers)
    try:
        data = await resp.json() if resp.content_type == "application/json" else None
    finally:
        resp.close()
    return resp.status, data


async def test_every_route_is_in_the_matrix_and_nothing_else_is(m: Manager) -> None:
    documented = set(await routes(m))
    assert sorted(documented - MATRIX.keys()) == [], "routes with no decision in MATRIX"
    assert sorted(MATRIX.keys() - documented) == [], "MATRIX lists routes that do not exist"


async def test_each_role_is_let_through_or_refused_as_designed(m: Manager, store: Store) -> None:
    roles: dict[str, str | None] = {"anonymous": None, "admin": m.key}
    roles["nobody"] = await member(store, "nobody@example.com")
    for perm in ACCOUNT_PERMISSIONS:
        roles[perm] = await member(store, f"{perm}@example.com", account=[perm])
    # Logging out ends the caller's session: last, so every other route sees live sessions.
    order = sorted(await routes(m), key=lambda r: r.endswith("/auth/logout"))
    for route in order:
        need = MATRIX[route]
        for role, token in roles.items():
            status, body = await call(m, route, token)
            where = f"{route} as {role}: {status} {body}"
            if need == NONE:
                assert status not in (401, 403), where
            elif need == LOGIN:
                # No credential is asked for: the body (empty here) is what is judged.
                assert status == 400, where
            elif need == DELEGATE:
                # Users' keys and sessions are not delegate credentials.
                assert status == 401, where
            elif token is None:
                assert status == 401, where
                assert body["error"]["code"] == "unauthenticated", where
            elif need in (A, SELF) or role == "admin" or role == need:
                # Past the guards: a 2xx, or the handler's own answer to an empty body or a
                # resource that is not there; never a refusal, never a server error.
                assert 200 <= status < 300 or status in HANDLER_ANSWERS, where
            else:
                assert status == 403, where
                assert body["error"]["message"] == f"this needs the {need} permission", where


def test_the_matrix_names_only_real_permissions() -> None:
    known: set[str] = {A, SELF, NONE, LOGIN, DELEGATE, *ACCOUNT_PERMISSIONS}
    assert {v for v in MATRIX.values()} <= known
    # Every account permission guards something.
    used: set[AccountPermission] = {p for p in ACCOUNT_PERMISSIONS if p in MATRIX.values()}
    assert used == set(ACCOUNT_PERMISSIONS)

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

from hypothesis import given, settings
from hypothesis import strategies as st

from manager.access.granting import Offered, refusal
from manager.core.rbac import Grants
from manager.schemas.grants import ACCOUNT_PERMISSIONS, ACTIONS, ADMIN_GROUP, AccountPermission
from manager.store.base import Store
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.core.test_rbac_within import ENVS, TARGETS, grants_st
from tests.manager.rbac_support import member

A = "authenticated"
SELF = "self"
NONE = "none"  # no credentials needed
LOGIN = "login"  # no credentials needed; a password or an invite instead
DELEGATE = "delegate"  # delegate credentials: a user's key or session is refused
TASK = "task"  # a running task's id-token request credential: every user credential is refused
HOOK = "hook"  # a webhook delivery: its own secret, so an unknown webhook is a 404 for all
# Permissions a handler checks rather than a route (proceeding through a freeze window).
HANDLER_PERMISSIONS = {"override_freeze"}
SCIM = "scim"  # a SCIM token (manager.access.scim): a user's key or session is refused

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
    "PUT /api/v1/verifications/{name}": "manage_governance",
    "GET /api/v1/verifications": A,
    "GET /api/v1/verifications/{name}": A,
    "DELETE /api/v1/verifications/{name}": "manage_governance",
    "POST /api/v1/verification-runs": A,
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
    "PUT /api/v1/users/{user}/sso-link": "manage_users",
    "DELETE /api/v1/users/{user}/sso-link": "manage_users",
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
    "POST /api/v1/auth/sso/approve": LOGIN,
    "POST /api/v1/auth/sso/poll": LOGIN,
    "POST /api/v1/auth/login": LOGIN,
    "POST /api/v1/auth/invite/accept": LOGIN,
    "GET /api/v1/auth/me": SELF,
    "POST /api/v1/auth/password": SELF,
    "POST /api/v1/auth/totp/enrol": SELF,
    "POST /api/v1/auth/totp/confirm": SELF,
    "POST /api/v1/auth/totp/verify": SELF,
    "POST /api/v1/auth/sso/link": SELF,
    "POST /api/v1/auth/logout": SELF,
    "POST /api/v1/delegate/register": DELEGATE,
    "GET /api/v1/delegate/token": DELEGATE,
    "GET /api/v1/delegate/stream": DELEGATE,
    "POST /api/v1/delegate/heartbeat": DELEGATE,
    "GET /api/v1/delegate/tasks/next": DELEGATE,
    "POST /api/v1/delegate/tasks/{task_id}/acquire": DELEGATE,
    "POST /api/v1/delegate/tasks/{task_id}/logs": DELEGATE,
    "POST /api/v1/delegate/tasks/{task_id}/result": DELEGATE,
    # Workload identity: the discovery document and the keys are public.
    "GET /.well-known/openid-configuration": NONE,
    "GET /.well-known/jwks.json": NONE,
    "POST /api/v1/id-token": TASK,
    "GET /api/v1/retention": "manage_governance",
    "PUT /api/v1/retention": "manage_governance",
    # issue 18: freeze windows, incoming webhooks, incidents
    "POST /api/v1/freezes": "manage_governance",
    "GET /api/v1/freezes": A,
    "DELETE /api/v1/freezes/{name}": "manage_governance",
    "POST /api/v1/webhooks": "manage_webhooks",
    "GET /api/v1/webhooks": "manage_webhooks",
    "GET /api/v1/webhooks/{name}": "manage_webhooks",
    "DELETE /api/v1/webhooks/{name}": "manage_webhooks",
    "POST /api/v1/webhooks/{name}/rotate-secret": "manage_webhooks",
    "POST /hooks/{webhook_id}": HOOK,
    "GET /api/v1/incidents": "manage_incidents",
    "GET /api/v1/incidents/{incident_id}": "manage_incidents",
    "POST /api/v1/incidents/{incident_id}/ack": "manage_incidents",
    "POST /api/v1/incidents/{incident_id}/resolve": "manage_incidents",
    "POST /api/v1/incidents/{incident_id}/notes": "manage_incidents",
    "GET /api/v1/incident-retention": "manage_incidents",
    "PUT /api/v1/incident-retention": "manage_governance",
    # runbooks: the handlers check update/read/execute on the runbook's place
    "PUT /api/v1/runbooks/{name}": A,
    "GET /api/v1/runbooks": A,
    "GET /api/v1/runbooks/{name}": A,
    "DELETE /api/v1/runbooks/{name}": A,
    "POST /api/v1/runbooks/{name}/runs": A,
    "GET /api/v1/runbook-runs": A,
    "GET /api/v1/runbook-runs/{run_id}": A,
    "POST /api/v1/runbook-runs/{run_id}/approve": A,
    "POST /api/v1/runbook-runs/{run_id}/reject": A,
    "POST /api/v1/runbook-runs/{run_id}/cancel": A,
    "PUT /api/v1/standards/{name}": "manage_governance",
    "GET /api/v1/standards": A,
    "GET /api/v1/standards/{name}": A,
    "DELETE /api/v1/standards/{name}": "manage_governance",
    # directory sign-in (issue 19)
    "GET /api/v1/auth/ldap": "manage_users",
    "PUT /api/v1/auth/ldap": "manage_users",
    "DELETE /api/v1/auth/ldap": "manage_users",
    "POST /api/v1/auth/ldap/login": LOGIN,
    "GET /api/v1/auth/saml": "manage_users",
    "PUT /api/v1/auth/saml": "manage_users",
    "DELETE /api/v1/auth/saml": "manage_users",
    "GET /api/v1/auth/saml/metadata": LOGIN,
    "POST /api/v1/auth/saml/start": LOGIN,
    "POST /api/v1/auth/saml/acs": LOGIN,
    "POST /api/v1/scim/tokens": "manage_users",
    "GET /api/v1/scim/tokens": "manage_users",
    "DELETE /api/v1/scim/tokens/{name}": "manage_users",
    "GET /scim/v2/ServiceProviderConfig": SCIM,
    "GET /scim/v2/ResourceTypes": SCIM,
    "GET /scim/v2/ResourceTypes/{name}": SCIM,
    "GET /scim/v2/Schemas": SCIM,
    "GET /scim/v2/Schemas/{schema_id}": SCIM,
    "GET /scim/v2/Users": SCIM,
    "POST /scim/v2/Users": SCIM,
    "POST /scim/v2/Users/.search": SCIM,
    "GET /scim/v2/Users/{scim_id}": SCIM,
    "PUT /scim/v2/Users/{scim_id}": SCIM,
    "PATCH /scim/v2/Users/{scim_id}": SCIM,
    "DELETE /scim/v2/Users/{scim_id}": SCIM,
    "GET /scim/v2/Groups": SCIM,
    "POST /scim/v2/Groups": SCIM,
    "POST /scim/v2/Groups/.search": SCIM,
    "GET /scim/v2/Groups/{scim_id}": SCIM,
    "PUT /scim/v2/Groups/{scim_id}": SCIM,
    "PATCH /scim/v2/Groups/{scim_id}": SCIM,
    "DELETE /scim/v2/Groups/{scim_id}": SCIM,
    "POST /scim/v2/.search": SCIM,
    "GET /scim/v2/{resource}": SCIM,
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
            elif need == HOOK:
                assert status == 404, where
            elif need == LOGIN:
                # No credential is asked for: the body (empty here) is what is judged.
                assert status == 400, where
            elif need in (DELEGATE, TASK, SCIM):
                # Users' keys and sessions are neither delegate nor task credentials, nor
                # SCIM tokens.
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
    known: set[str] = {A, SELF, NONE, LOGIN, DELEGATE, TASK, HOOK, SCIM, *ACCOUNT_PERMISSIONS}
    assert {v for v in MATRIX.values()} <= known
    # Every account permission guards something.
    used: set[AccountPermission] = {p for p in ACCOUNT_PERMISSIONS if p in MATRIX.values()}
    assert used == set(ACCOUNT_PERMISSIONS) - HANDLER_PERMISSIONS


# -- escalation: nobody is raised above the principal making the change ----------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(grants_st, min_size=0, max_size=3),
    st.lists(st.tuples(grants_st, st.booleans()), min_size=1, max_size=3),
)
def test_no_grant_raises_anyone_above_its_author(
    author_groups: list[Grants], offered: list[tuple[Grants, bool]]
) -> None:
    """The author acts through a random set of groups and hands out a random set (the
    administrators' group among them at random): whenever the rule lets it, the receiver gains
    nothing, anywhere, that the author does not hold."""
    author = Grants.union((a.account, a.apps) for a in author_groups)
    groups = [Offered(f"g{i}", grants, admin) for i, (grants, admin) in enumerate(offered)]
    if refusal(author, groups, ENVS) is not None:
        return
    gained = Grants.union((o.grants.account, o.grants.apps) for o in groups)
    assert gained.account <= author.account
    for action in ACTIONS:
        for t in [*TARGETS, None]:
            assert not gained.allows(t, action) or author.allows(t, action), (t, action)
    if any(o.admin_group for o in groups):
        assert author.account == frozenset(ACCOUNT_PERMISSIONS)
        assert all(author.everywhere(a) for a in ACTIONS)


async def _group(m: Manager, name: str, body: dict[str, Any]) -> None:
    status, made = await m.call("POST", "/api/v1/groups", {"name": name, **body})
    assert status == 201, made


async def test_a_user_manager_cannot_join_or_hand_out_bigger_groups(
    m: Manager, store: Store
) -> None:
    users = await member(store, "users@example.com", account=["manage_users"])
    await member(store, "other@example.com")
    await _group(m, "auditors", {"account_permissions": ["view_audit"]})
    await _group(m, "user-admins", {"account_permissions": ["manage_users"]})
    for groups, why in (
        ([ADMIN_GROUP], f"only an administrator may grant the group {ADMIN_GROUP!r}"),
        (["user-admins", "auditors"], "the group 'auditors' holds permissions you do not hold"),
    ):
        # Not to themselves, nor to anyone else, nor to a user they invite.
        for method, path, body in (
            ("PATCH", "/api/v1/users/users@example.com", {"groups": groups}),
            ("PATCH", "/api/v1/users/other@example.com", {"groups": groups}),
            ("POST", "/api/v1/users", {"email": "new@example.com", "groups": groups}),
        ):
            status, err = await m.call(method, path, body, key=users)
            assert (status, err["error"]["message"]) == (403, why), (path, err)
    status, them = await m.call("GET", "/api/v1/users/other@example.com")
    assert them["groups"] == ["group-other@example.com"]
    assert (await m.call("GET", "/api/v1/users/new@example.com"))[0] == 404
    # Within their own grants they may, and taking a group away raises nobody.
    status, changed = await m.call(
        "PATCH", "/api/v1/users/other@example.com", {"groups": ["user-admins"]}, key=users
    )
    assert (status, changed["groups"]) == (200, ["user-admins"])
    status, changed = await m.call(
        "PATCH", "/api/v1/users/other@example.com", {"groups": []}, key=users
    )
    assert (status, changed["groups"]) == (200, [])
    # An administrator (the test's key) may grant any group.
    status, changed = await m.call(
        "PATCH", "/api/v1/users/other@example.com", {"groups": [ADMIN_GROUP]}
    )
    assert (status, changed["groups"]) == (200, [ADMIN_GROUP])


async def test_a_group_manager_cannot_make_a_group_bigger_than_themselves(
    m: Manager, store: Store
) -> None:
    editor = await member(store, "groups@example.com", account=["manage_user_groups", "view_audit"])
    await _group(m, "readers", {})
    for body in (
        {"account_permissions": ["manage_users"]},
        {"app_permissions": [{"apps": "all", "envs": "all", "actions": ["execute"]}]},
    ):
        status, err = await m.call("PATCH", "/api/v1/groups/readers", body, key=editor)
        assert status == 403, err
        assert (
            err["error"]["message"] == "the group 'readers' would hold permissions you do not hold"
        )
        status, err = await m.call("POST", "/api/v1/groups", {"name": "big", **body}, key=editor)
        assert status == 403, err
    status, group = await m.call("GET", "/api/v1/groups/readers")
    assert (group["account_permissions"], group["app_permissions"]) == ([], [])
    # Within the editor's own grants it goes through.
    status, group = await m.call(
        "PATCH", "/api/v1/groups/readers", {"account_permissions": ["view_audit"]}, key=editor
    )
    assert (status, group["account_permissions"]) == (200, ["view_audit"])


async def test_an_api_key_carries_no_group_beyond_its_creator(m: Manager, store: Store) -> None:
    # manage_user_groups used to let a key carry any group at all.
    keys = await member(
        store, "keys@example.com", account=["manage_api_keys", "manage_user_groups"]
    )
    await _group(m, "auditors", {"account_permissions": ["view_audit"]})
    await _group(m, "keymakers", {"account_permissions": ["manage_api_keys"]})
    for service_account in (True, False):
        body = {"name": f"robot-{service_account}", "service_account": service_account}
        status, err = await m.call(
            "POST", "/api/v1/api-keys", {**body, "groups": ["auditors"]}, key=keys
        )
        assert status == 403, err
        assert err["error"]["message"] == "the group 'auditors' holds permissions you do not hold"
    assert [k for k in await store.list_api_keys() if k.name.startswith("robot")] == []
    status, made = await m.call(
        "POST",
        "/api/v1/api-keys",
        {"name": "robot", "service_account": True, "groups": ["keymakers"]},
        key=keys,
    )
    assert (status, made["groups"]) == (201, ["keymakers"])

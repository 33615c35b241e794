"""Users, groups, applications and environments through the API: invites, validation,
protected built-ins, views without secrets, audit events, and permissions taking effect."""

from __future__ import annotations

import re
from typing import Any

import pytest

from manager.access.directory import Directory
from manager.client.cli.context import UsageError
from manager.client.cli.directory import parse_app_permission
from manager.store.base import Store
from shared.ids import hash_secret
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.rbac_support import member


async def ok(m: Manager, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    got, answer = await m.call(method, path, body)
    assert got == status, answer
    return answer


async def test_apps_envs_and_a_group_granting_on_them(m: Manager) -> None:
    await ok(m, "POST", "/api/v1/apps", {"name": "checkout"}, 201)
    await ok(m, "POST", "/api/v1/apps/checkout/envs", {"name": "prod", "type": "production"}, 201)
    await ok(m, "POST", "/api/v1/apps/checkout/envs", {"name": "qa", "type": "non_production"}, 201)
    envs = await ok(m, "GET", "/api/v1/apps/checkout/envs")
    assert [(e["name"], e["type"]) for e in envs["envs"]] == [
        ("prod", "production"),
        ("qa", "non_production"),
    ]
    group = await ok(
        m,
        "POST",
        "/api/v1/groups",
        {
            "name": "deployers",
            "account_permissions": ["view_audit", "view_audit"],
            "app_permissions": [
                {"apps": ["checkout"], "envs": ["qa"], "actions": ["read", "execute"]}
            ],
        },
        201,
    )
    assert group["account_permissions"] == ["view_audit"]
    assert group["app_permissions"] == [
        {"apps": ["checkout"], "envs": ["qa"], "actions": ["read", "execute"]}
    ]
    # Names that do not exist are refused, naming them, and nothing is made.
    status, body = await m.call(
        "POST",
        "/api/v1/groups",
        {"name": "x", "app_permissions": [{"apps": ["nope"], "actions": ["read"]}]},
    )
    assert (status, body["error"]["message"]) == (400, "no application 'nope'")
    status, body = await m.call("POST", "/api/v1/apps", {"name": "checkout"})
    assert (status, body["error"]["message"]) == (409, "an application 'checkout' exists")
    status, body = await m.call("DELETE", "/api/v1/apps/checkout")
    assert status == 409
    assert "has environments" in body["error"]["message"]
    assert [g["name"] for g in (await ok(m, "GET", "/api/v1/groups"))["groups"]] == [
        "Account Administrators",
        "deployers",
    ]


async def test_a_user_is_invited_and_shown_without_secrets(m: Manager, store: Store) -> None:
    await ok(
        m,
        "POST",
        "/api/v1/groups",
        {"name": "auditors", "account_permissions": ["view_audit"]},
        201,
    )
    created = await ok(
        m, "POST", "/api/v1/users", {"email": "Dev@Example.com", "groups": ["auditors"]}, 201
    )
    assert (created["email"], created["status"], created["groups"]) == (
        "dev@example.com",
        "invited",
        ["auditors"],
    )
    token = created["invite_token"]
    assert token.startswith("tiv_")
    user = await Directory(store).users.by_key("dev@example.com")
    assert user is not None
    assert user.body.invite_hash == hash_secret(token)  # only the hash is kept
    shown = await ok(m, "GET", "/api/v1/users/dev@example.com")
    assert "invite_token" not in shown
    for field in ("password_hash", "totp_sealed", "recovery_hashes", "invite_hash"):
        assert field not in shown
    # A new invite replaces the old one.
    again = await ok(m, "POST", f"/api/v1/users/{created['id']}/invite")
    stored = await Directory(store).users.by_key("dev@example.com")
    assert stored is not None
    assert stored.body.invite_hash == hash_secret(again["invite_token"]) != hash_secret(token)
    for bad, why in (
        ({"email": "not-an-email"}, 400),
        ({"email": "dev@example.com"}, 409),
        ({"email": "x@example.com", "groups": ["nope"]}, 400),
    ):
        assert (await m.call("POST", "/api/v1/users", bad))[0] == why
    listed = await ok(m, "GET", "/api/v1/users?group=auditors")
    assert [u["email"] for u in listed["users"]] == ["dev@example.com"]
    # The trail has the invite, without the token.
    trail = await ok(m, "GET", "/api/v1/audit?type=user")
    assert [e["action"] for e in trail["events"]] == ["invite", "create"]
    assert token not in str(trail)
    assert again["invite_token"] not in str(trail)


async def test_the_admin_group_is_built_in(m: Manager) -> None:
    status, body = await m.call(
        "PATCH", "/api/v1/groups/Account Administrators", {"account_permissions": []}
    )
    assert (status, body["error"]["message"]) == (
        400,
        "the administrators' permissions are built in",
    )
    status, _ = await m.call("DELETE", "/api/v1/groups/grp_admins")
    assert status == 400
    assert (await ok(m, "PATCH", "/api/v1/groups/grp_admins", {"description": "root"}))[
        "description"
    ] == "root"


async def test_group_changes_take_effect_at_once_and_disabling_ends_sessions(
    m: Manager, store: Store
) -> None:
    token = await member(store, "ops@example.com")
    assert (await m.call("GET", "/api/v1/audit", key=token))[0] == 403
    await ok(
        m, "PATCH", "/api/v1/groups/group-ops@example.com", {"account_permissions": ["view_audit"]}
    )
    assert (await m.call("GET", "/api/v1/audit", key=token))[0] == 200
    # A group with members is not deleted by accident.
    status, _ = await m.call("DELETE", "/api/v1/groups/group-ops@example.com")
    assert status == 409
    await ok(m, "POST", "/api/v1/users/ops@example.com/disable")
    status, body = await m.call("GET", "/api/v1/audit", key=token)
    assert (status, body["error"]["code"]) == (401, "session_expired")
    assert [s for s in await Directory(store).sessions.list()] == []
    enabled = await ok(m, "POST", "/api/v1/users/ops@example.com/enable")
    assert enabled["status"] == "invited"  # never had a password: invited again, not active
    await ok(m, "DELETE", "/api/v1/groups/group-ops@example.com?force=true", status=204)
    user = await Directory(store).users.by_key("ops@example.com")
    assert user is not None
    assert user.body.groups == []


async def test_users_need_manage_users(m: Manager, store: Store) -> None:
    plain = await member(store, "plain@example.com", account=["manage_applications"])
    status, body = await m.call("GET", "/api/v1/users", key=plain)
    assert (status, body["error"]["message"]) == (403, "this needs the manage_users permission")
    assert (await m.call("POST", "/api/v1/apps", {"name": "web"}, key=plain))[0] == 201


def test_app_permission_specs_parse_or_say_what_is_wrong() -> None:
    p = parse_app_permission("apps=checkout,billing; envs=production; actions=read,execute")
    assert (p.apps, p.envs, p.actions) == (
        ["checkout", "billing"],
        "production",
        ["read", "execute"],
    )
    p = parse_app_permission("actions=read")
    assert (p.apps, p.envs) == ("all", "all")
    assert parse_app_permission("envs=qa;actions=read").envs == ["qa"]
    for bad, says in (
        ("apps=checkout", "name the actions"),
        ("apps checkout;actions=read", "expected apps=...;envs=...;actions=..."),
        ("actions=deploy", "--app-permission actions: Input should be 'create'"),
        ("regions=eu;actions=read", "expected apps="),
    ):
        with pytest.raises(UsageError, match=re.escape(says)):
            parse_app_permission(bad)

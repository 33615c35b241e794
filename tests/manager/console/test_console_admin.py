"""Administration in the console: a group's permissions, disabling and enabling a user, the
login settings. Each through the API's own handler (its grantability check, its event in the
trail), each behind the session's CSRF token, each form drawn only for those who may."""

from __future__ import annotations

import re

import pytest

from manager.access.directory import Directory, GroupBody
from manager.api.console_cookie import COOKIE
from manager.console.security import csrf_token
from manager.schemas.grants import AppGrant
from manager.store.base import Store
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.console.test_console_access import visit
from tests.manager.rbac_support import member


async def post(m: Manager, token: str, path: str, form: list[tuple[str, str]]) -> tuple[int, str]:
    headers = {"Cookie": f"{COOKIE}={token}", "Sec-Fetch-Site": "same-origin"}
    data = [("csrf", csrf_token(token)), *form]
    resp = await m.client.post(path, data=data, headers=headers, allow_redirects=False)
    return resp.status, await resp.text()


async def trail(m: Manager, actor: str) -> list[tuple[str, str, str]]:
    status, listed = await m.call("GET", f"/api/v1/audit?actor={actor}")
    assert status == 200
    return [(e["resource_type"], e["action"], e["path"]) for e in listed["events"]]


async def test_a_groups_permissions_are_edited_within_the_editors_own(
    m: Manager, store: Store
) -> None:
    editor = await member(
        store,
        "groups@example.com",
        account=["manage_user_groups", "view_audit"],
        apps=[AppGrant(actions=("read",))],
    )
    group = await Directory(store).groups.insert(GroupBody(name="<script>ops</script>"))
    path = f"/console/admin/groups/{group.id}"
    _, page, _ = await visit(m, "GET", "/console/admin/groups", editor)
    assert f'action="{path}"' in page
    assert "<script>ops" not in page
    assert "&lt;script&gt;ops&lt;/script&gt;" in page
    grant = '{"apps": "all", "envs": "non_production", "actions": ["read"]}'
    form = [
        ("description", "on call"),
        ("account_permissions", "view_audit"),
        ("app_permissions", f"{grant}\r\n\r\n"),
    ]
    status, page = await post(m, editor, path, form)
    assert status == 200, page
    status, view = await m.call("GET", f"/api/v1/groups/{group.id}")
    assert view["account_permissions"] == ["view_audit"]
    assert view["app_permissions"] == [
        {"apps": "all", "envs": "non_production", "actions": ["read"]}
    ]
    assert view["description"] == "on call"
    # More than the editor holds: the API's own check refuses it, and nothing changes.
    status, page = await post(m, editor, path, [("account_permissions", "manage_delegates")])
    assert status == 403
    assert "permissions you do not hold" in page
    # A line that is not JSON: a clear refusal, nothing changed.
    status, page = await post(m, editor, path, [("app_permissions", "apps: all")])
    assert status == 400
    assert "line 1: not a JSON object" in page
    status, after = await m.call("GET", f"/api/v1/groups/{group.id}")
    assert after == view
    assert await trail(m, "groups@example.com") == [("user_group", "update", path)]


async def test_a_user_is_disabled_and_enabled_and_their_session_ends(
    m: Manager, store: Store
) -> None:
    admin = await member(store, "users@example.com", account=["manage_users"])
    victim = await member(store, "victim@example.com")
    status, view = await m.call("GET", "/api/v1/users/victim@example.com")
    user_id = view["id"]
    _, page, _ = await visit(m, "GET", "/console/admin/users", admin)
    assert f'action="/console/admin/users/{user_id}/disable"' in page
    status, page = await post(m, admin, f"/console/admin/users/{user_id}/disable", [])
    assert status == 200, page
    assert f'action="/console/admin/users/{user_id}/enable"' in page
    assert (await visit(m, "GET", "/console/tasks", victim))[2]["Location"] == "/console/login"
    status, page = await post(m, admin, f"/console/admin/users/{user_id}/enable", [])
    assert status == 200, page
    # Never set a password (an invite never accepted): invited again, not active.
    assert (await m.call("GET", f"/api/v1/users/{user_id}"))[1]["status"] == "invited"
    # Enabling an enabled user: the API's refusal, as a page.
    status, page = await post(m, admin, f"/console/admin/users/{user_id}/enable", [])
    assert status == 409
    assert "is not disabled" in page
    assert sorted(a for _, a, _ in await trail(m, "users@example.com")) == ["disable", "enable"]


async def test_the_login_settings_are_changed_as_a_whole(m: Manager, store: Store) -> None:
    admin = await member(store, "settings@example.com", account=["manage_users"])
    _, page, _ = await visit(m, "GET", "/console/admin/settings", admin)
    fields = dict(re.findall(r'<input name="([a-z_0-9]+)" size="\d+" value="([^"]*)"', page))
    assert fields["lockout_attempts"] == "5"
    form = [(k, v) for k, v in fields.items() if k != "lockout_attempts"]
    form += [("lockout_attempts", "7")]
    form += [("password_classes", "lower"), ("password_classes", "digit")]
    # Enforcing 2FA without having it: the API's refusal, shown (not a trip to the account).
    status, page = await post(m, admin, "/console/admin/settings", [*form, ("enforce_2fa", "yes")])
    assert status == 409
    assert "turn on two-factor authentication for yourself" in page
    status, page = await post(m, admin, "/console/admin/settings", form)
    assert status == 200, page
    status, settings = await m.call("GET", "/api/v1/auth/settings")
    assert (settings["lockout_attempts"], settings["enforce_2fa"]) == (7, False)
    assert settings["password_classes"] == ["lower", "digit"]
    assert settings["session_ttl_minutes"] == 480  # sent back as it was
    status, page = await post(m, admin, "/console/admin/settings", [("lockout_attempts", "x")])
    assert status == 400
    assert (await m.call("GET", "/api/v1/auth/settings"))[1] == settings
    assert [a for _, a, _ in await trail(m, "settings@example.com")] == ["update"]


@pytest.mark.parametrize(
    "path",
    [
        "/console/admin/groups/grp_x",
        "/console/admin/users/usr_x/disable",
        "/console/admin/users/usr_x/enable",
        "/console/admin/settings",
    ],
)
async def test_each_change_needs_the_token_and_this_origin(
    m: Manager, store: Store, path: str
) -> None:
    token = await member(store, "admin@example.com", account=["manage_users", "manage_user_groups"])
    status, body, _ = await visit(m, "POST", path, token, csrf=None)
    assert (status, "form token" in body) == (403, True)
    status, body, _ = await visit(m, "POST", path, token, origin=False)
    assert (status, "another site" in body) == (403, True)


async def test_forms_are_drawn_only_for_those_who_may(m: Manager, store: Store) -> None:
    viewer = await member(store, "viewer@example.com")
    _, page, _ = await visit(m, "GET", "/console/admin/groups", viewer)
    assert "edit-group" not in page
    assert "/console/admin/groups/grp_" not in page

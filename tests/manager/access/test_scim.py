"""SCIM 2.0 provisioning against a real manager: the SCIM token (shown once, hashed, revoked),
users and groups with filters, paging, PATCH and deactivation (sessions and API keys stop at
once), SCIM's error format, the audit trail, what a SCIM token may not touch, and
scim2-tester's compliance checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.access.tokens import create_api_key
from manager.schemas.grants import ADMIN_GROUP
from manager.store.base import Store
from shared.ids import hash_secret
from tests.manager.access_support import Clock, Manager, manager, sqlite_store
from tests.manager.scim_client import RequestsScimClient

__all__ = ["sqlite_store"]

SCIM = "application/scim+json"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


@pytest.fixture
async def m(tmp_path: Path, store: Store) -> AsyncIterator[Manager]:
    async with manager(tmp_path, store, Clock()) as replica:
        yield replica


async def new_token(m: Manager, name: str = "okta", **more: Any) -> str:
    status, made = await m.call("POST", "/api/v1/scim/tokens", {"name": name, **more})
    assert status == 201, made
    token: str = made["token"]
    return token


async def scim(
    m: Manager, method: str, path: str, body: Any = None, *, token: str
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": SCIM}
    resp = await m.client.request(method, f"/scim/v2{path}", json=body, headers=headers)
    if resp.status == 204:
        return 204, None
    assert resp.content_type == SCIM, (resp.status, await resp.text())
    return resp.status, await resp.json(content_type=None)


def user_doc(name: str, **more: Any) -> dict[str, Any]:
    return {
        "schemas": [USER],
        "userName": name,
        "displayName": name.split("@")[0].title(),
        "emails": [{"value": name, "primary": True}],
        **more,
    }


async def test_the_token_is_shown_once_hashed_and_revocable(m: Manager, store: Store) -> None:
    token = await new_token(m)
    assert token.startswith("tsc_")
    status, listed = await m.call("GET", "/api/v1/scim/tokens")
    assert status == 200
    assert token not in str(listed)
    assert listed["tokens"][0]["name"] == "okta"
    # The database holds its hash only.
    stored = str([r for r in await store.list_entities("scim_token")])
    assert token not in stored
    assert hash_secret(token) in stored
    assert (await scim(m, "GET", "/Users", token=token))[0] == 200
    # A user's API key, no key, and a wrong token are refused in SCIM's format.
    for bad in (m.key, "tsc_not-a-token", ""):
        status, body = await scim(m, "GET", "/Users", token=bad)
        assert status == 401
        assert body["schemas"] == [ERROR]
    assert (await m.call("DELETE", "/api/v1/scim/tokens/okta"))[0] == 200
    assert (await scim(m, "GET", "/Users", token=token))[0] == 401
    status, trail = await m.call("GET", "/api/v1/audit")
    actions = [e["action"] for e in trail["events"] if e["resource_type"] == "scim_token"]
    assert actions == ["delete", "create"]
    assert token not in str(trail)


async def test_users_are_made_found_by_filter_and_paged(m: Manager) -> None:
    token = await new_token(m)
    ids = []
    for n in range(3):
        status, made = await scim(
            m, "POST", "/Users", user_doc(f"u{n}@example.com", externalId=f"ext-{n}"), token=token
        )
        assert status == 201, made
        assert made["meta"]["resourceType"] == "User"
        ids.append(made["id"])
    status, found = await scim(m, "GET", '/Users?filter=userName eq "U1@example.com"', token=token)
    assert (status, found["totalResults"]) == (200, 1)
    assert found["Resources"][0]["id"] == ids[1]
    status, found = await scim(m, "GET", '/Users?filter=externalId eq "ext-2"', token=token)
    assert [r["id"] for r in found["Resources"]] == [ids[2]]
    status, page = await scim(m, "GET", "/Users?startIndex=2&count=1", token=token)
    assert (page["totalResults"], page["startIndex"], page["itemsPerPage"]) == (3, 2, 1)
    assert page["Resources"][0]["id"] == ids[1]
    status, body = await scim(m, "GET", "/Users?filter=userName eq", token=token)
    assert (status, body["scimType"]) == (400, "invalidFilter")
    status, body = await scim(m, "POST", "/Users", user_doc("u1@example.com"), token=token)
    assert (status, body["scimType"]) == (409, "uniqueness")
    status, body = await scim(m, "POST", "/.search", {"schemas": []}, token=token)
    assert (status, body["schemas"]) == (501, [ERROR])
    status, body = await scim(m, "GET", "/Users/nope", token=token)
    assert (status, body["schemas"]) == (404, [ERROR])
    # The Tether user exists, provisioned by SCIM.
    status, user = await m.call("GET", "/api/v1/users/u0@example.com")
    assert (status, user["source"], user["status"]) == (200, "scim", "active")


async def test_deactivation_stops_sessions_and_keys_at_once(m: Manager, store: Store) -> None:
    token = await new_token(m, issuer="https://idp.example.com")
    status, made = await scim(m, "POST", "/Users", user_doc("pat@example.com"), token=token)
    assert status == 201
    status, user = await m.call("GET", "/api/v1/users/pat@example.com")
    # The person's session (as their provider's login would give) and their own API key.
    from manager.access.directory import Directory, SessionBody
    from manager.access.principal import SessionTokens

    session = await SessionTokens(store).new()
    await Directory(store).sessions.insert(
        SessionBody(token_hash=hash_secret(session), user_id=user["id"], expires_at=1e12)
    )
    _, key = await create_api_key(store, "pats-key", owner_user_id=user["id"], now=1.0)
    assert (await m.call("GET", "/api/v1/auth/me", key=session))[0] == 200
    assert (await m.call("GET", "/api/v1/auth/me", key=key))[0] == 200
    off = {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "active", "value": False}]}
    status, patched = await scim(m, "PATCH", f"/Users/{made['id']}", off, token=token)
    assert (status, patched["active"]) == (200, False)
    assert (await m.call("GET", "/api/v1/auth/me", key=session))[0] == 401
    assert (await m.call("GET", "/api/v1/auth/me", key=key))[0] == 401
    status, trail = await m.call("GET", "/api/v1/audit")
    (event,) = [e for e in trail["events"] if e["action"] == "deactivate"]
    assert (event["actor_kind"], event["resource_type"]) == ("scim", "scim_user")
    # Back on: the key works again (the session ended for good).
    on = {"schemas": [PATCH], "Operations": [{"op": "replace", "value": {"active": True}}]}
    assert (await scim(m, "PATCH", f"/Users/{made['id']}", on, token=token))[0] == 200
    assert (await m.call("GET", "/api/v1/auth/me", key=key))[0] == 200
    assert (await m.call("GET", "/api/v1/auth/me", key=session))[0] == 401
    # The user is linked to the token's issuer by userName, not by email.
    from manager.access.external import sso_links

    (link,) = await sso_links(store).list()
    assert (link.body.issuer, link.body.subject, link.body.made_by) == (
        "https://idp.example.com",
        "pat@example.com",
        "scim",
    )
    # Deprovisioned: disabled here, the record and the link gone.
    assert (await scim(m, "DELETE", f"/Users/{made['id']}", token=token))[0] == 204
    assert (await m.call("GET", "/api/v1/auth/me", key=key))[0] == 401
    assert await sso_links(store).list() == []
    assert (await scim(m, "GET", f"/Users/{made['id']}", token=token))[0] == 404


async def test_group_members_are_added_and_removed(m: Manager) -> None:
    token = await new_token(m)
    a = (await scim(m, "POST", "/Users", user_doc("a@example.com"), token=token))[1]["id"]
    b = (await scim(m, "POST", "/Users", user_doc("b@example.com"), token=token))[1]["id"]
    doc = {"schemas": [GROUP], "displayName": "deployers", "members": [{"value": a}]}
    status, group = await scim(m, "POST", "/Groups", doc, token=token)
    assert status == 201, group
    status, found = await scim(m, "GET", '/Groups?filter=displayName eq "deployers"', token=token)
    assert found["totalResults"] == 1
    add = {
        "schemas": [PATCH],
        "Operations": [{"op": "add", "path": "members", "value": [{"value": b}]}],
    }
    status, group = await scim(m, "PATCH", f"/Groups/{group['id']}", add, token=token)
    assert status == 200, group
    assert sorted(mem["value"] for mem in group["members"]) == sorted([a, b])
    status, user = await m.call("GET", "/api/v1/users/b@example.com")
    assert user["groups"] == ["deployers"]
    remove = {
        "schemas": [PATCH],
        "Operations": [{"op": "remove", "path": f'members[value eq "{a}"]'}],
    }
    status, group = await scim(m, "PATCH", f"/Groups/{group['id']}", remove, token=token)
    assert [mem["value"] for mem in group["members"]] == [b]
    assert (await m.call("GET", "/api/v1/users/a@example.com"))[1]["groups"] == []
    status, read = await scim(m, "GET", f"/Users/{b}", token=token)
    assert [g["display"] for g in read["groups"]] == ["deployers"]
    # The group holds no permission until an administrator grants it.
    status, tether_group = await m.call("GET", "/api/v1/groups/deployers")
    assert tether_group["account_permissions"] == []
    assert (await scim(m, "DELETE", f"/Groups/{group['id']}", token=token))[0] == 204
    assert (await m.call("GET", "/api/v1/users/b@example.com"))[1]["groups"] == []


async def test_a_scim_token_sees_and_touches_only_what_it_made(m: Manager) -> None:
    token = await new_token(m)
    status, made = await m.call("POST", "/api/v1/users", {"email": "root@example.com"})
    assert status == 201
    status, listed = await scim(m, "GET", "/Users", token=token)
    assert listed["totalResults"] == 0
    assert (await scim(m, "GET", f"/Users/{made['id']}", token=token))[0] == 404
    # Not the local user's email, nor the administrators' group.
    status, body = await scim(m, "POST", "/Users", user_doc("root@example.com"), token=token)
    assert (status, body["scimType"]) == (409, "uniqueness")
    admins = {"schemas": [GROUP], "displayName": ADMIN_GROUP}
    assert (await scim(m, "POST", "/Groups", admins, token=token))[0] == 409
    # A member that SCIM did not make is refused.
    doc = {"schemas": [GROUP], "displayName": "g", "members": [{"value": made["id"]}]}
    status, body = await scim(m, "POST", "/Groups", doc, token=token)
    assert (status, body["schemas"]) == (400, [ERROR])


async def test_scim2_tester_finds_no_failure(m: Manager) -> None:
    from scim2_tester import Status, check_server

    token = await new_token(m)
    base = str(m.client.make_url("/scim/v2"))

    def run() -> list[Any]:
        client = RequestsScimClient(base, token)
        client.discover()
        return check_server(client)

    results = await asyncio.to_thread(run)
    bad = [f"{r.title}: {r.reason}" for r in results if r.status in (Status.ERROR, Status.CRITICAL)]
    assert not bad, "\n".join(bad)
    assert sum(r.status == Status.SUCCESS for r in results) > 20


async def test_tether_scim_token_create_list_revoke(m: Manager, tmp_path: Path) -> None:
    import io

    from manager.client.cli.main import run_cli

    env = {
        "TETHER_MANAGER_URL": str(m.client.make_url("")).rstrip("/"),
        "TETHER_CONFIG_DIR": str(tmp_path / "cli"),
        "TETHER_API_KEY": m.key,
    }

    async def tether(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(run_cli, list(argv), env=env, out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    code, out, err = await tether("scim", "token", "create", "okta")
    assert code == 0, err
    token = out.strip().splitlines()[-1]
    assert token.startswith("tsc_")
    assert (await scim(m, "GET", "/Users", token=token))[0] == 200
    code, out, err = await tether("scim", "token", "list")
    assert code == 0, err
    assert "okta" in out
    assert token not in out
    code, out, err = await tether("scim", "token", "revoke", "okta")
    assert code == 0, err
    assert (await scim(m, "GET", "/Users", token=token))[0] == 401
    code, out, err = await tether("scim", "token", "revoke", "okta")
    assert code != 0
    assert "no SCIM token" in err

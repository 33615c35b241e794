"""LDAP sign-in against a real OpenLDAP (slapd, started once for the module on loopback with
its own config and a test CA): search-then-bind over StartTLS and a direct bind over LDAPS,
groups mapped, wrong passwords counted towards the lockout, disabled accounts, LDAP
injection in the user name, the CA checked, and the same identity rules as SSO (no linking
by email alone, local 2FA kept)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from manager.access.directory import Directory, GroupBody
from manager.schemas.grants import ADMIN_GROUP
from manager.store.base import Store
from tests.manager.access_support import Clock, Manager, manager, sqlite_store
from tests.manager.ldap_server import BASE, PASSWORDS, SERVICE_DN, SERVICE_PASSWORD, Ldap, slapd

__all__ = ["sqlite_store"]

PW = "Correct-horse-42"


@pytest.fixture(scope="module")
def directory_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ldap]:
    with slapd(tmp_path_factory.mktemp("slapd")) as server:
        yield server


def search_settings(ldap: Ldap, **over: Any) -> dict[str, Any]:
    return {
        "url": ldap.ldap_url,
        "start_tls": True,
        "ca_file": str(ldap.ca_file),
        "bind_dn": SERVICE_DN,
        "bind_password_secret": "ldap-service",
        "user_base": f"ou=people,{BASE}",
        "group_base": f"ou=groups,{BASE}",
        "group_mapping": {"ops": "operators", "auditors": "auditors"},
        "disabled_group": "disabled",
        **over,
    }


@pytest.fixture
async def m(tmp_path: Path, store: Store, directory_server: Ldap) -> AsyncIterator[Manager]:
    d = Directory(store)
    await d.groups.insert(GroupBody(name="auditors", account_permissions=["view_audit"]))
    await d.groups.insert(GroupBody(name="operators", account_permissions=["manage_delegates"]))
    async with manager(tmp_path, store, Clock(time.time())) as replica:
        status, _ = await replica.call(
            "POST", "/api/v1/secrets", {"name": "ldap-service", "value": SERVICE_PASSWORD}
        )
        assert status == 201
        status, body = await replica.call(
            "PUT", "/api/v1/auth/ldap", search_settings(directory_server)
        )
        assert status == 200, body
        yield replica


async def ldap_login(m: Manager, username: str, password: str) -> tuple[int, Any]:
    resp = await m.client.post(
        "/api/v1/auth/ldap/login", json={"username": username, "password": password}
    )
    return resp.status, await resp.json()


async def test_a_login_makes_the_user_with_the_mapped_groups(m: Manager) -> None:
    status, done = await ldap_login(m, "Pat", PASSWORDS["pat"])
    assert status == 200, done
    assert done["user"]["email"] == "pat@example.org"
    assert done["restricted"] is None
    token = done["token"]
    # ops -> operators, auditors -> auditors: both permissions, nothing else.
    assert (await m.call("GET", "/api/v1/audit", key=token))[0] == 200
    assert (await m.call("GET", "/api/v1/tokens", key=token))[0] == 200
    assert (await m.call("GET", "/api/v1/users", key=token))[0] == 403
    status, user = await m.call("GET", "/api/v1/users/pat@example.org")
    assert sorted(user["groups"]) == ["auditors", "operators"]
    status, trail = await m.call("GET", "/api/v1/audit?resource_type=user")
    summaries = [e["summary"] for e in trail["events"]]
    assert any("made at their first SSO login" in s for s in summaries), summaries
    status, trail = await m.call("GET", "/api/v1/audit?resource_type=session")
    assert any("logged in through LDAP" in e["summary"] for e in trail["events"])
    # The settings answer names the service account's secret, never its value.
    status, shown = await m.call("GET", "/api/v1/auth/ldap")
    assert status == 200
    assert SERVICE_PASSWORD not in str(shown)


async def test_a_direct_bind_over_ldaps(m: Manager, directory_server: Ldap) -> None:
    direct = {
        "url": directory_server.ldaps_url,
        "ca_file": str(directory_server.ca_file),
        "dn_template": f"uid={{username}},ou=people,{BASE}",
        "group_base": f"ou=groups,{BASE}",
        "group_mapping": {"auditors": "auditors"},
    }
    status, body = await m.call("PUT", "/api/v1/auth/ldap", direct)
    assert status == 200, body
    status, done = await ldap_login(m, "sam", PASSWORDS["sam"])
    assert status == 200, done
    assert done["user"]["email"] == "sam@example.org"
    assert (await ldap_login(m, "sam", "wrong"))[0] == 401
    # A DN template escapes the name: an RDN injection binds as nobody.
    assert (await ldap_login(m, "sam,ou=people", PASSWORDS["sam"]))[0] == 401


async def test_wrong_passwords_count_towards_the_lockout(m: Manager) -> None:
    assert (await ldap_login(m, "pat", PASSWORDS["pat"]))[0] == 200  # linked now
    for _ in range(5):
        status, body = await ldap_login(m, "pat", "not-the-password")
        assert (status, body["error"]["code"]) == (401, "invalid_credentials")
    # Locked: even the right password is refused, with the same answer.
    status, body = await ldap_login(m, "pat", PASSWORDS["pat"])
    assert (status, body["error"]["code"]) == (401, "invalid_credentials")
    status, trail = await m.call("GET", "/api/v1/audit?resource_type=user&action=lock")
    assert any("locked pat@example.org" in e["summary"] for e in trail["events"])
    # An unknown user is the same answer.
    status, body = await ldap_login(m, "nobody", "whatever")
    assert (status, body["error"]["code"]) == (401, "invalid_credentials")


async def test_a_disabled_account_is_refused(m: Manager) -> None:
    status, body = await ldap_login(m, "dee", PASSWORDS["dee"])
    assert (status, body["error"]["code"]) == (403, "ldap_refused")
    assert "disabled" in body["error"]["message"]
    # The same through a filter the settings name.
    status, _ = await m.call(
        "PUT",
        "/api/v1/auth/ldap",
        {
            **search_settings_of(m),
            "disabled_group": None,
            "disabled_filter": "(mail=sam@example.org)",
        },
    )
    assert status == 200
    assert (await ldap_login(m, "sam", PASSWORDS["sam"]))[0] == 403
    assert (await ldap_login(m, "dee", PASSWORDS["dee"]))[0] == 200


def search_settings_of(m: Manager) -> dict[str, Any]:
    return _current[id(m)]


_current: dict[int, dict[str, Any]] = {}


@pytest.fixture(autouse=True)
def _remember(m: Manager, directory_server: Ldap) -> None:
    _current[id(m)] = search_settings(directory_server)


@pytest.mark.parametrize(
    "name", ["*", "p*", "pa*", "pat)(uid=*", "*)(|(uid=*", "pat)(|(objectClass=*"]
)
async def test_ldap_injection_in_the_user_name_matches_nobody(m: Manager, name: str) -> None:
    # With pat's own password: an unescaped filter would find pat (or several) and bind.
    status, body = await ldap_login(m, name, PASSWORDS["pat"])
    assert (status, body["error"]["code"]) == (401, "invalid_credentials"), body


async def test_a_nul_or_an_empty_password_is_refused_before_the_directory(m: Manager) -> None:
    status, body = await ldap_login(m, "pat\x00", PASSWORDS["pat"])
    assert (status, body["error"]["field"]) == (400, "username")
    # An empty password would be an anonymous bind that "succeeds".
    resp = await m.client.post("/api/v1/auth/ldap/login", json={"username": "pat", "password": ""})
    assert resp.status == 400


async def test_the_servers_certificate_is_checked(m: Manager, directory_server: Ldap) -> None:
    settings = {**search_settings(directory_server), "ca_file": None}
    assert (await m.call("PUT", "/api/v1/auth/ldap", settings))[0] == 200
    status, body = await ldap_login(m, "pat", PASSWORDS["pat"])
    assert status == 502, body
    assert "ca_file" in body["error"]["message"], body
    # Plain ldap:// without StartTLS is not a setting one can save.
    plain = {**search_settings(directory_server), "start_tls": False}
    status, body = await m.call("PUT", "/api/v1/auth/ldap", plain)
    assert status == 400
    assert "start_tls" in body["error"]["message"]


async def test_an_existing_local_user_is_not_linked_by_email(m: Manager) -> None:
    status, _made = await m.call(
        "POST", "/api/v1/users", {"email": "pat@example.org", "groups": [ADMIN_GROUP]}
    )
    assert status == 201
    status, body = await ldap_login(m, "pat", PASSWORDS["pat"])
    assert status == 400
    assert "not linked" in body["error"]["message"]


async def test_a_linked_user_with_local_2fa_gives_the_code(
    m: Manager, directory_server: Ldap
) -> None:
    status, made = await m.call("POST", "/api/v1/users", {"email": "pat@example.org"})
    resp = await m.client.post(
        "/api/v1/auth/invite/accept", json={"token": made["invite_token"], "password": PW}
    )
    token = (await resp.json())["token"]
    status, enrol = await m.call("POST", "/api/v1/auth/totp/enrol", {"password": PW}, key=token)
    totp = pyotp.TOTP(enrol["secret"])
    code = {"code": totp.at(int(time.time() // 30) * 30)}
    assert (await m.call("POST", "/api/v1/auth/totp/confirm", code, key=token))[0] == 200
    link = {"issuer": directory_server.ldap_url, "subject": "pat"}
    status, body = await m.call("PUT", "/api/v1/users/pat@example.org/sso-link", link)
    assert status == 201, body
    status, done = await ldap_login(m, "pat", PASSWORDS["pat"])
    assert status == 200
    assert done["restricted"] == "totp"
    assert (await m.call("GET", "/api/v1/auth/me", key=done["token"]))[0] == 200
    status, body = await m.call("GET", "/api/v1/audit", key=done["token"])
    assert (status, body["error"]["code"]) == (403, "totp_required")


async def test_tether_ldap_set_get_login_delete(
    m: Manager, directory_server: Ldap, tmp_path: Path
) -> None:
    import asyncio
    import io
    import json

    from manager.client.cli.main import run_cli

    base_env = {
        "TETHER_MANAGER_URL": str(m.client.make_url("")).rstrip("/"),
        "TETHER_CONFIG_DIR": str(tmp_path / "cli"),
    }

    async def tether(*argv: str, key: bool = True, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        env = {**base_env, "TETHER_API_KEY": m.key} if key else base_env
        code = await asyncio.to_thread(
            run_cli, list(argv), env=env, out=out, err=err, stdin=io.StringIO(stdin)
        )
        return code, out.getvalue(), err.getvalue()

    path = tmp_path / "ldap.json"
    path.write_text(json.dumps(search_settings(directory_server, group_mapping={})))
    code, out, err = await tether("ldap", "set", str(path))
    assert code == 0, err
    code, out, err = await tether("ldap", "get", "--output", "json")
    assert code == 0
    assert json.loads(out)["group_mapping"] == {}
    code, out, err = await tether(
        "ldap", "login", "pat", "--password-stdin", key=False, stdin=PASSWORDS["pat"] + "\n"
    )
    assert code == 0, err
    assert "Logged in as pat@example.org" in err
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    stored = config["contexts"][config["current"]]["session"]
    assert (await m.call("GET", "/api/v1/auth/me", key=stored["token"]))[0] == 200
    path.write_text(json.dumps({"url": "ldap://x.example"}))
    code, out, err = await tether("ldap", "set", str(path))
    assert code != 0
    assert "start_tls" in err
    code, out, err = await tether("ldap", "delete")
    assert code == 0, err
    assert (await m.call("GET", "/api/v1/auth/ldap"))[0] == 404
    _status, trail = await m.call("GET", "/api/v1/audit")
    ours = [e["action"] for e in trail["events"] if e["resource_type"] == "ldap_settings"]
    assert ours[:3] == ["delete", "update", "create"], ours

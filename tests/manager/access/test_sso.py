"""SSO through OpenID Connect against an in-test provider over TLS: the three steps of a login,
the group mapping, and the ways a login is refused (state, replayed code, audience, client
secret), with nothing secret in an answer, an error or the audit trail."""

from __future__ import annotations

import asyncio
import html
import io
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from joserfc.jwk import RSAKey

from manager.access.directory import Directory, GroupBody, UserBody
from manager.access.sso import sso_links
from manager.client.cli.main import run_cli
from manager.schemas.auth import verifier_hash
from manager.schemas.grants import ADMIN_GROUP
from manager.server.app import open_store
from manager.store.base import Store
from shared.tls import client_context
from tests.manager.access_support import Clock, Manager, manager
from tests.manager.oidc_provider import Person, Provider, oidc_provider
from tests.manager.trail import make_trail_unwritable

CLIENT_SECRET = "client-s3cret-value"
PW = "Correct-horse-42"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(tmp_path / "db", None)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def idp(tmp_path: Path) -> AsyncIterator[Provider]:
    async with oidc_provider(tmp_path, client_secret=CLIENT_SECRET) as provider:
        yield provider


@pytest.fixture
async def m(tmp_path: Path, store: Store, idp: Provider) -> AsyncIterator[Manager]:
    d = Directory(store)
    await d.groups.insert(GroupBody(name="auditors", account_permissions=["view_audit"]))
    await d.groups.insert(
        GroupBody(name="admins-of-apps", account_permissions=["manage_applications"])
    )
    # The manager's clock is the real one here: the provider stamps real times on its tokens.
    async with manager(tmp_path, store, Clock(time.time())) as replica:
        status, _ = await replica.call(
            "POST", "/api/v1/secrets", {"name": "oidc-client", "value": CLIENT_SECRET}
        )
        assert status == 201
        status, body = await replica.call("PUT", "/api/v1/auth/sso", settings(replica, idp))
        assert status == 200, body
        yield replica


def settings(m: Manager, idp: Provider, **over: Any) -> dict[str, Any]:
    return {
        "issuer": idp.issuer,
        "client_id": idp.client_id,
        "client_secret": "oidc-client",
        "redirect_url": str(m.client.make_url("/api/v1/auth/sso/callback")),
        "group_mapping": {"sec-auditors": "auditors", "platform": "admins-of-apps"},
        "ca_file": str(idp.ca_file),
        **over,
    }


async def browser(
    m: Manager, idp: Provider, authorize_url: str, *, decision: str | None = "approve"
) -> tuple[int, str]:
    """What a browser does: the provider redirects to the manager's callback, and the person
    answers the page's approval form (``decision``; None leaves the page unanswered)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(authorize_url, ssl=client_context(idp.ca_file), allow_redirects=False) as resp,
    ):
        assert resp.status == 302, await resp.text()
        location = resp.headers["Location"]
    path = location.split(str(m.client.make_url("")).rstrip("/"), 1)[1]
    resp2 = await m.client.get(path)
    page = await resp2.text()
    form = approval_form(page)
    if form is None or decision is None:
        return resp2.status, page
    resp3 = await m.client.post(form.pop("action"), data={**form, "decision": decision})
    return resp3.status, page + await resp3.text()


def approval_form(page: str) -> dict[str, str] | None:
    """The approval form's action and hidden fields, as a browser would submit them."""
    action = re.search(r'<form method="post" action="([^"]+)">', page)
    if action is None:
        return None
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page))
    return {
        "action": html.unescape(action.group(1)),
        **{k: html.unescape(v) for k, v in fields.items()},
    }


VERIFIER = "a-verifier-the-cli-made-and-keeps-to-itself-0123456789"


async def start(m: Manager, verifier: str = VERIFIER, name: str = "tether CLI, pat@laptop") -> Any:
    body = {"verifier_hash": verifier_hash(verifier), "client_name": name}
    status, started = await anon(m, "POST", "/api/v1/auth/sso/start", body)
    assert status == 200, started
    return started


async def login(m: Manager, idp: Provider) -> tuple[dict[str, Any], str]:
    started = await start(m)
    assert started["authorize_url"].startswith(f"{idp.issuer}/authorize?")
    poll = {"state": started["state"], "verifier": VERIFIER}
    status, pending = await anon(m, "POST", "/api/v1/auth/sso/poll", poll)
    assert (status, pending["status"]) == (202, "pending")
    status, page = await browser(m, idp, started["authorize_url"])
    assert status == 200, page
    status, done = await anon(m, "POST", "/api/v1/auth/sso/poll", poll)
    assert status == 200, done
    return done, page


async def anon(m: Manager, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    resp = await m.client.request(method, path, json=body)
    return resp.status, await resp.json()


async def test_a_login_makes_the_user_with_the_mapped_groups(
    m: Manager, idp: Provider, store: Store
) -> None:
    idp.person = Person("Pat@Example.com", "Pat", groups=["sec-auditors", "unmapped"])
    done, page = await login(m, idp)
    assert "Signed in as pat@example.com" in page
    assert done["user"]["email"] == "pat@example.com"
    token = done["token"]
    assert token.startswith("tss_")
    # The session acts with the mapped group: it may read the audit trail, not make tokens.
    assert (await m.call("GET", "/api/v1/audit", key=token))[0] == 200
    status, body = await m.call("POST", "/api/v1/tokens", {"name": "x"}, key=token)
    assert (status, body["error"]["message"]) == (403, "this needs the manage_delegates permission")
    user = await Directory(store).users.by_key("pat@example.com")
    assert user is not None
    assert (user.body.source, user.body.status) == ("sso", "active")
    # At the next login the groups follow the claim again.
    idp.person = Person("pat@example.com", groups=["platform"])
    done, _ = await login(m, idp)
    token2 = done["token"]
    assert (await m.call("GET", "/api/v1/audit", key=token2))[0] == 403
    # The login is in the audit trail, acted by the user; no token or secret anywhere in it.
    status, trail = await m.call("GET", "/api/v1/audit?type=session")
    assert status == 200
    events = [e for e in trail["events"] if e["action"] == "login"]
    assert [e["actor_name"] for e in events] == ["pat@example.com", "pat@example.com"]
    whole = str(trail)
    for secret in (token, token2, CLIENT_SECRET):
        assert secret not in whole


async def test_a_code_works_once_and_a_state_once(m: Manager, idp: Provider) -> None:
    started = await start(m)
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            started["authorize_url"], ssl=client_context(idp.ca_file), allow_redirects=False
        ) as resp,
    ):
        location = resp.headers["Location"]
    path = location.split(str(m.client.make_url("")).rstrip("/"), 1)[1]
    assert (await m.client.get(path)).status == 200
    again = await m.client.get(path)
    assert again.status == 400
    assert "already completed" in await again.text()
    unknown = await m.client.get("/api/v1/auth/sso/callback?state=forged&code=x")
    assert unknown.status == 400
    assert "unknown or has expired" in await unknown.text()
    # A wrong verifier learns nothing.
    status, body = await anon(
        m, "POST", "/api/v1/auth/sso/poll", {"state": started["state"], "verifier": "g" * 43}
    )
    assert (status, body["error"]["message"]) == (400, "no such login")


@pytest.mark.parametrize(
    ("spoil", "reason", "page_status"),
    [
        ("audience", "the ID token was refused: invalid_claim", 400),
        ("key", "the ID token was refused", 400),
        # The provider refused the manager's own credentials: the provider's side, a 502.
        ("secret", "the identity provider answered 401", 502),
    ],
)
async def test_a_token_that_does_not_verify_fails_the_login(
    m: Manager, idp: Provider, store: Store, spoil: str, reason: str, page_status: int
) -> None:
    if spoil == "audience":
        idp.audience = "another-client"
    elif spoil == "key":  # signed by a key the provider's JWKS does not hold
        idp.signing_key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    else:
        idp.client_secret = "rotated-at-the-provider"
    started = await start(m)
    status, page = await browser(m, idp, started["authorize_url"])
    assert status == page_status
    assert reason in page
    assert CLIENT_SECRET not in page
    poll = {"state": started["state"], "verifier": VERIFIER}
    status, body = await anon(m, "POST", "/api/v1/auth/sso/poll", poll)
    assert status == 400
    assert reason in body["error"]["message"]
    assert await Directory(store).users.by_key("pat@example.com") is None


async def test_settings_need_a_builtin_client_secret(m: Manager, idp: Provider) -> None:
    status, body = await m.call("PUT", "/api/v1/auth/sso", settings(m, idp, client_secret="nope"))
    assert status == 400
    assert body["error"]["message"].startswith("client_secret: no builtin secret 'nope'")
    status, shown = await m.call("GET", "/api/v1/auth/sso")
    assert (status, shown["client_secret"]) == (200, "oidc-client")
    status, body = await m.call("PUT", "/api/v1/auth/sso", settings(m, idp, issuer="http://x"))
    assert status == 400


async def test_without_settings_a_login_cannot_start(tmp_path: Path) -> None:
    (tmp_path / "m2").mkdir()
    s = open_store(tmp_path / "db2", None)
    await s.open()
    try:
        async with manager(tmp_path / "m2", s, Clock()) as bare:
            body = {"verifier_hash": verifier_hash(VERIFIER)}
            status, body = await anon(bare, "POST", "/api/v1/auth/sso/start", body)
            assert (status, body["error"]["message"]) == (400, "single sign-on is not configured")
    finally:
        await s.close()


class _UrlWatch(io.StringIO):
    """The CLI's stderr: hands the sign-in URL to the test the moment it is written."""

    def __init__(self, loop: asyncio.AbstractEventLoop, found: asyncio.Future[str]) -> None:
        super().__init__()
        self._loop, self._found = loop, found

    def write(self, text: str) -> int:
        url = re.search(r"https://\S+/authorize\?\S+", text)
        if url is not None:
            self._loop.call_soon_threadsafe(self._found.set_result, url.group(0))
        return super().write(text)


async def test_tether_login_sso_waits_for_the_browser_and_stores_the_session(
    m: Manager, idp: Provider, tmp_path: Path
) -> None:
    idp.person = Person("pat@example.com", "Pat", groups=["sec-auditors"])
    loop = asyncio.get_running_loop()
    found: asyncio.Future[str] = loop.create_future()
    out, err = io.StringIO(), _UrlWatch(loop, found)
    env = {
        "TETHER_MANAGER_URL": str(m.client.make_url("")).rstrip("/"),
        "TETHER_CONFIG_DIR": str(tmp_path / "cli"),
    }
    cli = asyncio.create_task(
        asyncio.to_thread(run_cli, ["login", "--sso"], env=env, out=out, err=err, sso_poll_s=0.01)
    )
    status, page = await browser(m, idp, await asyncio.wait_for(found, 30))
    assert status == 200, page
    assert await cli == 0, err.getvalue()
    assert "Logged in as pat@example.com" in err.getvalue()
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    stored = config["contexts"][config["current"]]["session"]
    status, me = await m.call("GET", "/api/v1/auth/me", key=stored["token"])
    assert (status, me["email"], me["groups"]) == (200, "pat@example.com", ["auditors"])


async def test_a_new_sso_user_needs_an_allowed_domain_and_gets_the_session_ttl(
    m: Manager, idp: Provider, store: Store
) -> None:
    settings = {"allowed_email_domains": ["example.com"], "session_ttl_minutes": 30}
    assert (await m.call("PUT", "/api/v1/auth/settings", settings))[0] == 200
    idp.person = Person("eve@elsewhere.org", "Eve", groups=["sec-auditors"])
    started = await start(m)
    status, page = await browser(m, idp, started["authorize_url"])
    assert status == 400
    assert "eve@elsewhere.org: this email domain may not join this account" in page
    assert await Directory(store).users.by_key("eve@elsewhere.org") is None
    idp.person = Person("pat@example.com", "Pat", groups=["sec-auditors"])
    done, _ = await login(m, idp)
    assert done["expires_at"] == pytest.approx(time.time() + 30 * 60, abs=60)


# -- linking, verified email, 2FA, the client binding, configuration errors ---------------------


async def local_admin(m: Manager, email: str = "root@example.com") -> str:
    """A local user with a password, in the administrators' group; answers their id."""
    status, made = await m.call("POST", "/api/v1/users", {"email": email, "groups": [ADMIN_GROUP]})
    assert status == 201, made
    status, _ = await anon(
        m, "POST", "/api/v1/auth/invite/accept", {"token": made["invite_token"], "password": PW}
    )
    assert status == 200
    user_id: str = made["id"]
    return user_id


async def refused_at_callback(m: Manager, idp: Provider) -> tuple[str, dict[str, Any]]:
    started = await start(m)
    status, page = await browser(m, idp, started["authorize_url"])
    assert status == 400, page
    poll = {"state": started["state"], "verifier": VERIFIER}
    status, body = await anon(m, "POST", "/api/v1/auth/sso/poll", poll)
    assert status == 400
    return page, body


@pytest.mark.parametrize("verified", [False, None])
async def test_an_email_the_provider_has_not_verified_signs_no_one_in(
    m: Manager, idp: Provider, store: Store, verified: bool | None
) -> None:
    await local_admin(m)
    idp.person = Person("root@example.com", email_verified=verified)
    page, body = await refused_at_callback(m, idp)
    assert "has not verified root@example.com" in page
    assert "token" not in body
    idp.person = Person("new@example.com", email_verified=verified)
    await refused_at_callback(m, idp)
    assert await Directory(store).users.by_key("new@example.com") is None


async def test_a_local_account_is_reached_only_through_a_link_made_on_purpose(
    m: Manager, idp: Provider
) -> None:
    await local_admin(m)
    # The provider vouches for the admin's address (verified, even): still not the admin.
    idp.person = Person("root@example.com", subject="idp-user-1")
    page, _ = await refused_at_callback(m, idp)
    assert "not linked to this sign-in" in page
    # An administrator links the admin's identity at the provider (API; the CLI calls it).
    link = {"subject": "idp-user-1"}
    status, made = await m.call("PUT", "/api/v1/users/root@example.com/sso-link", link)
    assert (status, made["issuer"], made["made_by"]) == (201, idp.issuer, "admin")
    status, again = await m.call("PUT", "/api/v1/users/root@example.com/sso-link", link)
    assert (status, again["error"]["code"]) == (409, "conflict")
    done, page = await login(m, idp)
    assert done["user"]["email"] == "root@example.com"
    assert done["restricted"] is None
    assert "for tether CLI, pat@laptop, code" in page
    # Another subject with the same address is someone else.
    idp.person = Person("root@example.com", subject="idp-user-2")
    await refused_at_callback(m, idp)
    status, gone = await m.call("DELETE", "/api/v1/users/root@example.com/sso-link")
    assert (status, len(gone["removed"])) == (200, 1)
    idp.person = Person("root@example.com", subject="idp-user-1")
    await refused_at_callback(m, idp)


async def test_a_linked_user_with_2fa_gives_the_code_unless_the_provider_asserts_mfa(
    m: Manager, idp: Provider
) -> None:
    await local_admin(m)
    status, session = await anon(
        m, "POST", "/api/v1/auth/login", {"email": "root@example.com", "password": PW}
    )
    token = session["token"]
    status, enrol = await m.call("POST", "/api/v1/auth/totp/enrol", {"password": PW}, key=token)
    assert status == 200, enrol
    totp = pyotp.TOTP(enrol["secret"])
    step = int(time.time() // 30)
    code = {"code": totp.at(step * 30)}
    assert (await m.call("POST", "/api/v1/auth/totp/confirm", code, key=token))[0] == 200
    await m.call("PUT", "/api/v1/users/root@example.com/sso-link", {"subject": "idp-root"})

    idp.person = Person("root@example.com", subject="idp-root", extra={"amr": ["pwd"]})
    done, _ = await login(m, idp)
    assert done["restricted"] == "totp"
    restricted = done["token"]
    status, body = await m.call("GET", "/api/v1/audit", key=restricted)
    assert (status, body["error"]["code"]) == (403, "totp_required")
    wrong = {"totp_code": "000000" if totp.at((step + 1) * 30) != "000000" else "111111"}
    status, body = await m.call("POST", "/api/v1/auth/totp/verify", wrong, key=restricted)
    assert (status, body["error"]["code"]) == (401, "invalid_totp")
    good = {"totp_code": totp.at((step + 1) * 30)}
    status, full = await m.call("POST", "/api/v1/auth/totp/verify", good, key=restricted)
    assert (status, full["restricted"]) == (200, None), full
    assert (await m.call("GET", "/api/v1/audit", key=full["token"]))[0] == 200
    assert (await m.call("GET", "/api/v1/auth/me", key=restricted))[0] == 401  # swapped

    # The provider asserts MFA: the code is not asked again.
    idp.person = Person("root@example.com", subject="idp-root", extra={"amr": ["pwd", "hwk"]})
    done, _ = await login(m, idp)
    assert done["restricted"] is None


async def test_an_sso_made_user_from_before_links_is_linked_at_its_next_login(
    m: Manager, idp: Provider, store: Store
) -> None:
    await Directory(store).users.insert(
        UserBody(email="old@example.com", status="active", source="sso")
    )
    idp.person = Person("old@example.com", subject="old-sub")
    done, _ = await login(m, idp)
    assert done["user"]["email"] == "old@example.com"
    (link,) = await sso_links(store).list()
    assert (link.body.subject, link.body.made_by) == ("old-sub", "migration")
    idp.person = Person("old@example.com", subject="someone-else")
    await refused_at_callback(m, idp)


async def test_the_session_goes_only_to_the_client_that_started_the_login(
    m: Manager, idp: Provider
) -> None:
    # The attacker starts a login and sends the link to a victim...
    started = await start(m, verifier="the-attackers-verifier-" + "a" * 30, name="evil-host")
    status, page = await browser(m, idp, started["authorize_url"])
    # ...the victim's browser page names the client it is approving, and its code...
    assert status == 200
    assert f"for evil-host, code {started['code']}" in page
    # ...and only the starting client's verifier collects: not a hash, not a guess.
    for wrong in (verifier_hash(VERIFIER), VERIFIER):
        poll = {"state": started["state"], "verifier": wrong}
        status, body = await anon(m, "POST", "/api/v1/auth/sso/poll", poll)
        assert (status, body["error"]["message"]) == (400, "no such login")


async def test_sso_configuration_errors_name_the_setting(
    m: Manager, idp: Provider, tmp_path: Path
) -> None:
    unreadable = tmp_path / "ca.pem"
    unreadable.write_text("not a certificate")
    for ca_file in (str(tmp_path / "missing.pem"), str(unreadable)):
        status, _ = await m.call("PUT", "/api/v1/auth/sso", settings(m, idp, ca_file=ca_file))
        assert status == 200
        status, body = await anon(
            m, "POST", "/api/v1/auth/sso/start", {"verifier_hash": verifier_hash(VERIFIER)}
        )
        assert status == 400, body
        assert body["error"]["message"].startswith("ca_file: "), body
    await m.call("PUT", "/api/v1/auth/sso", settings(m, idp, issuer="https://127.0.0.1:9"))
    status, body = await anon(
        m, "POST", "/api/v1/auth/sso/start", {"verifier_hash": verifier_hash(VERIFIER)}
    )
    assert status == 502, body
    assert "could not be reached" in body["error"]["message"]
    assert "(setting issuer)" in body["error"]["message"]


async def test_tether_user_sso_link_and_unlink(m: Manager, idp: Provider, tmp_path: Path) -> None:
    await local_admin(m)
    env = {
        "TETHER_MANAGER_URL": str(m.client.make_url("")).rstrip("/"),
        "TETHER_CONFIG_DIR": str(tmp_path / "cli"),
        "TETHER_API_KEY": m.key,
    }

    async def tether(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(run_cli, list(argv), env=env, out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    code, out, err = await tether("user", "sso-link", "root@example.com", "idp-root")
    assert code == 0, err
    assert f"user root@example.com signs in through idp-root at {idp.issuer}" in out
    idp.person = Person("root@example.com", subject="idp-root")
    done, _ = await login(m, idp)
    assert done["user"]["email"] == "root@example.com"
    code, out, err = await tether("user", "sso-unlink", "root@example.com")
    assert code == 0, err
    assert "no longer linked to idp-root" in out
    code, _, err = await tether("user", "sso-unlink", "root@example.com")
    assert code != 0
    assert "has no SSO link" in err


async def test_a_user_links_their_own_identity_after_a_password_login(
    m: Manager, idp: Provider, store: Store
) -> None:
    await local_admin(m)
    _, session = await anon(
        m, "POST", "/api/v1/auth/login", {"email": "root@example.com", "password": PW}
    )
    token = session["token"]
    body = {"verifier_hash": verifier_hash(VERIFIER), "client_name": "laptop", "password": "no"}
    status, refused = await m.call("POST", "/api/v1/auth/sso/link", body, key=token)
    assert (status, refused["error"]["field"]) == (400, "current")  # the password again
    # An API key is no user's session.
    assert (await m.call("POST", "/api/v1/auth/sso/link", body))[0] == 400
    started = (await m.call("POST", "/api/v1/auth/sso/link", {**body, "password": PW}, key=token))[
        1
    ]
    # At the provider the person has another address, even: the link is what counts.
    idp.person = Person("root.other@example.org", subject="root-at-idp")
    status, page = await browser(m, idp, started["authorize_url"])
    assert status == 200, page
    assert f"signs in as root@example.com (asked by laptop, code {started['code']})" in page
    poll = {"state": started["state"], "verifier": VERIFIER}
    status, done = await anon(m, "POST", "/api/v1/auth/sso/poll", poll)
    assert (status, done["status"], done["token"]) == (200, "linked", None)  # no session
    (link,) = await sso_links(store).list()
    assert (link.body.subject, link.body.made_by) == ("root-at-idp", "user")
    status, trail = await m.call("GET", "/api/v1/audit", action="sso_link")
    events = [e for e in trail["events"] if e["action"] == "sso_link"]
    assert [(e["actor_name"], e["resource_name"]) for e in events] == [
        ("root@example.com", "root@example.com")
    ]
    done, _ = await login(m, idp)
    assert done["user"]["email"] == "root@example.com"


async def test_a_users_own_link_is_not_made_when_its_event_cannot_be_written(
    m: Manager, idp: Provider, store: Store, tmp_path: Path
) -> None:
    await local_admin(m)
    _, session = await anon(
        m, "POST", "/api/v1/auth/login", {"email": "root@example.com", "password": PW}
    )
    body = {"verifier_hash": verifier_hash(VERIFIER), "client_name": "laptop", "password": PW}
    _, started = await m.call("POST", "/api/v1/auth/sso/link", body, key=session["token"])
    make_trail_unwritable(tmp_path / "db" / "tether.db")
    idp.person = Person("root@example.com", subject="root-at-idp")
    status, _ = await browser(m, idp, started["authorize_url"])
    # The link and its event go together: neither is written, and the browser is told.
    assert status == 503
    assert await sso_links(store).list() == []


async def test_tether_link_sso_links_the_signed_in_user(
    m: Manager, idp: Provider, store: Store, tmp_path: Path
) -> None:
    await local_admin(m)
    env = {
        "TETHER_MANAGER_URL": str(m.client.make_url("")).rstrip("/"),
        "TETHER_CONFIG_DIR": str(tmp_path / "cli"),
    }
    out, err = io.StringIO(), io.StringIO()
    argv = ["login", "--email", "root@example.com", "--password-stdin"]
    code = await asyncio.to_thread(
        run_cli, argv, env=env, out=out, err=err, stdin=io.StringIO(PW + "\n")
    )
    assert code == 0, err.getvalue()
    loop = asyncio.get_running_loop()
    found: asyncio.Future[str] = loop.create_future()
    err2 = _UrlWatch(loop, found)
    cli = asyncio.create_task(
        asyncio.to_thread(
            run_cli,
            ["link-sso", "--password-stdin"],
            env=env,
            out=io.StringIO(),
            err=err2,
            stdin=io.StringIO(PW + "\n"),
            sso_poll_s=0.01,
        )
    )
    idp.person = Person("root@example.com", subject="root-via-cli")
    status, page = await browser(m, idp, await asyncio.wait_for(found, 30))
    assert status == 200, page
    assert await cli == 0, err2.getvalue()
    assert "Linked: `tether login --sso` signs you in from now on." in err2.getvalue()
    shown = re.search(r"The page will show this code: (\S+)", err2.getvalue())
    assert shown is not None
    assert f"code {shown.group(1)}" in page
    (link,) = await sso_links(store).list()
    assert link.body.subject == "root-via-cli"


async def test_a_sign_in_waits_for_the_browser_to_approve_the_client_it_names(
    m: Manager, idp: Provider
) -> None:
    # Someone starts a login and sends its link: the person who opens it signs in at the
    # provider, and the page names the other client and its code, and asks.
    idp.person = Person("victim@example.com", "Victim")
    started = await start(m, name="tether CLI, mallory@elsewhere")
    poll = {"state": started["state"], "verifier": VERIFIER}
    status, page = await browser(m, idp, started["authorize_url"], decision=None)
    assert status == 200
    assert "mallory@elsewhere" in page
    assert started["code"] in page
    resp = await m.client.get("/api/v1/auth/sso/callback?state=x")
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    # Unanswered, the starting client gets nothing.
    status, pending = await anon(m, "POST", "/api/v1/auth/sso/poll", poll)
    assert (status, pending["status"]) == (202, "pending")


async def test_a_refused_sign_in_gives_its_client_no_session(m: Manager, idp: Provider) -> None:
    idp.person = Person("victim@example.com", "Victim")
    started = await start(m, name="tether CLI, mallory@elsewhere")
    status, page = await browser(m, idp, started["authorize_url"], decision="deny")
    assert status == 200
    assert "refused" in page
    poll = {"state": started["state"], "verifier": VERIFIER}
    status, body = await anon(m, "POST", "/api/v1/auth/sso/poll", poll)
    assert status == 400
    assert "refused in the browser" in body["error"]["message"]


async def test_an_approval_needs_the_secret_of_the_page_that_finished_the_sign_in(
    m: Manager, idp: Provider
) -> None:
    idp.person = Person("victim@example.com", "Victim")
    started = await start(m)
    _, page = await browser(m, idp, started["authorize_url"], decision=None)
    form = approval_form(page)
    assert form is not None
    forged = {"state": started["state"], "approval": "guessed", "decision": "approve"}
    resp = await m.client.post(form["action"], data=forged)
    assert resp.status == 400
    # Nor is a JSON body taken for the form.
    resp = await m.client.post(form["action"], json=forged)
    assert resp.status == 400
    poll = {"state": started["state"], "verifier": VERIFIER}
    status, pending = await anon(m, "POST", "/api/v1/auth/sso/poll", poll)
    assert (status, pending["status"]) == (202, "pending")
    # The real page's answer, once, goes through.
    resp = await m.client.post(form.pop("action"), data={**form, "decision": "approve"})
    assert resp.status == 200
    status, done = await anon(m, "POST", "/api/v1/auth/sso/poll", poll)
    assert (status, done["status"]) == (200, "done")


async def test_a_first_login_makes_the_user_and_link_with_their_event_and_groups_sync_with_one(
    m: Manager, idp: Provider, store: Store
) -> None:
    idp.person = Person("pat@example.com", "Pat", subject="pat-at-idp", groups=["sec-auditors"])
    await login(m, idp)
    user = await Directory(store).users.by_key("pat@example.com")
    assert user is not None
    (link,) = await sso_links(store).list()
    assert link.body.user_id == user.id
    status, trail = await m.call("GET", "/api/v1/audit?type=user")
    assert status == 200
    made = [e for e in trail["events"] if e["resource_id"] == user.id]
    # One event of the user, their groups and their link, acted by them; no sync event, as
    # the groups were made with the user.
    assert [(e["action"], e["actor_name"]) for e in made] == [("create", "pat@example.com")]
    assert "pat-at-idp" in made[0]["summary"]
    # A login with the same groups changes only the login time: no event.
    await login(m, idp)
    idp.person = Person("pat@example.com", subject="pat-at-idp", groups=["platform"])
    await login(m, idp)
    status, trail = await m.call("GET", "/api/v1/audit?type=user")
    made = [e for e in trail["events"] if e["resource_id"] == user.id]
    assert sorted(e["action"] for e in made) == ["create", "update"]


async def test_a_first_login_makes_no_user_when_its_event_cannot_be_written(
    m: Manager, idp: Provider, store: Store, tmp_path: Path
) -> None:
    started = await start(m)
    make_trail_unwritable(tmp_path / "db" / "tether.db")
    idp.person = Person("pat@example.com", "Pat", subject="pat-at-idp", groups=["sec-auditors"])
    status, _ = await browser(m, idp, started["authorize_url"])
    # The user, the link and the event go together: none is written, and the browser is told.
    assert status == 503
    assert await Directory(store).users.by_key("pat@example.com") is None
    assert await sso_links(store).list() == []


async def test_an_sso_users_groups_keep_when_their_sync_event_cannot_be_written(
    m: Manager, idp: Provider, store: Store, tmp_path: Path
) -> None:
    idp.person = Person("pat@example.com", subject="pat-at-idp", groups=["sec-auditors"])
    await login(m, idp)
    before = await Directory(store).users.by_key("pat@example.com")
    assert before is not None
    make_trail_unwritable(tmp_path / "db" / "tether.db")
    idp.person = Person("pat@example.com", subject="pat-at-idp", groups=["platform"])
    started = await start(m)
    status, _ = await browser(m, idp, started["authorize_url"])
    assert status == 503
    after = await Directory(store).users.by_key("pat@example.com")
    assert after is not None
    assert after.body.groups == before.body.groups

"""Password logins through the API, under a clock the tests move: invites, the password
policy, lockout, expiry, TOTP 2FA (enrolment, enforcement, replay, recovery codes), logout,
and what the audit trail keeps of it all (never a password, a TOTP secret or a code)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pyotp

from manager.access.login import LOGINS, Logins
from manager.access.principal import SessionTokens
from manager.access.sso import SsoLogin, sso_logins
from manager.core.audit_chain import AuditQuery
from manager.server.app import open_store
from manager.store.base import Store
from shared.ids import hash_secret
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.rbac_support import member

PASSWORD = "Correct-horse-42"


async def ok(
    m: Manager, method: str, path: str, body: Any = None, status: int = 200, key: str | None = None
) -> Any:
    got, answer = await m.call(method, path, body, key=key)
    assert got == status, answer
    return answer


async def refused(
    m: Manager, method: str, path: str, body: Any, status: int, code: str, key: str | None = None
) -> str:
    got, answer = await m.call(method, path, body, key=key)
    assert (got, answer["error"]["code"]) == (status, code), answer
    message: str = answer["error"]["message"]
    return message


async def invite(
    m: Manager, email: str = "ana@example.com", groups: list[str] | None = None
) -> str:
    created = await ok(m, "POST", "/api/v1/users", {"email": email, "groups": groups or []}, 201)
    token: str = created["invite_token"]
    return token


async def joined(m: Manager, email: str = "ana@example.com", **settings: Any) -> str:
    """A user who accepted their invite; answers their session token."""
    if settings:
        await ok(m, "PUT", "/api/v1/auth/settings", settings)
    token = await invite(m, email)
    answer = await ok(
        m, "POST", "/api/v1/auth/invite/accept", {"token": token, "password": PASSWORD}
    )
    session: str = answer["token"]
    return session


async def login(m: Manager, status: int = 200, **fields: Any) -> Any:
    body = {"email": "ana@example.com", "password": PASSWORD, **fields}
    got, answer = await m.call("POST", "/api/v1/auth/login", body)
    assert got == status, answer
    return answer


async def test_an_invite_sets_the_password_once_and_the_user_can_log_in(m: Manager) -> None:
    token = await invite(m, "Ana@Example.com")
    accepted = await ok(
        m, "POST", "/api/v1/auth/invite/accept", {"token": token, "password": PASSWORD}
    )
    assert accepted["user"]["email"] == "ana@example.com"
    me = await ok(m, "GET", "/api/v1/auth/me", key=accepted["token"])
    assert (me["kind"], me["email"], me["restricted"]) == ("user", "ana@example.com", None)
    # The email is matched without regard to case.
    session = await login(m, email="ANA@example.com")
    assert session["token"].startswith("tss_")
    assert session["restricted"] is None
    again = {"token": token, "password": "Another-pass-99"}
    await refused(m, "POST", "/api/v1/auth/invite/accept", again, 400, "invalid_invite")
    await login(m)  # the first password still stands


async def test_an_invite_expires_and_a_new_one_replaces_the_old(m: Manager) -> None:
    first = await invite(m)
    m.clock.advance(8 * 86400)
    body = {"token": first, "password": PASSWORD}
    await refused(m, "POST", "/api/v1/auth/invite/accept", body, 400, "invalid_invite")
    second = (await ok(m, "POST", "/api/v1/users/ana@example.com/invite"))["invite_token"]
    await refused(m, "POST", "/api/v1/auth/invite/accept", body, 400, "invalid_invite")
    await ok(m, "POST", "/api/v1/auth/invite/accept", {"token": second, "password": PASSWORD})


async def test_the_password_policy_says_what_is_missing_and_changes_nothing(m: Manager) -> None:
    await ok(
        m,
        "PUT",
        "/api/v1/auth/settings",
        {"password_min_length": 16, "password_classes": ["digit", "symbol"]},
    )
    token = await invite(m)
    body = {"token": token, "password": "short1"}
    message = await refused(m, "POST", "/api/v1/auth/invite/accept", body, 400, "weak_password")
    assert message == "the password needs at least 16 characters, a symbol"
    user = await ok(m, "GET", "/api/v1/users/ana@example.com")
    assert user["status"] == "invited"
    # The refused attempt did not use up the invite.
    strong = {"token": token, "password": "sixteen-chars-42!"}
    await ok(m, "POST", "/api/v1/auth/invite/accept", strong)
    assert "password" not in str(await ok(m, "GET", "/api/v1/auth/settings")).replace(
        "password_", ""
    )


async def test_settings_are_validated(m: Manager) -> None:
    for bad in (
        {"password_min_length": 4},
        {"lockout_attempts": -1},
        {"allowed_email_domains": ["not a domain"]},
        {"password_classes": ["emoji"]},
        {"surprise": True},
    ):
        await refused(m, "PUT", "/api/v1/auth/settings", bad, 400, "invalid")
    assert (await ok(m, "GET", "/api/v1/auth/settings"))["password_min_length"] == 12


async def test_wrong_email_and_wrong_password_get_the_same_answer(m: Manager) -> None:
    await joined(m)
    wrong_password = await login(m, 401, password="Wrong-horse-42")
    unknown = await login(m, 401, email="nobody@example.com")
    invited_only = await invite(m, "bo@example.com")
    assert invited_only
    no_password = await login(m, 401, email="bo@example.com")
    assert wrong_password == unknown == no_password
    assert wrong_password["error"]["message"] == "wrong email or password"


async def test_failed_logins_lock_the_user_for_a_while(m: Manager, store: Store) -> None:
    await joined(m, lockout_attempts=3, lockout_minutes=10)
    await login(m, 401, password="Wrong-1")
    await login(m, 401, password="Wrong-2")
    await login(m)  # a success in between starts the count again
    for n in range(3):
        wrong = await login(m, 401, password=f"Wrong-{n}")
    # Locked, the right password gets the answer of a wrong one: a guesser learns nothing.
    assert await login(m, 401) == wrong
    (event,) = await store.list_audit(AuditQuery(action="lock"))
    assert (event.actor_kind, event.resource_name) == ("system", "ana@example.com")
    assert "from 127.0.0.1 for 10 min" in event.summary
    m.clock.advance(9 * 60)
    await login(m, 401)
    m.clock.advance(61)
    await login(m)


async def test_lockout_can_be_turned_off(m: Manager) -> None:
    await joined(m, lockout_attempts=0)
    for n in range(12):
        await login(m, 401, password=f"Wrong-{n}")
    await login(m)


async def test_an_expired_password_must_be_changed_before_anything_else(m: Manager) -> None:
    first = await joined(m, password_expiry_days=30)
    m.clock.advance(31 * 86400)
    restricted = await login(m)
    assert restricted["restricted"] == "password_change"
    token = restricted["token"]
    message = await refused(m, "GET", "/api/v1/tasks", None, 403, "password_change_required", token)
    assert message == "first change your expired password"
    same = {"current": PASSWORD, "new": PASSWORD}
    await refused(m, "POST", "/api/v1/auth/password", same, 400, "invalid", token)
    weak = {"current": PASSWORD, "new": "weak"}
    await refused(m, "POST", "/api/v1/auth/password", weak, 400, "weak_password", token)
    wrong = {"current": "Not-the-one-1", "new": "Brand-new-pass-7"}
    await refused(m, "POST", "/api/v1/auth/password", wrong, 400, "invalid", token)
    changed = {"current": PASSWORD, "new": "Brand-new-pass-7"}
    fresh = await ok(m, "POST", "/api/v1/auth/password", changed, key=token)
    assert fresh["restricted"] is None
    await ok(m, "GET", "/api/v1/tasks", key=fresh["token"])
    # Every other session ended with the change, the one from before the expiry too.
    for old in (token, first):
        await refused(m, "GET", "/api/v1/auth/me", None, 401, "session_expired", old)
    await login(m, 401)
    await login(m, password="Brand-new-pass-7")


async def enrol(m: Manager, token: str) -> tuple[pyotp.TOTP, Any]:
    """Enrol the session's user in 2FA at the test clock's time; (their TOTP, the answer)."""
    body = {"password": PASSWORD}
    enrolment = await ok(m, "POST", "/api/v1/auth/totp/enrol", body, key=token)
    assert enrolment["otpauth_uri"].startswith("otpauth://totp/Tether:ana%40example.com?")
    totp = pyotp.TOTP(enrolment["secret"])
    code = {"code": totp.at(m.clock.now)}
    return totp, await ok(m, "POST", "/api/v1/auth/totp/confirm", code, key=token)


async def test_totp_two_factor_with_replay_refused_and_recovery_codes(
    m: Manager, store: Store
) -> None:
    session = await joined(m)
    await refused(
        m, "POST", "/api/v1/auth/totp/confirm", {"code": "123456"}, 409, "conflict", session
    )
    totp, confirmed = await enrol(m, session)
    codes = confirmed["recovery_codes"]
    assert len(codes) == len(set(codes)) == 10
    assert confirmed["session"] is None
    again = {"password": PASSWORD}
    await refused(m, "POST", "/api/v1/auth/totp/enrol", again, 409, "conflict", session)

    assert (await login(m, 401))["error"]["code"] == "totp_required"
    # The code that confirmed enrolment was used: it does not log in.
    assert (await login(m, 401, totp_code=totp.at(m.clock.now)))["error"]["code"] == "invalid_totp"
    m.clock.advance(30)
    code = totp.at(m.clock.now)
    await login(m, totp_code=code)
    assert (await login(m, 401, totp_code=code))["error"]["code"] == "invalid_totp"
    # One step of drift either way is accepted; two are not.
    m.clock.advance(30)
    await login(m, totp_code=totp.at(m.clock.now + 30))
    m.clock.advance(30)
    await login(m, 401, totp_code=totp.at(m.clock.now + 90))

    await login(m, recovery_code=codes[0].upper())
    assert (await login(m, 401, recovery_code=codes[0]))["error"]["code"] == "invalid_totp"
    await login(m, recovery_code=codes[1])

    # Nothing secret reached the trail: no password, TOTP secret or recovery code.
    trail = str(await store.list_audit(AuditQuery(limit=1000)))
    secret = totp.secret
    for value in (PASSWORD, secret, *codes):
        assert value not in trail
    actions = {e.action for e in await store.list_audit(AuditQuery(limit=1000))}
    assert {"accept_invite", "totp_enrol", "totp_enable", "login"} <= actions


async def test_enforced_2fa_makes_users_enrol_at_their_next_login(m: Manager) -> None:
    await joined(m)
    # A user without 2FA cannot enforce it (they would be the first locked out).
    admin = await member(m.store, "root@example.com", account=["manage_users"])
    body = {"enforce_2fa": True}
    await refused(m, "PUT", "/api/v1/auth/settings", body, 409, "totp_required", admin)
    await ok(m, "PUT", "/api/v1/auth/settings", body)  # the admin key has no second factor

    restricted = await login(m)
    assert restricted["restricted"] == "totp_enrolment"
    token = restricted["token"]
    await refused(m, "GET", "/api/v1/tasks", None, 403, "totp_enrolment_required", token)
    me = await ok(m, "GET", "/api/v1/auth/me", key=token)
    assert me["restricted"] == "totp_enrolment"
    assert me["totp_enabled"] is False
    totp, confirmed = await enrol(m, token)
    # The restricted session is swapped for a full one.
    full = confirmed["session"]
    assert full is not None
    assert full["restricted"] is None
    await ok(m, "GET", "/api/v1/tasks", key=full["token"])
    await refused(m, "GET", "/api/v1/auth/me", None, 401, "session_expired", token)
    m.clock.advance(30)
    assert (await login(m, totp_code=totp.at(m.clock.now)))["restricted"] is None


async def test_new_users_must_have_an_allowed_email_domain(m: Manager) -> None:
    await ok(m, "PUT", "/api/v1/auth/settings", {"allowed_email_domains": ["@Example.com"]})
    body = {"email": "eve@elsewhere.org"}
    message = await refused(m, "POST", "/api/v1/users", body, 400, "invalid")
    assert message == "email: only these domains may join: example.com"
    await ok(m, "POST", "/api/v1/users", {"email": "ana@example.com"}, 201)


async def test_logout_ends_the_session_and_an_api_key_has_none(m: Manager) -> None:
    session = await joined(m)
    await ok(m, "POST", "/api/v1/auth/logout", key=session)
    await refused(m, "GET", "/api/v1/auth/me", None, 401, "session_expired", session)
    await refused(m, "POST", "/api/v1/auth/logout", None, 400, "not_a_session")
    me = await ok(m, "GET", "/api/v1/auth/me")
    assert me["kind"] == "api_key"
    assert "manage_users" in me["account_permissions"]


async def test_sessions_expire_and_disabling_a_user_ends_theirs(m: Manager) -> None:
    session = await joined(m, session_ttl_minutes=60)
    await ok(m, "GET", "/api/v1/auth/me", key=session)
    m.clock.advance(3601)
    await refused(m, "GET", "/api/v1/auth/me", None, 401, "session_expired", session)
    fresh = (await login(m))["token"]
    await ok(m, "POST", "/api/v1/users/ana@example.com/disable")
    await refused(m, "GET", "/api/v1/auth/me", None, 401, "session_expired", fresh)
    assert (await login(m, 401))["error"]["code"] == "user_disabled"


async def test_a_session_token_not_signed_here_is_refused(m: Manager, tmp_path: Path) -> None:
    session = await joined(m)
    body, mac = session.removeprefix("tss_").split(".")
    other = open_store(tmp_path / "elsewhere")
    await other.open()
    try:
        foreign = await SessionTokens(other).new()  # another install's key
    finally:
        await other.close()

    def flip(text: str) -> str:  # the last character changed, whatever it was
        return text[:-1] + ("A" if text[-1] != "A" else "B")

    for forged in (f"tss_{body}", f"tss_{body}.{flip(mac)}", f"tss_{flip(body)}.{mac}", foreign):
        await refused(m, "GET", "/api/v1/auth/me", None, 401, "invalid_session", forged)
    await ok(m, "GET", "/api/v1/auth/me", key=session)


async def test_an_admin_unlocks_resets_2fa_and_ends_sessions(m: Manager) -> None:
    session = await joined(m, lockout_attempts=2)
    await refused(m, "POST", "/api/v1/users/ana@example.com/unlock", None, 409, "conflict")
    for n in range(2):
        await login(m, 401, password=f"Wrong-{n}")
    await login(m, 401)
    await ok(m, "POST", "/api/v1/users/ana@example.com/unlock")
    await login(m)

    totp, _ = await enrol(m, session)
    m.clock.advance(30)
    await login(m, totp_code=totp.at(m.clock.now))
    user = await ok(m, "POST", "/api/v1/users/ana@example.com/reset-2fa")
    assert user["totp_enabled"] is False
    await refused(m, "GET", "/api/v1/auth/me", None, 401, "session_expired", session)
    session = (await login(m))["token"]  # no code asked for now
    await refused(m, "POST", "/api/v1/users/ana@example.com/reset-2fa", None, 409, "conflict")

    other = (await login(m))["token"]
    await ok(m, "POST", "/api/v1/users/ana@example.com/logout")
    for ended in (session, other):
        await refused(m, "GET", "/api/v1/auth/me", None, 401, "session_expired", ended)
    await login(m)  # ending sessions does not stop logging in


async def test_expired_sessions_and_sso_logins_are_deleted(m: Manager) -> None:
    logins: Logins = m.client.app[LOGINS]
    first = await joined(m, session_ttl_minutes=60)
    stale = SsoLogin(state="s", nonce="n", verifier_hash="h", expires_at=m.clock.now + 600)
    await sso_logins(m.store).insert(stale)
    m.clock.advance(3601)
    second = (await login(m))["token"]
    assert await logins.expire() == 2
    assert await logins.expire() == 0
    assert [s.body.token_hash for s in await logins.directory.sessions.list()] == [
        hash_secret(second)
    ]
    assert await sso_logins(m.store).list() == []
    await refused(m, "GET", "/api/v1/auth/me", None, 401, "session_expired", first)
    await ok(m, "GET", "/api/v1/auth/me", key=second)


async def test_parallel_guesses_are_checked_at_most_lockout_attempts_times(m: Manager) -> None:
    await joined(m, lockout_attempts=3)
    body = {"email": "ana@example.com", "password": "Wrong-guess-1"}
    logins: Logins = m.client.app[LOGINS]
    answers = await asyncio.gather(*(m.call("POST", "/api/v1/auth/login", body) for _ in range(20)))
    assert {(s, a["error"]["code"]) for s, a in answers} == {(401, "invalid_credentials")}
    user = await logins.directory.users.by_key("ana@example.com")
    assert user is not None
    # At most three were counted before the lock, the rest refused by it.
    assert (user.body.network_failures["127.0.0.1"].locked_until or 0) > m.clock.now
    assert user.body.failed_logins <= 3
    # The right password, arriving after the guesses, does not lift the lock.
    assert (await login(m, 401))["error"]["code"] == "invalid_credentials"


async def test_asking_for_the_code_again_does_not_reset_the_count(m: Manager) -> None:
    session = await joined(m, lockout_attempts=3)
    await enrol(m, session)
    for n in range(3):
        assert (await login(m, 401))["error"]["code"] == "totp_required"
        assert (await login(m, 401, totp_code=f"00000{n}"))["error"]["code"] == "invalid_totp"
    assert (await login(m, 401))["error"]["code"] == "invalid_credentials"  # locked


async def test_a_session_guessing_the_password_locks_the_user_and_ends(m: Manager) -> None:
    session = await joined(m, lockout_attempts=3)
    message = await refused(m, "POST", "/api/v1/auth/totp/enrol", {}, 400, "invalid", session)
    assert message == "password: enter your password to add a device"
    guesses = [
        ("/api/v1/auth/totp/enrol", {"password": "Guess-number-1"}),
        ("/api/v1/auth/password", {"current": "Guess-number-2", "new": "Whatever-pass-9"}),
    ]
    for path, body in guesses:
        await refused(m, "POST", path, body, 400, "invalid", session)
    # The third guess locks the user, and ends the session that was guessing.
    body = {"current": "Guess-number-3", "new": "Whatever-pass-9"}
    await refused(m, "POST", "/api/v1/auth/password", body, 400, "invalid", session)
    await refused(m, "GET", "/api/v1/auth/me", None, 401, "session_expired", session)
    assert (await login(m, 401))["error"]["code"] == "invalid_credentials"  # locked


async def test_credentials_that_are_not_ascii_are_refused_not_a_crash(m: Manager) -> None:
    session = await joined(m)
    await enrol(m, session)
    for bearer in ("tss_x.é", "tss_é.x", "tak_é", "tss_" + "é" * 40):
        got, answer = await m.call("GET", "/api/v1/auth/me", key=bearer)
        assert got == 401, answer
    assert (await login(m, 401, totp_code="é12345"))["error"]["code"] == "invalid_totp"
    got, answer = await m.call(
        "POST", "/api/v1/auth/login", {"email": "ana@example.com", "password": "\ud800x"}
    )
    assert (got, answer["error"]["field"]) == (400, "password")
    assert hash_secret("tak_\udcff") != hash_secret("tak_")


async def test_disabling_an_invited_user_kills_the_invite(m: Manager) -> None:
    token = await invite(m)
    await ok(m, "POST", "/api/v1/users/ana@example.com/disable")
    await ok(m, "POST", "/api/v1/users/ana@example.com/enable")
    body = {"token": token, "password": PASSWORD}
    await refused(m, "POST", "/api/v1/auth/invite/accept", body, 400, "invalid_invite")
    fresh = (await ok(m, "POST", "/api/v1/users/ana@example.com/invite"))["invite_token"]
    await ok(m, "POST", "/api/v1/auth/invite/accept", {"token": fresh, "password": PASSWORD})


async def test_logins_from_one_address_are_limited(m: Manager) -> None:
    await joined(m, login_attempts_per_ip_per_minute=5)
    for n in range(4):  # the invite's acceptance took one of the five
        await login(m, 401, password=f"Wrong-{n}")
    resp = await m.client.post(
        "/api/v1/auth/login", json={"email": "ana@example.com", "password": PASSWORD}
    )
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "12"  # one attempt back every 60/5 s
    assert (await resp.json())["error"]["message"] == (
        "too many logins from your address; at most 5 a minute"
    )
    m.clock.advance(12)
    await login(m)

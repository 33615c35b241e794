"""Logging in with a password: sessions, lockout, password expiry, TOTP 2FA and recovery
codes, invites; and the account's login settings (manager.access.passwords.AuthSettings).

A session is a random ``tss_`` token; the store keeps its SHA-256 (manager.access.directory
SessionBody), so a leaked database holds no usable session. Logging out deletes it, and
disabling a user ends theirs within the principal cache's second (manager.access.principal).

Counting failed logins and accepting a TOTP step are compare-and-set updates of the user
(manager.access.entities): two replicas answering the same attacker in parallel both count, and
a code accepted on one replica is refused on the other.

Other ways in (SSO today; SAML and LDAP later) end the same way, in :meth:`Logins.session`,
so a session is a session whatever made it.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pyotp
import structlog
from aiohttp import web

from manager.access import lockout
from manager.access.directory import Directory, SessionBody, UserBody
from manager.access.entities import Entity, EntityKind, Gone, together
from manager.access.lockout import network_of
from manager.access.passwords import Passwords, policy_problems
from manager.access.principal import Principals
from manager.access.sso import sso_logins
from manager.core.audit_chain import AuditAppend, AuditOf
from manager.errors import Conflicting, DomainError, Forbidden, Invalid, Unauthenticated
from manager.keys.masterkey import MasterKey
from manager.records import EntityRecord
from manager.schemas.auth import AuthSettings
from manager.store.base import EntityWrite, StoreError
from shared.ids import hash_secret

__all__ = ["LOGINS", "FailNotice", "LockNotice", "Logins", "Session", "recovery_code"]

log = structlog.get_logger("tether.login")

# A session that may only finish logging in (enrol in 2FA, change an expired password)
# lasts this long: enough to do it, too short to matter if it leaks.
RESTRICTED_TTL_S = 15 * 60.0
RECOVERY_CODES = 10
# How often each replica deletes expired sessions (any replica may; a delete is idempotent).
EXPIRY_INTERVAL_S = 300.0
_SETTINGS_ID = "account"
_STEP_S = 30  # RFC 6238's default time step, which every authenticator app uses
_ISSUER = "Tether"


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    expires_at: float
    user: Entity[UserBody]
    restricted: str | None


# A lock was set on the user: (the user, where: a network, or "everywhere").
LockNotice = Callable[[Entity[UserBody], str], Awaitable[None]]
# A login failed: the user (None: no such email).
FailNotice = Callable[[Entity[UserBody] | None], Awaitable[None]]


async def _notify(on_fail: FailNotice | None, user: Entity[UserBody] | None) -> None:
    if on_fail is not None:
        await on_fail(user)


def recovery_code() -> str:
    """80 random bits as four groups of four base32 letters: typed from paper, hashed like
    a token (no stretching needed at this entropy)."""
    raw = base64.b32encode(secrets.token_bytes(10)).decode().lower()
    return "-".join(raw[i : i + 4] for i in range(0, 16, 4))


def _normal_code(code: str) -> str:
    return code.strip().lower().replace(" ", "")


def _locked(until: float) -> DomainError:
    when = time.strftime("%H:%M:%S UTC", time.gmtime(until))
    return Forbidden("locked", f"too many failed logins; this user is locked until {when}")


def _invalid() -> DomainError:
    # The same answer for an unknown email, a wrong password and an account with no
    # password: which emails exist is nobody's business.
    return Unauthenticated("invalid_credentials", "wrong email or password")


class Logins:
    def __init__(
        self,
        directory: Directory,
        master_key: MasterKey,
        principals: Principals,
        *,
        passwords: Passwords | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self._key = master_key
        self._principals = principals
        self.passwords = passwords or Passwords()
        self._clock = clock
        self.settings_kind = EntityKind(
            directory.store, "auth_settings", AuthSettings, lambda _: _SETTINGS_ID, "aus"
        )
        self._sso_logins = sso_logins(directory.store)

    # -- settings

    async def settings(self) -> AuthSettings:
        found = await self.settings_kind.get(_SETTINGS_ID)
        return AuthSettings() if found is None else found.body

    async def save_settings(
        self,
        body: AuthSettings,
        *,
        audit: AuditOf[tuple[AuthSettings | None, Entity[AuthSettings]]] | None = None,
    ) -> AuthSettings:
        """Store ``body``; answers the settings it replaced. ``audit``: as
        :meth:`EntityKind.put`'s (None before: the defaults were in force)."""
        before = await self.settings_kind.put(_SETTINGS_ID, body, audit=audit)
        return AuthSettings() if before is None else before

    # -- sessions

    async def session(
        self,
        user: Entity[UserBody],
        settings: AuthSettings,
        *,
        via: str = "password",
        second_factor_due: bool = False,
    ) -> Session:
        """A new session for ``user``, restricted while the rules want something first:
        with ``second_factor_due`` (an SSO login of a user with local 2FA, the provider
        asserting no MFA), to giving the code."""
        now = self._clock()
        restricted = self._restriction(user.body, settings, now) if via == "password" else None
        if second_factor_due:
            restricted = "totp"
        ttl = RESTRICTED_TTL_S if restricted else settings.session_ttl_minutes * 60.0
        token = await self._principals.tokens.new()
        await self.directory.sessions.insert(
            SessionBody(
                token_hash=hash_secret(token),
                user_id=user.id,
                expires_at=now + ttl,
                restricted=restricted,
            )
        )

        def seen(b: UserBody) -> UserBody:
            return b.model_copy(update={"last_login_at": now})

        _, user = await self.directory.users.update(user.id, seen)
        return Session(token, now + ttl, user, restricted)

    def _restriction(self, user: UserBody, settings: AuthSettings, now: float) -> str | None:
        days = settings.password_expiry_days
        changed = user.password_changed_at
        if days and (changed is None or now >= changed + days * 86400.0):
            return "password_change"
        if settings.enforce_2fa and not user.totp_enabled:
            return "totp_enrolment"
        return None

    async def logout(self, session_id: str) -> None:
        await self.directory.sessions.delete(session_id)
        self._principals.forget()

    async def expire(self) -> int:
        """Delete sessions and pending SSO logins past their time; answers how many went.
        (Expired ones are already refused; this keeps them from piling up in the store.)"""
        now, gone = self._clock(), 0
        for s in await self.directory.sessions.list():
            if s.body.expires_at <= now:
                gone += await self.directory.sessions.delete(s.id)
        for login in await self._sso_logins.list():
            if login.body.expires_at <= now:
                gone += await self._sso_logins.delete(login.id)
        return gone

    async def expire_forever(self, interval: float = EXPIRY_INTERVAL_S) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                gone = await self.expire()
            except StoreError as exc:
                log.warning("could not delete expired sessions", error=str(exc))
                continue
            if gone:
                log.info("expired sessions deleted", count=gone)

    async def change_ending_sessions(
        self,
        user_id: str,
        change: Callable[[UserBody], UserBody],
        *,
        audit: AuditOf[tuple[UserBody, Entity[UserBody]]],
    ) -> Entity[UserBody]:
        """``change`` to the user, and the end of every session of theirs, in one
        transaction with ``audit``'s event (of the body before and the user as written):
        a disabled user keeps no session, and no outage keeps the change but not its event.
        :class:`Gone` when there is no such user."""
        users, sessions = self.directory.users, self.directory.sessions
        before: list[UserBody] = []
        planned: list[EntityWrite] = []

        async def plan() -> list[EntityWrite]:
            current = await users.get(user_id)
            if current is None:
                raise Gone(f"user {user_id} does not exist")
            before[:] = [current.body]
            theirs = [s for s in await sessions.list() if s.body.user_id == user_id]
            planned[:] = [users.updated(current, change(current.body.model_copy(deep=True)))]
            return [*planned, *(sessions.deleted(s, any_version=True) for s in theirs)]

        def event(written: list[EntityRecord | None]) -> AuditAppend | None:
            record = written[0]
            assert record is not None  # an update that missed writes nothing
            return audit((before[0], users.parse(record)))

        await together(self.directory.store, plan, audit=event)
        self._principals.forget()
        return users.parse(planned[0].record)  # as written: its version was checked

    async def end_sessions(
        self, user_id: str, *, keep: str | None = None, audit: AuditOf[int] | None = None
    ) -> int:
        """End every session of ``user_id`` but ``keep``; answers how many ended. With
        ``audit``: all in one transaction with its event (of how many ended)."""
        sessions = self.directory.sessions
        if audit is None:
            ended = 0
            for s in await sessions.list():
                if s.body.user_id == user_id and s.id != keep:
                    ended += await sessions.delete(s.id)
            self._principals.forget()
            return ended
        count: list[int] = []

        async def plan() -> list[EntityWrite]:
            theirs = [s for s in await sessions.list() if s.body.user_id == user_id]
            return [sessions.deleted(s, any_version=True) for s in theirs if s.id != keep]

        def event(written: list[EntityRecord | None]) -> AuditAppend | None:
            count[:] = [sum(r is not None for r in written)]
            return audit(count[0])

        await together(self.directory.store, plan, audit=event)
        self._principals.forget()
        return count[0]

    # -- logging in

    async def login(
        self,
        email: str,
        password: str,
        *,
        totp_code: str | None = None,
        recovery_code: str | None = None,
        client: str = "",
        on_lock: LockNotice | None = None,
        on_fail: FailNotice | None = None,
    ) -> Session:
        """A session for these credentials from ``client`` (an address). An unknown email, a
        wrong password and a locked user get the same answer after the same password work:
        neither which emails exist nor which are locked is told to a guesser."""
        settings = await self.settings()
        user = await self.directory.users.by_key(email.strip().lower())
        if user is None:
            await self.passwords.verify(None, password)  # the same work as a wrong password
            await _notify(on_fail, None)
            raise _invalid()
        network = network_of(client)
        claimed = await self._claim(user, network, settings, on_lock)
        if claimed is None:
            await self.passwords.verify(user.body.password_hash, password)  # the same work
            await _notify(on_fail, user)
            raise _invalid()
        user = claimed
        if not await self.passwords.verify(user.body.password_hash, password):
            await self._failed(user, network, settings, on_lock)
            await _notify(on_fail, user)
            raise _invalid()
        if user.body.status != "active":
            raise Unauthenticated("user_disabled", "this user is disabled")
        if user.body.totp_enabled:
            if not totp_code and not recovery_code:
                # Not a failure, not a success: the client asks for the code and sends both
                # again. The claim is given back, and earlier failures keep counting.
                await self._unclaim(user, network)
                raise Unauthenticated(
                    "totp_required",
                    "this user has two-factor authentication: send totp_code (or a recovery_code)",
                )
            if not await self._second_factor(user, totp_code, recovery_code):
                await self._failed(user, network, settings, on_lock)
                await _notify(on_fail, user)
                raise Unauthenticated("invalid_totp", "the authentication code is not valid")
        user = await self._succeeded(user, network, password, hide_lock=True)
        return await self.session(user, settings)

    async def _claim(
        self,
        user: Entity[UserBody],
        network: str,
        settings: AuthSettings,
        on_lock: LockNotice | None,
    ) -> Entity[UserBody] | None:
        """Count this attempt before the password is checked; None when it is refused (the
        user is locked for this network or everywhere): however many attempts arrive at
        once, at most ``lockout_attempts`` of them are checked per network (each claims one
        in a compare-and-set) before the lock holds."""
        now = self._clock()
        outcome: lockout.Claim | None = None

        def take(b: UserBody) -> UserBody:
            nonlocal outcome
            outcome = lockout.claim(b, network, settings, now)
            return outcome.body

        _, after = await self.directory.users.update(user.id, take)
        assert outcome is not None  # set by the update
        if outcome.locked and on_lock is not None:
            await on_lock(after, outcome.locked)
        return None if outcome.refused_until is not None else after

    async def _claim_in_session(
        self,
        user: Entity[UserBody],
        network: str,
        settings: AuthSettings,
        on_lock: LockNotice | None,
    ) -> Entity[UserBody]:
        """:meth:`_claim` for a session's check, which may be told it is locked (it already
        knows the user exists)."""
        claimed = await self._claim(user, network, settings, on_lock)
        if claimed is None:
            until = lockout.locked_until(user.body, network, self._clock())
            raise _locked(until or self._clock())
        return claimed

    async def _unclaim(self, user: Entity[UserBody], network: str) -> None:
        await self.directory.users.update(user.id, lambda b: lockout.give_back(b, network))

    async def _failed(
        self,
        user: Entity[UserBody],
        network: str,
        settings: AuthSettings,
        on_lock: LockNotice | None,
    ) -> bool:
        """The claimed attempt failed: it already counts; lock now if it was the last one
        (answers whether it did)."""
        now, scope = self._clock(), ""

        def lock(b: UserBody) -> UserBody:
            nonlocal scope
            body, scope = lockout.fail(b, network, settings, now)
            return body

        _, after = await self.directory.users.update(user.id, lock)
        if scope and on_lock is not None:
            await on_lock(after, scope)
        return bool(scope)

    async def reauthenticate(
        self,
        user: Entity[UserBody],
        password: str,
        on_lock: LockNotice | None = None,
        *,
        client: str = "",
    ) -> Entity[UserBody]:
        """A session asks for something a stolen session must not get (a new password, a
        2FA device): the password again, counted towards the lockout like a login from
        ``client``. When the guesses lock the user, their sessions end, this one with them.
        (A session may be told it is locked: it already knows the user exists.)"""
        settings = await self.settings()
        network = network_of(client)
        claimed = await self._claim_in_session(user, network, settings, on_lock)
        if not await self.passwords.verify(claimed.body.password_hash, password):
            if await self._failed(claimed, network, settings, on_lock):
                await self.end_sessions(claimed.id)
            raise Invalid("invalid", "the current password is wrong", field="current")
        return await self._succeeded(claimed, network, password)

    async def _succeeded(
        self, user: Entity[UserBody], network: str, password: str, *, hide_lock: bool = False
    ) -> Entity[UserBody]:
        """The claimed attempt succeeded: the count starts again, unless attempts made
        alongside it locked the user meanwhile (then this one is refused too: as a wrong
        password, when ``hide_lock``)."""
        rehashed = None
        stored = user.body.password_hash
        if stored and self.passwords.needs_rehash(stored):
            rehashed = await self.passwords.hash(password)
        now = self._clock()

        def reset(b: UserBody) -> UserBody:
            body, until = lockout.succeed(b, network, now)
            if until is not None:
                raise _invalid() if hide_lock else _locked(until)
            if rehashed is not None:
                body = body.model_copy(update={"password_hash": rehashed})
            return body

        _, user = await self.directory.users.update(user.id, reset)
        return user

    async def pass_second_factor(
        self,
        user: Entity[UserBody],
        totp_code: str | None,
        recovery_code: str | None,
        *,
        client: str = "",
        on_lock: LockNotice | None = None,
    ) -> Entity[UserBody]:
        """The code a session restricted to "totp" gives: counted towards the lockout like
        a password, so a stolen restricted session cannot try every code."""
        settings = await self.settings()
        network = network_of(client)
        claimed = await self._claim_in_session(user, network, settings, on_lock)
        if not (totp_code or recovery_code) or not await self._second_factor(
            claimed, totp_code, recovery_code
        ):
            if await self._failed(claimed, network, settings, on_lock):
                await self.end_sessions(claimed.id)
            raise Unauthenticated("invalid_totp", "the authentication code is not valid")
        now = self._clock()

        def reset(b: UserBody) -> UserBody:
            body, until = lockout.succeed(b, network, now)
            if until is not None:
                raise _locked(until)
            return body

        _, after = await self.directory.users.update(claimed.id, reset)
        return after

    async def _second_factor(
        self, user: Entity[UserBody], totp_code: str | None, recovery: str | None
    ) -> bool:
        if totp_code:
            sealed = user.body.totp_sealed
            return sealed is not None and await self._accept_totp(user.id, sealed, totp_code)
        wanted = hash_secret(_normal_code(recovery or ""))
        if wanted not in user.body.recovery_hashes:
            return False
        used = False

        def spend(b: UserBody) -> UserBody:
            nonlocal used
            used = wanted in b.recovery_hashes  # spent once, even by two replicas at once
            left = [h for h in b.recovery_hashes if h != wanted]
            return b.model_copy(update={"recovery_hashes": left})

        await self.directory.users.update(user.id, spend)
        return used

    # -- TOTP

    def _totp(self, user_id: str, sealed: str) -> pyotp.TOTP:
        secret = self._key.decrypt(sealed, context=f"totp:{user_id}".encode()).decode()
        return pyotp.TOTP(secret, interval=_STEP_S)

    async def _accept_totp(self, user_id: str, sealed: str, code: str) -> bool:
        """``code`` is current (one step either side, for clock drift) and newer than the
        last code accepted; the step is then recorded, so the code works once."""
        totp = self._totp(user_id, sealed)
        code = code.strip().replace(" ", "")
        now_step = int(self._clock() // _STEP_S)
        step = next(
            (
                s
                for s in (now_step - 1, now_step, now_step + 1)
                if secrets.compare_digest(totp.at(s * _STEP_S).encode(), code.encode())
            ),
            None,
        )
        if step is None:
            return False
        fresh = False

        def spend(b: UserBody) -> UserBody:
            nonlocal fresh
            fresh = b.totp_last_step is None or step > b.totp_last_step
            return b.model_copy(update={"totp_last_step": step}) if fresh else b

        await self.directory.users.update(user_id, spend)
        return fresh

    async def totp_enrol(self, user: Entity[UserBody]) -> tuple[str, str]:
        """(secret, otpauth URI) to put in an authenticator app; confirmed with a code."""
        if user.body.totp_enabled:
            raise Conflicting("conflict", "two-factor authentication is already on")
        secret = pyotp.random_base32()
        sealed = self._key.encrypt(secret.encode(), context=f"totp:{user.id}".encode())

        def pend(b: UserBody) -> UserBody:
            return b.model_copy(update={"totp_pending_sealed": sealed})

        await self.directory.users.update(user.id, pend)
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.body.email, issuer_name=_ISSUER)
        return secret, uri

    async def totp_confirm(self, user: Entity[UserBody], code: str) -> list[str]:
        """Turn 2FA on with a code from the pending secret; answers the recovery codes."""
        pending = user.body.totp_pending_sealed
        if user.body.totp_enabled:
            raise Conflicting("conflict", "two-factor authentication is already on")
        if pending is None:
            raise Conflicting("conflict", "start with POST /api/v1/auth/totp/enrol")
        if not await self._accept_totp(user.id, pending, code):
            raise Invalid("invalid_totp", "the authentication code is not valid")
        codes = [recovery_code() for _ in range(RECOVERY_CODES)]

        def enable(b: UserBody) -> UserBody:
            return b.model_copy(
                update={
                    "totp_sealed": pending,
                    "totp_pending_sealed": None,
                    "totp_enabled": True,
                    "recovery_hashes": [hash_secret(c) for c in codes],
                }
            )

        await self.directory.users.update(user.id, enable)
        return codes

    # -- passwords and invites

    async def _checked_hash(self, password: str) -> str:
        problems = policy_problems(password, await self.settings())
        if problems:
            raise Invalid(
                "weak_password",
                f"the password needs {', '.join(problems)}",
                field="password",
            )
        return await self.passwords.hash(password)

    async def change_password(
        self,
        user: Entity[UserBody],
        current: str,
        new: str,
        on_lock: LockNotice | None = None,
        *,
        client: str = "",
    ) -> Session:
        """Set a new password; every other session of the user ends."""
        user = await self.reauthenticate(user, current, on_lock, client=client)
        if current == new:
            raise Invalid("invalid", "the new password is the current one", field="new")
        new_hash = await self._checked_hash(new)
        now = self._clock()

        def change(b: UserBody) -> UserBody:
            return b.model_copy(update={"password_hash": new_hash, "password_changed_at": now})

        _, user = await self.directory.users.update(user.id, change)
        await self.end_sessions(user.id)
        return await self.session(user, await self.settings())

    async def accept_invite(self, token: str, password: str) -> Session:
        wanted = hash_secret(token)
        found = next(
            (u for u in await self.directory.users.list() if u.body.invite_hash == wanted), None
        )
        expires = None if found is None else found.body.invite_expires_at
        if found is None or found.body.status != "invited" or (expires or 0) <= self._clock():
            raise Invalid("invalid_invite", "the invite is not valid (used, replaced or expired)")
        new_hash = await self._checked_hash(password)
        now = self._clock()

        def accept(b: UserBody) -> UserBody:
            if b.invite_hash != wanted or b.status != "invited":
                raise Invalid("invalid_invite", "the invite was used a moment ago")
            return b.model_copy(
                update={
                    "password_hash": new_hash,
                    "password_changed_at": now,
                    "status": "active",
                    "invite_hash": None,
                    "invite_expires_at": None,
                }
            )

        _, user = await self.directory.users.update(found.id, accept)
        return await self.session(user, await self.settings())


LOGINS: web.AppKey[Logins] = web.AppKey("tether_logins", Logins)

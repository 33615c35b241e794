"""Logging in with a password: sessions, lockout, password expiry, TOTP 2FA and recovery
codes, invites; and the account's login settings (manager.access.passwords.AuthSettings).

A session is a random ``tss_`` token; the store keeps its SHA-256 (manager.access.directory
SessionBody), so a leaked database holds no usable session. Logging out deletes it, and
disabling a user ends theirs within the principal cache's second (manager.access.principal).

Counting failed logins and accepting a TOTP step are compare-and-set updates of the user
(manager.access.entities): two replicas answering the same attacker in parallel both count, and
a code accepted on one replica is refused on the other.

Other ways in (OpenID Connect, SAML, LDAP) find their user through
manager.access.external.ExternalUsers.user_for and end in :meth:`Logins.external_session`,
which ends in :meth:`Logins.session` as a password login does: a session is a session
whatever made it.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

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

__all__ = ["LOGINS", "FailNotice", "LockEvent", "Logins", "Session", "recovery_code"]

log = structlog.get_logger("tether.login")
T = TypeVar("T")

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


# The event of a lock set on the user (the user, where: a network or "everywhere", for how
# many minutes), chained with the lock; None: no event.
LockEvent = Callable[[Entity[UserBody], str, int], AuditAppend | None]
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
        more: Callable[[], Awaitable[Sequence[EntityWrite]]] | None = None,
        audit: AuditOf[Entity[UserBody]] | None = None,
    ) -> Session:
        """A new session for ``user``, restricted while the rules want something first:
        with ``second_factor_due`` (an SSO login of a user with local 2FA, the provider
        asserting no MFA), to giving the code. ``more``, ``audit``: as :meth:`_sign_in`'s."""
        return await self._sign_in(
            user.id,
            _as_is,
            settings,
            via=via,
            second_factor_due=second_factor_due,
            more=more,
            audit=audit,
        )

    async def external_session(
        self,
        user: Entity[UserBody],
        mfa: bool,
        *,
        via: str = "sso",
        more: Callable[[], Awaitable[Sequence[EntityWrite]]] | None = None,
        audit: AuditOf[Entity[UserBody]] | None = None,
    ) -> Session:
        """The session of a user an external provider vouched for (OIDC, SAML, LDAP): the
        provider did the password, and the second factor too only when it asserted MFA
        (``mfa``); otherwise a user with 2FA here gives their code before the session does
        anything else (it is restricted to "totp")."""
        return await self.session(
            user,
            await self.settings(),
            via=via,
            second_factor_due=user.body.totp_enabled and not mfa,
            more=more,
            audit=audit,
        )

    async def _sign_in(
        self,
        user_id: str,
        change: Callable[[UserBody], UserBody],
        settings: AuthSettings,
        *,
        via: str = "password",
        second_factor_due: bool = False,
        ending: Callable[[Entity[SessionBody]], bool] | None = None,
        more: Callable[[], Awaitable[Sequence[EntityWrite]]] | None = None,
        audit: AuditOf[Entity[UserBody]] | None = None,
    ) -> Session:
        """A new session for ``user_id`` after ``change`` to them (what the login resets or
        spends: it sees the latest body, and may raise to refuse), in one transaction with
        ``audit``'s event of the user as written. The user's sessions that ``ending`` picks
        end in it, and ``more`` writes go with it (an SSO login collected). No outage keeps
        the session but loses its event, nor the event without the session."""
        users, sessions = self.directory.users, self.directory.sessions
        token = await self._principals.tokens.new()
        made: list[Session] = []

        async def plan() -> list[EntityWrite]:
            current = await users.get(user_id)
            if current is None:
                raise Gone(f"user {user_id} does not exist")
            now = self._clock()
            body = change(current.body.model_copy(deep=True))
            body = body.model_copy(update={"last_login_at": now})
            restricted = self._restriction(body, settings, now) if via == "password" else None
            if second_factor_due:
                restricted = "totp"
            ttl = RESTRICTED_TTL_S if restricted else settings.session_ttl_minutes * 60.0
            session = SessionBody(
                token_hash=hash_secret(token),
                user_id=user_id,
                expires_at=now + ttl,
                restricted=restricted,
            )
            writes = [users.updated(current, body), sessions.inserted(session)]
            if ending is not None:
                theirs = [s for s in await sessions.list() if s.body.user_id == user_id]
                writes += [sessions.deleted(s, any_version=True) for s in theirs if ending(s)]
            if more is not None:
                writes += await more()
            made[:] = [Session(token, now + ttl, users.parse(writes[0].record), restricted)]
            return writes

        def event(written: list[EntityRecord | None]) -> AuditAppend | None:
            record = written[0]
            assert record is not None  # an update that missed writes nothing
            return None if audit is None else audit(users.parse(record))

        await together(self.directory.store, plan, audit=event)
        if ending is not None:
            self._principals.forget()
        return made[0]

    def _restriction(self, user: UserBody, settings: AuthSettings, now: float) -> str | None:
        days = settings.password_expiry_days
        changed = user.password_changed_at
        if days and (changed is None or now >= changed + days * 86400.0):
            return "password_change"
        if settings.enforce_2fa and not user.totp_enabled:
            return "totp_enrolment"
        return None

    async def logout(
        self, session_id: str, *, audit: AuditOf[Entity[SessionBody]] | None = None
    ) -> None:
        """``audit``: its event, of the session deleted, in the delete's transaction (none
        when it had ended already)."""
        await self.directory.sessions.delete(session_id, audit=audit)
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
    #
    # The count of an attempt (its claim, its failure, the lock they set) is written on its
    # own, before the credentials are checked, and stands whatever follows: a guess must
    # count even when the session that would follow cannot be written. A lock's event goes
    # in the count's transaction (:meth:`_count`). What a success writes (the count reset, a
    # code spent, the session, a sessions' end) is one transaction with the route's event.

    async def login(
        self,
        email: str,
        password: str,
        *,
        totp_code: str | None = None,
        recovery_code: str | None = None,
        client: str = "",
        on_lock: LockEvent | None = None,
        on_fail: FailNotice | None = None,
        audit: AuditOf[Entity[UserBody]] | None = None,
    ) -> Session:
        """A session for these credentials from ``client`` (an address). An unknown email, a
        wrong password and a locked user get the same answer after the same password work:
        neither which emails exist nor which are locked is told to a guesser. ``audit``: the
        event of the user as written, in the session's transaction."""
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
        spend: Callable[[UserBody], UserBody] = _as_is
        if user.body.totp_enabled:
            if not totp_code and not recovery_code:
                # Not a failure, not a success: the client asks for the code and sends both
                # again. The claim is given back, and earlier failures keep counting.
                await self._unclaim(user, network)
                raise Unauthenticated(
                    "totp_required",
                    "this user has two-factor authentication: send totp_code (or a recovery_code)",
                )
            found = self._second_factor(user, totp_code, recovery_code)
            if found is None:
                await self._failed(user, network, settings, on_lock)
                await _notify(on_fail, user)
                raise Unauthenticated("invalid_totp", "the authentication code is not valid")
            spend = found
        reset = await self._reset(user, network, password, hide_lock=True)
        try:
            return await self._sign_in(user.id, lambda b: spend(reset(b)), settings, audit=audit)
        except _Spent:
            await self._failed(user, network, settings, on_lock)
            await _notify(on_fail, user)
            raise Unauthenticated("invalid_totp", "the authentication code is not valid") from None

    async def counted(
        self,
        user: Entity[UserBody] | None,
        attempt: Callable[[], Awaitable[T | None]],
        *,
        client: str = "",
        on_lock: LockEvent | None = None,
        on_fail: FailNotice | None = None,
    ) -> T:
        """Credentials another party checks (an LDAP bind: ``attempt``, None when refused),
        counted towards the lockout of the ``user`` they are for (None: no user here yet)
        as a password is: claimed before the check, a failure counts, a success starts the
        count again. A locked user gets the wrong-password answer after the same check."""
        settings = await self.settings()
        if user is None:
            found = await attempt()
            if found is None:
                await _notify(on_fail, None)
                raise _invalid()
            return found
        network = network_of(client)
        claimed = await self._claim(user, network, settings, on_lock)
        found = await attempt()
        if claimed is None:
            await _notify(on_fail, user)
            raise _invalid()
        if found is None:
            await self._failed(claimed, network, settings, on_lock)
            await _notify(on_fail, claimed)
            raise _invalid()
        now = self._clock()

        def reset(b: UserBody) -> UserBody:
            body, until = lockout.succeed(b, network, now)
            if until is not None:
                raise _invalid()
            return body

        await self.directory.users.update(claimed.id, reset)
        return found

    async def _count(
        self,
        user: Entity[UserBody],
        change: Callable[[UserBody], UserBody],
        locked: Callable[[], str],
        settings: AuthSettings,
        on_lock: LockEvent | None,
    ) -> Entity[UserBody]:
        """Write an attempt's count (``change``), with the event of the lock it set (by
        ``locked``, after it: "" when none) in its transaction. The count stands even when
        the trail cannot take that event: a guess that went uncounted while the trail is
        down would be a free one. So a count whose event fails is written again alone, and
        the lost event is logged; the answer is the attempt's own."""
        users = self.directory.users

        def event(written: tuple[UserBody, Entity[UserBody]]) -> AuditAppend | None:
            where = locked()
            if not where or on_lock is None:
                return None
            return on_lock(written[1], where, settings.lockout_minutes)

        if on_lock is None:
            _, after = await users.update(user.id, change)
            return after
        try:
            _, after = await users.update(user.id, change, audit=event)
        except Gone:
            raise
        except StoreError as exc:
            # Not written at all, or written but for its event: write the count alone (an
            # outage that took the count too fails this again, as a 503).
            _, after = await users.update(user.id, change)
            if locked():
                log.error(
                    "audit event lost",
                    resource_type="user",
                    resource_id=user.id,
                    action="lock",
                    error=str(exc),
                )
        return after

    async def _claim(
        self,
        user: Entity[UserBody],
        network: str,
        settings: AuthSettings,
        on_lock: LockEvent | None,
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

        def locked() -> str:
            return "" if outcome is None else outcome.locked

        after = await self._count(user, take, locked, settings, on_lock)
        assert outcome is not None  # set by the update
        return None if outcome.refused_until is not None else after

    async def _claim_in_session(
        self,
        user: Entity[UserBody],
        network: str,
        settings: AuthSettings,
        on_lock: LockEvent | None,
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
        on_lock: LockEvent | None,
    ) -> bool:
        """The claimed attempt failed: it already counts; lock now if it was the last one
        (answers whether it did)."""
        now, scope = self._clock(), ""

        def lock(b: UserBody) -> UserBody:
            nonlocal scope
            body, scope = lockout.fail(b, network, settings, now)
            return body

        await self._count(user, lock, lambda: scope, settings, on_lock)
        return bool(scope)

    async def reauthenticate(
        self,
        user: Entity[UserBody],
        password: str,
        on_lock: LockEvent | None = None,
        *,
        client: str = "",
    ) -> Entity[UserBody]:
        """:meth:`_reauthenticated`, its success written at once (for a request that
        writes nothing audited after it: the start of an SSO link)."""
        reset = await self._reauthenticated(user, password, on_lock, client=client)
        _, after = await self.directory.users.update(user.id, reset)
        return after

    async def _reauthenticated(
        self,
        user: Entity[UserBody],
        password: str,
        on_lock: LockEvent | None = None,
        *,
        client: str = "",
    ) -> Callable[[UserBody], UserBody]:
        """A session asks for something a stolen session must not get (a new password, a
        2FA device): the password again, counted towards the lockout like a login from
        ``client``. When the guesses lock the user, their sessions end, this one with them.
        (A session may be told it is locked: it already knows the user exists.) Answers
        what the success changes of the user, for the caller to write with its change."""
        settings = await self.settings()
        network = network_of(client)
        claimed = await self._claim_in_session(user, network, settings, on_lock)
        if not await self.passwords.verify(claimed.body.password_hash, password):
            if await self._failed(claimed, network, settings, on_lock):
                await self.end_sessions(claimed.id)
            raise Invalid("invalid", "the current password is wrong", field="current")
        return await self._reset(claimed, network, password)

    async def _reset(
        self, user: Entity[UserBody], network: str, password: str, *, hide_lock: bool = False
    ) -> Callable[[UserBody], UserBody]:
        """What the claimed attempt's success changes of the user: the count starts again
        (and a password hash of an older cost is replaced), unless attempts made alongside
        it locked the user meanwhile (then this one is refused too: as a wrong password,
        when ``hide_lock``)."""
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

        return reset

    async def pass_second_factor(
        self,
        user: Entity[UserBody],
        totp_code: str | None,
        recovery_code: str | None,
        *,
        ending: str,
        client: str = "",
        on_lock: LockEvent | None = None,
        audit: AuditOf[Entity[UserBody]] | None = None,
    ) -> Session:
        """The code a session restricted to "totp" (the session ``ending``) gives: counted
        towards the lockout like a password, so a stolen restricted session cannot try
        every code. Answers the full session that replaces it (``audit``: as
        :meth:`_sign_in`'s)."""
        settings = await self.settings()
        network = network_of(client)
        claimed = await self._claim_in_session(user, network, settings, on_lock)
        spend = self._second_factor(claimed, totp_code, recovery_code)
        if spend is not None:
            now = self._clock()

            def reset(b: UserBody) -> UserBody:
                body, until = lockout.succeed(b, network, now)
                if until is not None:
                    raise _locked(until)
                return body

            try:
                return await self._sign_in(
                    claimed.id,
                    lambda b: spend(reset(b)),
                    settings,
                    via="sso",
                    ending=lambda s: s.id == ending,
                    audit=audit,
                )
            except _Spent:
                pass  # taken by another request meanwhile: a code works once
        if await self._failed(claimed, network, settings, on_lock):
            await self.end_sessions(claimed.id)
        raise Unauthenticated("invalid_totp", "the authentication code is not valid")

    def _second_factor(
        self, user: Entity[UserBody], totp_code: str | None, recovery: str | None
    ) -> Callable[[UserBody], UserBody] | None:
        """What spends the code given (it works once: :class:`_Spent` when another request
        spent it since), for the success's transaction; None when it is wrong."""
        if totp_code:
            sealed = user.body.totp_sealed
            step = None if sealed is None else self._totp_step(user.id, sealed, totp_code)
            return None if step is None else _spend_step(step)
        if not recovery:
            return None
        wanted = hash_secret(_normal_code(recovery))
        if wanted not in user.body.recovery_hashes:
            return None

        def spend(b: UserBody) -> UserBody:
            if wanted not in b.recovery_hashes:  # spent once, even by two replicas at once
                raise _Spent
            left = [h for h in b.recovery_hashes if h != wanted]
            return b.model_copy(update={"recovery_hashes": left})

        return spend

    # -- TOTP

    def _totp(self, user_id: str, sealed: str) -> pyotp.TOTP:
        secret = self._key.decrypt(sealed, context=f"totp:{user_id}".encode()).decode()
        return pyotp.TOTP(secret, interval=_STEP_S)

    def _totp_step(self, user_id: str, sealed: str, code: str) -> int | None:
        """The step ``code`` is current for (one step either side, for clock drift); None
        when it is for none. :func:`_spend_step` makes it work once."""
        totp = self._totp(user_id, sealed)
        code = code.strip().replace(" ", "")
        now_step = int(self._clock() // _STEP_S)
        return next(
            (
                s
                for s in (now_step - 1, now_step, now_step + 1)
                if secrets.compare_digest(totp.at(s * _STEP_S).encode(), code.encode())
            ),
            None,
        )

    async def totp_enrol(
        self,
        user: Entity[UserBody],
        password: str | None = None,
        on_lock: LockEvent | None = None,
        *,
        client: str = "",
        audit: AuditOf[Entity[UserBody]] | None = None,
    ) -> tuple[str, str]:
        """(secret, otpauth URI) to put in an authenticator app; confirmed with a code. With
        ``password``, asked again (:meth:`_reauthenticated`). ``audit``: the event of the
        user as written, in the write's transaction."""
        if user.body.totp_enabled:
            raise Conflicting("conflict", "two-factor authentication is already on")
        reset: Callable[[UserBody], UserBody] = _as_is
        if password is not None:
            reset = await self._reauthenticated(user, password, on_lock, client=client)
        secret = pyotp.random_base32()
        sealed = self._key.encrypt(secret.encode(), context=f"totp:{user.id}".encode())

        def pend(b: UserBody) -> UserBody:
            return reset(b).model_copy(update={"totp_pending_sealed": sealed})

        await self.directory.users.update(user.id, pend, audit=_of_written(audit))
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.body.email, issuer_name=_ISSUER)
        return secret, uri

    async def totp_confirm(
        self,
        user: Entity[UserBody],
        code: str,
        *,
        ending: str | None = None,
        audit: AuditOf[Entity[UserBody]] | None = None,
    ) -> tuple[list[str], Session | None]:
        """Turn 2FA on with a code from the pending secret; answers the recovery codes, and
        with ``ending`` (a session restricted to enrolling, which did its one job) the full
        session that replaces it. ``audit``: the event of the user as written, in the one
        transaction of it all."""
        pending = user.body.totp_pending_sealed
        if user.body.totp_enabled:
            raise Conflicting("conflict", "two-factor authentication is already on")
        if pending is None:
            raise Conflicting("conflict", "start with POST /api/v1/auth/totp/enrol")
        step = self._totp_step(user.id, pending, code)
        if step is None:
            raise Invalid("invalid_totp", "the authentication code is not valid")
        codes = [recovery_code() for _ in range(RECOVERY_CODES)]
        spend = _spend_step(step)

        def enable(b: UserBody) -> UserBody:
            if b.totp_pending_sealed != pending:
                raise Conflicting("conflict", "the enrolment was started again meanwhile")
            return spend(b).model_copy(
                update={
                    "totp_sealed": pending,
                    "totp_pending_sealed": None,
                    "totp_enabled": True,
                    "recovery_hashes": [hash_secret(c) for c in codes],
                }
            )

        try:
            if ending is None:
                await self.directory.users.update(user.id, enable, audit=_of_written(audit))
                return codes, None
            session = await self._sign_in(
                user.id,
                enable,
                await self.settings(),
                ending=lambda s: s.id == ending,
                audit=audit,
            )
        except _Spent:
            raise Invalid("invalid_totp", "the authentication code is not valid") from None
        return codes, session

    # -- passwords and invites

    async def _checked_hash(self, password: str, *, current: str | None = None) -> str:
        """The hash of a new ``password`` that meets the policy (and is not ``current``)."""
        if password == current:
            raise Invalid("invalid", "the new password is the current one", field="new")
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
        on_lock: LockEvent | None = None,
        *,
        client: str = "",
        audit: AuditOf[Entity[UserBody]] | None = None,
    ) -> Session:
        """Set a new password; every session of the user ends, and a new one answers.
        ``audit``: as :meth:`_sign_in`'s."""
        reset = await self._reauthenticated(user, current, on_lock, client=client)
        try:
            new_hash = await self._checked_hash(new, current=current)
        except Invalid:
            # The current password was right: the attempt's count starts again.
            await self.directory.users.update(user.id, reset)
            raise
        now = self._clock()

        def change(b: UserBody) -> UserBody:
            return reset(b).model_copy(
                update={"password_hash": new_hash, "password_changed_at": now}
            )

        settings = await self.settings()
        return await self._sign_in(user.id, change, settings, ending=lambda _s: True, audit=audit)

    async def accept_invite(
        self, token: str, password: str, *, audit: AuditOf[Entity[UserBody]] | None = None
    ) -> Session:
        """``audit``: as :meth:`_sign_in`'s."""
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

        return await self._sign_in(found.id, accept, await self.settings(), audit=audit)


def _as_is(b: UserBody) -> UserBody:
    return b


class _Spent(Exception):
    """A second factor was spent by another request since it was checked (a code works
    once): the success's transaction is refused, as a wrong code."""


def _spend_step(step: int) -> Callable[[UserBody], UserBody]:
    """Record ``step`` as the last one accepted, so its code works once (RFC 6238 5.2)."""

    def spend(b: UserBody) -> UserBody:
        if b.totp_last_step is not None and step <= b.totp_last_step:
            raise _Spent
        return b.model_copy(update={"totp_last_step": step})

    return spend


def _of_written(
    audit: AuditOf[Entity[UserBody]] | None,
) -> AuditOf[tuple[UserBody, Entity[UserBody]]] | None:
    """``audit`` of the user as written, for an update's (before, after)."""
    return None if audit is None else lambda written: audit(written[1])


LOGINS: web.AppKey[Logins] = web.AppKey("tether_logins", Logins)

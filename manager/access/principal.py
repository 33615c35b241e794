"""Who a request acts for and what they may do: a user through a session, or an API key
acting for its owner.

An API key acts with its owner's permissions: a user's key with the user's groups, narrowed
to the key's own groups when it names any; a service account's key with the groups it names.
A disabled owner disables their keys. Principals are cached for ``ttl`` (1 s) per credential,
so a request costs no store read, and a change on another replica is seen within that.

Session tokens are signed (:class:`SessionTokens`): ``tss_<256 random bits>.<HMAC>``. A token
that was not made here is refused before any store read, so guessing costs the guesser, not
the database; one that was is then looked up by its hash, which is what logout revokes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from manager.access.directory import Directory, SessionBody, UserBody
from manager.access.entities import Entity
from manager.core.identity import Actor
from manager.core.rbac import Grants
from manager.errors import Unauthenticated
from manager.records import ApiKeyRecord
from manager.store.base import Store
from shared.ids import hash_secret

__all__ = [
    "PRINCIPAL_KEY",
    "SESSION_PREFIX",
    "Principal",
    "Principals",
    "SessionTokens",
    "principal_of",
]

# Session tokens say what they are, as API keys ("tak_") and delegate tokens ("tdt_") do.
SESSION_PREFIX = "tss_"
# The signing key, one per install (every replica reads the same), apart from the delegates'.
_KEY_SETTING = "user_session_key"


class SessionTokens:
    """Makes and checks the signature of user session tokens."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._key: bytes | None = None

    async def _signing_key(self) -> bytes:
        if self._key is None:
            value = await self._store.put_setting_if_absent(_KEY_SETTING, secrets.token_hex(32))
            self._key = bytes.fromhex(value)
        return self._key

    @staticmethod
    def _mac(key: bytes, body: str) -> str:
        raw = body.encode("utf-8", "surrogateescape")
        digest = hmac.new(key, b"tether-session:" + raw, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    async def new(self) -> str:
        body = secrets.token_urlsafe(32)
        return f"{SESSION_PREFIX}{body}.{self._mac(await self._signing_key(), body)}"

    async def signed(self, token: str) -> bool:
        body, _, mac = token.removeprefix(SESSION_PREFIX).partition(".")
        if not body or not mac:
            return False
        expected = self._mac(await self._signing_key(), body)
        # As bytes: compare_digest refuses str with non-ASCII characters (a forged header).
        return hmac.compare_digest(mac.encode("utf-8", "surrogateescape"), expected.encode())


@dataclass(frozen=True, slots=True)
class Principal:
    actor: Actor
    grants: Grants
    # The user acted for: the session's user, or the key's owning user (None: a service
    # account, or a key from before users existed).
    user_id: str | None = None
    # The session, for logout; None for an API key.
    session_id: str | None = None
    # A session that may only finish logging in (SessionBody.restricted).
    restricted: str | None = None


PRINCIPAL_KEY: web.RequestKey[Principal] = web.RequestKey("tether_principal", Principal)


def principal_of(request: web.Request) -> Principal:
    found = request.get(PRINCIPAL_KEY)
    if not isinstance(found, Principal):
        raise Unauthenticated("unauthenticated", "log in first (tether login) or send an API key")
    return found


@dataclass(slots=True)
class _Cached:
    principal: Principal
    loaded: float
    expires_at: float


class Principals:
    def __init__(
        self, directory: Directory, *, ttl: float = 1.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.directory = directory
        self.tokens = SessionTokens(directory.store)
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._changed = asyncio.Event()
        # Loads in flight by credential: requests that miss at once share one.
        self._loading: dict[str, asyncio.Future[tuple[Principal, float]]] = {}
        # Bumped by every forget: a load that began before one is not kept (it may have
        # read a group, user or session as it was before the change).
        self._generation = 0

    def forget(self) -> None:
        """Drop every cached principal (a group, user, key or session changed here), and wake
        whoever waits on :meth:`changed` to judge its credential again."""
        self._generation += 1
        self._cache.clear()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def changed(self) -> asyncio.Event:
        """Set at the next change made through this replica."""
        return self._changed

    async def _cached(
        self, key: str, load: Callable[[], Awaitable[tuple[Principal, float]]]
    ) -> Principal:
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and now - hit.loaded < self._ttl and now < hit.expires_at:
            return hit.principal
        loading = self._loading.get(key)
        if loading is not None:
            try:
                return (await asyncio.shield(loading))[0]
            except asyncio.CancelledError:
                if not loading.cancelled():
                    raise  # this request itself was cancelled
            # The request that was loading went away before the answer: load for this one.
            return (await load())[0]
        loading = asyncio.get_running_loop().create_future()
        self._loading[key] = loading
        generation = self._generation
        try:
            principal, expires_at = await load()
        except asyncio.CancelledError:
            loading.cancel()
            raise
        except Exception as exc:  # a refusal (Unauthenticated) or an outage: the waiters' too
            loading.set_exception(exc)
            loading.exception()  # retrieved here: the waiters, if any, get it too
            raise
        finally:
            del self._loading[key]
        loading.set_result((principal, expires_at))
        if generation == self._generation:
            if len(self._cache) > 10_000:  # bounded: evict the lot rather than track ages
                self._cache.clear()
            self._cache[key] = _Cached(principal, now, expires_at)
        return principal

    async def for_api_key(self, record: ApiKeyRecord) -> Principal:
        async def load() -> tuple[Principal, float]:
            actor = Actor("api_key", record.id, record.name)
            d = self.directory
            if record.owner_user_id is None:
                return Principal(actor, await d.grants_of_groups(names=record.groups)), _FOREVER
            user = await d.users.get(record.owner_user_id)
            if user is None or user.body.status != "active":
                raise Unauthenticated(
                    "owner_disabled", f"the API key {record.name!r} belongs to a disabled user"
                )
            ids = user.body.groups
            if record.groups:
                named = set(record.groups)
                ids = [g.id for g in await d.user_groups(user) if g.body.name in named]
            grants = await d.grants_of_groups(ids=ids)
            return Principal(actor, grants, user_id=user.id), _FOREVER

        return await self._cached(f"key:{record.id}", load)

    async def for_session(self, token: str) -> Principal:
        if not await self.tokens.signed(token):
            raise Unauthenticated("invalid_session", "not a session token of this manager")
        token_hash = hash_secret(token)

        async def load() -> tuple[Principal, float]:
            session = await self.directory.sessions.by_key(token_hash)
            if session is None or session.body.expires_at <= self._clock():
                raise Unauthenticated("session_expired", "the session has ended; log in again")
            user = await self.directory.users.get(session.body.user_id)
            if user is None or user.body.status != "active":
                raise Unauthenticated("user_disabled", "this user is disabled")
            return _session_principal(session, user, await self.user_grants(user))

        return await self._cached(f"session:{token_hash}", load)

    async def user_grants(self, user: Entity[UserBody]) -> Grants:
        return await self.directory.grants_of_groups(ids=user.body.groups)


_FOREVER = float("inf")


def _session_principal(
    session: Entity[SessionBody], user: Entity[UserBody], grants: Grants
) -> tuple[Principal, float]:
    actor = Actor("user", user.id, user.body.email)
    principal = Principal(
        actor,
        grants,
        user_id=user.id,
        session_id=session.id,
        restricted=session.body.restricted,
    )
    return principal, session.body.expires_at

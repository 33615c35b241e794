"""Who may reach the user API: the IP allowlist, authentication (sessions and API keys),
per-key rate limits, and the permission each route needs.

Four middlewares, in this order (cheapest first, and each needs what the one before set):

1. **allowlist**: judges the client's address (through trusted proxies) and refuses it with
   403 when the allowlist is on and no enabled entry covers it. Delegate routes and the
   health probes are never judged: the delegate plane has its own credentials, and a load
   balancer's probe must not depend on where it comes from.
2. **authenticate**: the bearer session token (``tss_``, from ``POST /api/v1/auth/login``)
   or API key, refused with 401 when unknown, revoked or expired; it sets the principal
   (manager.access.principal) the request acts for.
3. **rate limit**: the key's token bucket; 429 with ``Retry-After`` when it is empty.
4. **authorize**: the route's permission (manager.api.permissions) against the principal's
   groups; 403 naming the missing permission.

Nothing here reads the database per request. API keys are cached for ``key_ttl`` (1 s), the
allowlist for ``allowlist_ttl`` (2 s). A change made through this replica drops the cached copy
at once; one made through another replica drops it when its notice arrives
(:meth:`Access.heard`), and within the ttl should the notice be lost.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from aiohttp import web

from manager.access.directory import Directory
from manager.access.principal import PRINCIPAL_KEY, SESSION_PREFIX, Principal, Principals
from manager.access.session_signer import bearer
from manager.api.console_cookie import console_credential
from manager.api.context import CTX
from manager.api.http import ApiProblem, Handler, RouteTable, problem_response
from manager.api.identity import ACTOR_KEY, CLIENT_IP_KEY
from manager.api.permissions import permission_of
from manager.core.allowlist import Address, Snapshot
from manager.core.ratelimit import RateLimiter, retry_after_header, throttled_message
from manager.records import ApiKeyRecord
from manager.store.base import ACCESS_SETTINGS, API_KEYS, EVERYTHING, Store, StoreError
from shared.ids import hash_secret

__all__ = [
    "ACCESS",
    "API_KEY",
    "Access",
    "AllowlistCache",
    "KeyCache",
    "KeyStatus",
    "access_middlewares",
    "authenticate_key",
    "caller_address",
    "key_status",
    "recheck",
]

log = structlog.get_logger("tether.access")

# Routes the allowlist never judges: the delegate plane and the health probes.
# ("login" routes, which take a password or an invite instead of a credential, are judged.)
_NOT_JUDGED = frozenset({"none", "delegate", "delegate_token"})


KeyStatus = Literal["active", "expired", "revoked"]

# What a principal is made of (manager.access.principal): a change to any drops them all.
_PRINCIPAL_SOURCES = frozenset({"user", "group", "session", API_KEYS, EVERYTHING})


def key_status(record: ApiKeyRecord, now: float) -> KeyStatus:
    if record.revoked_at is not None:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= now:
        return "expired"
    return "active"


@dataclass(slots=True)
class _Cached:
    record: ApiKeyRecord
    loaded: float


class KeyCache:
    """API keys by hash, each re-read from the store once it is ``ttl`` old.

    Requests with one key that miss at once (its entry just aged out under a hundred
    concurrent clients) share one read. A read that a revocation or a replica's notice
    overtook (:meth:`forget`, :meth:`clear` while it ran) answers its own callers, whose
    requests were concurrent with the change, but is not kept: the next request reads again.
    """

    def __init__(self, store: Store, *, ttl: float, clock: Callable[[], float]) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, _Cached] = {}
        self._reading: dict[str, asyncio.Future[ApiKeyRecord | None]] = {}
        # Bumped by every forget and clear: a read that began before one is not kept.
        self._generation = 0

    async def get(self, key_hash: str) -> ApiKeyRecord | None:
        now = self._clock()
        cached = self._entries.get(key_hash)
        if cached is not None and now - cached.loaded < self._ttl:
            return cached.record
        reading = self._reading.get(key_hash)
        if reading is not None:
            try:
                return await asyncio.shield(reading)
            except asyncio.CancelledError:
                if not reading.cancelled():
                    raise  # this request itself was cancelled
            # The request that was reading went away before the answer: read for this one.
            return await self._store.api_key_by_hash(key_hash)
        reading = asyncio.get_running_loop().create_future()
        self._reading[key_hash] = reading
        generation = self._generation
        try:
            record = await self._store.api_key_by_hash(key_hash)
        except asyncio.CancelledError:
            reading.cancel()
            raise
        except Exception as exc:
            reading.set_exception(exc)
            reading.exception()  # retrieved here: the waiters, if any, get it too
            raise
        finally:
            del self._reading[key_hash]
        reading.set_result(record)
        if record is None:
            # Unknown keys are not remembered: they are random guesses, unbounded in number.
            self._entries.pop(key_hash, None)
        elif generation == self._generation:
            self._entries[key_hash] = _Cached(record, now)
        return record

    def forget(self, key_id: str) -> None:
        self._generation += 1
        for key_hash in [h for h, c in self._entries.items() if c.record.id == key_id]:
            del self._entries[key_hash]

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()


class AllowlistCache:
    """The allowlist's settings and entries, re-read once they are ``ttl`` old."""

    def __init__(self, store: Store, *, ttl: float, clock: Callable[[], float]) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._loaded = -math.inf
        self._lock = asyncio.Lock()

    async def get(self) -> Snapshot:
        if self._snapshot is not None and self._clock() - self._loaded < self._ttl:
            return self._snapshot
        async with self._lock:  # one reload at a time; the others wait for its answer
            if self._snapshot is not None and self._clock() - self._loaded < self._ttl:
                return self._snapshot
            try:
                self._snapshot = await self.load(self._store)
            except StoreError:
                if self._snapshot is None:
                    raise
                # The last known allowlist beats refusing (or admitting) everyone while the
                # database is away; it is tried again after another ttl.
                log.warning("allowlist reload failed; keeping the last one")
            self._loaded = self._clock()
            return self._snapshot

    @staticmethod
    async def load(store: Store) -> Snapshot:
        return Snapshot.of(await store.access_settings(), await store.list_allowlist())

    def invalidate(self) -> None:
        self._loaded = -math.inf


class Access:
    """What the middlewares and the access routes share, one per app."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        key_ttl: float = 1.0,
        allowlist_ttl: float = 2.0,
        last_used_interval: float = 60.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.keys = KeyCache(store, ttl=key_ttl, clock=clock)
        self.allowlist = AllowlistCache(store, ttl=allowlist_ttl, clock=clock)
        self.limiter = RateLimiter()
        self.directory = Directory(store)
        self.principals = Principals(self.directory, ttl=key_ttl, clock=clock)
        # A key's last use is written at most this often (per key, across replicas).
        self.last_used_interval = last_used_interval
        self._touched: dict[str, float] = {}

    def heard(self, what: str) -> None:
        """Another replica committed a change to ``what`` (manager.store.base.AccessStore.
        watch_changes): drop what depends on it here, so it takes effect with the notice
        rather than when the cached copy ages out."""
        if what in (API_KEYS, EVERYTHING):
            self.keys.clear()
        if what in (ACCESS_SETTINGS, EVERYTHING):
            self.allowlist.invalidate()
        if what in _PRINCIPAL_SOURCES:
            self.principals.forget()  # and wakes the streams to judge their credentials again

    def key_revoked(self, key_id: str) -> None:
        self.keys.forget(key_id)
        self.principals.forget()  # and wakes the streams the key opened
        self.limiter.forget(key_id)
        self._touched.pop(key_id, None)

    async def touch(self, record: ApiKeyRecord, now: float) -> None:
        last = max(record.last_used_at or -math.inf, self._touched.get(record.id, -math.inf))
        if now - last < self.last_used_interval:
            return
        self._touched[record.id] = now
        try:
            await self.store.touch_api_key(record.id, now, min_interval=self.last_used_interval)
        except StoreError as exc:
            # Bookkeeping: not worth failing the request that the key was good for.
            log.warning("could not record an API key's last use", key=record.name, error=str(exc))


ACCESS: web.AppKey[Access] = web.AppKey("tether_access", Access)
# The authenticated request's key, for the rate limit (and whoever else needs its settings).
API_KEY: web.RequestKey[ApiKeyRecord] = web.RequestKey("tether_api_key", ApiKeyRecord)


async def authenticate_key(access: Access, key: str) -> tuple[Principal, ApiKeyRecord | None]:
    """The principal a bearer credential acts for (and its API key record), or the 401 that
    refuses it: the middleware's check, and a long stream's re-check."""
    if key.startswith(SESSION_PREFIX):
        return await access.principals.for_session(key), None
    record = await access.keys.get(hash_secret(key))
    if record is None:
        raise ApiProblem(401, "invalid_api_key", "the API key is not valid")
    now = access.clock()
    status = key_status(record, now)
    if status == "revoked":
        raise ApiProblem(401, "api_key_revoked", f"the API key {record.name!r} was revoked")
    if status == "expired":
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.expires_at))
        raise ApiProblem(
            401,
            "api_key_expired",
            f"the API key {record.name!r} expired on {when}; create a new one",
        )
    principal = await access.principals.for_api_key(record)
    await access.touch(record, now)
    return principal, record


async def recheck(request: web.Request, *, console: bool = False) -> Principal:
    """The request's credential judged again now (a long stream outlives its first check):
    the 401 if it was revoked, expired or its user disabled since; else the principal as it
    is now, which the request then acts for. ``console``: a console route's request, whose
    credential is its session cookie (as the middleware took it)."""
    header = request.headers.get("Authorization")
    key = console_credential(request) if console else bearer(header)
    if key is None:  # the middleware let it through, so it had one
        raise ApiProblem(401, "unauthenticated", "the request carries no credential")
    principal, _ = await authenticate_key(request.app[ACCESS], key)
    request[PRINCIPAL_KEY] = principal
    return principal


def caller_address(request: web.Request, snapshot: Snapshot) -> Address | None:
    """The request's client as ``snapshot``'s trusted proxies judge it."""
    return snapshot.client(request.remote, request.headers.getall("X-Forwarded-For", []))


def access_middlewares(table: RouteTable) -> list[Any]:
    """The access guards in the order they run: the allowlist, authentication, the rate
    limit and authorization. One middleware, not one each: a middleware stays suspended for
    as long as its request lasts, and a delegate's stream is a request that lasts for days
    (a coroutine frame per guard per stream, docs/benchmarks.md)."""

    async def allowlist(request: web.Request) -> None:
        if table.auth_for(request) in _NOT_JUDGED:
            return
        snapshot = await request.app[ACCESS].allowlist.get()
        addr = caller_address(request, snapshot)
        if addr is not None:
            request[CLIENT_IP_KEY] = str(addr)
        if not snapshot.allows(addr):
            # The client's own address at most: never the header it sent, nor the entries.
            who = str(addr) if addr is not None else "your address (it could not be told)"
            raise ApiProblem(403, "ip_not_allowed", f"{who} is not in the IP allowlist")

    async def authenticate(request: web.Request) -> None:
        if table.auth_for(request) != "user":
            return
        # A console page is signed in by its cookie alone (the same session token), an API
        # route by its header alone: a cookie the browser adds by itself never reaches the API.
        if table.is_console(request):
            key = console_credential(request)
        else:
            key = bearer(request.headers.get("Authorization"))
        if key is None:
            raise ApiProblem(
                401,
                "unauthenticated",
                "log in (tether login) or send an API key: Authorization: Bearer <key>",
            )
        principal, record = await authenticate_key(request.app[ACCESS], key)
        request[ACTOR_KEY] = principal.actor
        request[PRINCIPAL_KEY] = principal
        if record is not None:
            request[API_KEY] = record

    def rate_limited(request: web.Request) -> web.StreamResponse | None:
        record = request.get(API_KEY)
        if not isinstance(record, ApiKeyRecord):
            return None  # not API-key traffic (delegates, probes)
        access = request.app[ACCESS]
        wait = access.limiter.check(record.id, record.max_qps, record.burst, access.clock())
        if wait <= 0:
            return None
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[CTX].metrics.rate_limited.labels(route).inc()
        response = problem_response(429, "rate_limited", throttled_message(record.max_qps))
        response.headers["Retry-After"] = retry_after_header(wait)
        return response

    def authorize(request: web.Request) -> None:
        route = table.route_for(request)
        if route is None or route.auth != "user":
            return
        principal = request[PRINCIPAL_KEY]
        needed = permission_of(route)
        if principal.restricted is not None and needed != "self":
            what = {
                "totp_enrolment": "enrol in two-factor authentication (tether login enrols you)",
                "totp": "give your two-factor code (POST /api/v1/auth/totp/verify)",
            }.get(principal.restricted, "change your expired password")
            raise ApiProblem(403, f"{principal.restricted}_required", f"first {what}")
        if needed is None:  # manager.api.permissions.check_routes keeps this from happening
            raise ApiProblem(403, "forbidden", "this route has no permission set")
        if needed == "authenticated" or needed == "self":
            return
        if not principal.grants.has(needed):
            raise ApiProblem(403, "forbidden", f"this needs the {needed} permission")

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        await allowlist(request)
        await authenticate(request)
        limited = rate_limited(request)
        if limited is not None:
            return limited
        authorize(request)
        return await handler(request)

    return [guard]

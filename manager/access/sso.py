"""Single sign-on through an OpenID Connect provider (authorization code flow).

Tether's users live in a terminal, so the login is split in three, like a device login:

1. ``start``: the CLI makes a random verifier and sends its SHA-256 with its own name (host,
   user agent); the manager keeps a pending login (state, nonce, the verifier's hash, the
   client's name) and answers the provider's authorize URL;
2. ``callback``: the user's browser comes back from the provider with a code; the manager
   exchanges it (with the client secret, kept as a builtin secret), verifies the ID token
   (signature against the provider's JWKS, issuer, audience, expiry, nonce, a verified
   email), and finds the user *linked* to the identity (issuer, subject), or makes one; the
   page names the client being signed in and its short code, which the CLI prints too;
3. ``poll``: the CLI, with the verifier only it holds (as in PKCE), collects the session once
   the callback is done.

An identity is never joined to an existing user by email alone: that would hand a local
account (an administrator's) to whoever the provider vouches for with that address. A link
is made on purpose (:class:`SsoLink`): by an administrator, or when the provider first makes
the user here. A linked user with local 2FA still gives their code after the provider's
login, unless the provider asserts MFA (``amr``/``acr``, as the settings say).

Pending logins are entities (kind ``sso_login``), so the callback may land on any replica.
SAML (manager.access.saml) and LDAP (manager.access.ldap) each turn a completed external
login into a verified :class:`ExternalIdentity` too, and all three find their user through
manager.access.external (one set of rules) and get their session from
manager.access.login.Logins.external_session.
"""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import aiohttp
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, KeySetSerialization
from pydantic import BaseModel, ConfigDict, Field

from manager.access.directory import Directory, UserBody
from manager.access.entities import Entity, EntityKind, together
from manager.access.external import (
    ExternalIdentity,
    ExternalUsers,
    GroupsEvent,
    JoinEvent,
    SsoError,
    SsoLink,
    UserEvents,
    link_key,
    sso_links,
)
from manager.core.audit_chain import AuditAppend, AuditOf
from manager.records import EntityRecord
from manager.schemas.auth import client_code, verifier_hash
from manager.store.base import EntityWrite, Store
from shared.tls import client_context

__all__ = [
    "ExternalIdentity",
    "GroupsEvent",
    "JoinEvent",
    "LinkEvent",
    "LoginEvents",
    "Oidc",
    "SsoDone",
    "SsoError",
    "SsoLink",
    "SsoLogin",
    "SsoSettings",
    "client_code",
    "sso_links",
    "sso_logins",
    "verifier_hash",
]

# A pending login lives this long: the user has this much time in the browser.
LOGIN_TTL_S = 600.0
# Only RS256 and ES256 ID tokens: never "none", never an HMAC keyed with the client secret.
_ALGORITHMS = ["RS256", "ES256"]
_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)


class SsoSettings(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    enabled: bool = True
    issuer: str = Field(min_length=8, max_length=512, pattern=r"^https://")
    client_id: str = Field(min_length=1, max_length=256)
    # A builtin secret holding the client secret.
    client_secret: str = Field(min_length=1, max_length=256)
    # The manager's callback as the browser reaches it, registered with the provider.
    redirect_url: str = Field(min_length=8, max_length=512, pattern=r"^https?://")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile", "groups"])
    # The claim holding the user's groups at the provider, and which Tether group each means.
    group_claim: str = Field(default="groups", min_length=1, max_length=128)
    group_mapping: dict[str, str] = Field(default_factory=dict, max_length=256)
    # A CA bundle on the manager host to trust for the provider (a private IdP).
    ca_file: str | None = None
    # The provider asserts MFA with one of these in the ID token's ``amr`` (RFC 8176), or
    # its ``acr`` is one of mfa_acr: a linked user's local 2FA is then not asked again.
    mfa_amr: list[str] = Field(default_factory=lambda: ["mfa", "otp", "hwk"], max_length=32)
    mfa_acr: list[str] = Field(default_factory=list, max_length=32)


class SsoLogin(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")

    state: str
    nonce: str
    # verifier_hash() of the verifier the starting client keeps: only it can collect.
    verifier_hash: str
    # What the starting client says it is (host, user agent): shown in the browser.
    client_name: str = ""
    expires_at: float
    user_id: str | None = None
    # The provider asserted MFA for this login (SsoSettings.mfa_amr, mfa_acr).
    mfa: bool = False
    # Set when a signed-in user started this to link their identity at the provider to
    # themselves (Oidc.start_link): the callback links, and the poll answers no session.
    link_user_id: str | None = None
    error: str | None = None
    # A sign-in (not a link) waits for the person in the browser to approve the client it
    # names: a login started by someone else and sent as a link gets no session unless the
    # victim, shown the other client's name and code, approves it. Only the hash of the
    # approval secret (given to that browser page alone) is kept.
    approval_hash: str | None = None
    approved: bool = False


@dataclass(frozen=True, slots=True)
class SsoDone:
    """A collected login: its user, and whether the provider asserted MFA."""

    user: Entity[UserBody]
    mfa: bool
    # The login linked the identity to the user (a link flow): no session is made.
    linked: bool = False
    # The pending login, for the session it gives to collect (:meth:`Oidc.collect`).
    login: Entity[SsoLogin] | None = None


# The event of a link a signed-in user asked for (the user, the pending login that asked),
# chained with the link.
LinkEvent = Callable[[Entity[UserBody], SsoLogin], AuditAppend | None]


@dataclass(frozen=True, slots=True)
class LoginEvents:
    """The events of what the browser's callback writes, each chained with its change."""

    link: LinkEvent | None = None
    join: JoinEvent | None = None
    groups: GroupsEvent | None = None


def sso_logins(store: Store) -> EntityKind[SsoLogin]:
    """Pending SSO logins, by state."""
    return EntityKind(store, "sso_login", SsoLogin, lambda b: b.state, "sso")


class Oidc:
    def __init__(
        self,
        store: Store,
        directory: Directory,
        client_secret: Callable[[str], Any],
        *,
        domain_allowed: Callable[[str], Awaitable[bool]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._directory = directory
        self._client_secret = client_secret  # async (secret name) -> bytes
        self._clock = clock
        self.settings = EntityKind(store, "sso_settings", SsoSettings, lambda _b: "oidc", "sso")
        self.logins = sso_logins(store)
        self.users = ExternalUsers(store, directory, domain_allowed=domain_allowed, clock=clock)
        self.links = self.users.links

    async def configured(self) -> SsoSettings:
        found = await self.settings.get("oidc")
        if found is None or not found.body.enabled:
            raise SsoError("single sign-on is not configured")
        return found.body

    async def save_settings(
        self,
        body: SsoSettings,
        *,
        audit: AuditOf[tuple[SsoSettings | None, Entity[SsoSettings]]] | None = None,
    ) -> SsoSettings | None:
        """Store ``body``; the settings before (None the first time). ``audit``: as
        :meth:`EntityKind.put`'s."""
        return await self.settings.put("oidc", body, audit=audit)

    # -- 1. start

    async def start(
        self, hashed_verifier: str, client_name: str, *, link_user_id: str | None = None
    ) -> tuple[str, str, float]:
        """(authorize URL, state, expiry) of a new pending login, collected by whoever
        holds the verifier of ``hashed_verifier``; with ``link_user_id``, a login that links
        the identity to that user rather than signing anyone in."""
        settings = await self.configured()
        meta = await self._metadata(settings)
        state, nonce = (secrets.token_urlsafe(32) for _ in range(2))
        expires = await self.pend(
            state, nonce, hashed_verifier, client_name, link_user_id=link_user_id
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": settings.client_id,
                "redirect_uri": settings.redirect_url,
                "scope": " ".join(settings.scopes),
                "state": state,
                "nonce": nonce,
            }
        )
        return f"{meta['authorization_endpoint']}?{query}", state, expires

    async def pend(
        self,
        state: str,
        nonce: str,
        hashed_verifier: str,
        client_name: str,
        *,
        link_user_id: str | None = None,
    ) -> float:
        """Record a pending login (any provider's: SAML keeps its AuthnRequest ID as the
        nonce); answers its expiry."""
        expires = self._clock() + LOGIN_TTL_S
        await self.logins.insert(
            SsoLogin(
                state=state,
                nonce=nonce,
                verifier_hash=hashed_verifier,
                client_name=client_name,
                expires_at=expires,
                link_user_id=link_user_id,
            )
        )
        return expires

    # -- 2. callback

    async def callback(
        self,
        state: str,
        code: str | None,
        error: str | None,
        *,
        events: LoginEvents | None = None,
    ) -> tuple[UserBody, SsoLogin]:
        """Finish the browser's half: the user signed in, and the pending login (which names
        the client it is for). SsoError says why not. ``events``: those of the link the user
        asked for, of a user made at their first login, of groups synced from the claim;
        each chained in its change's transaction (when one cannot be written, the change is
        not made and the StoreError says so)."""
        login = await self.logins.by_key(state)
        if login is None or login.body.expires_at <= self._clock():
            raise SsoError("this login is unknown or has expired; run `tether login --sso` again")
        if login.body.user_id is not None or login.body.error is not None:
            raise SsoError("this login was already completed")
        try:
            user, mfa = await self._complete(code, error, login.body, events or LoginEvents())
        except SsoError as exc:
            await self.finish(login, error=str(exc))
            raise
        await self.finish(login, user_id=user.id, mfa=mfa)
        return user.body, login.body

    async def offer_approval(self, state: str) -> str:
        """The secret the browser page that finished ``state``'s sign-in shows in its form:
        presenting it back (:meth:`decide`) is what lets the starting client collect."""
        token = secrets.token_urlsafe(32)
        login = await self.logins.by_key(state)
        if login is None:
            raise SsoError("this login is unknown or has expired; run `tether login --sso` again")
        await self.logins.update(
            login.id, lambda b: b.model_copy(update={"approval_hash": verifier_hash(token)})
        )
        return token

    async def decide(self, state: str, token: str, approve: bool) -> SsoLogin:
        """The person in the browser approves or refuses the client the page named."""
        login = await self.logins.by_key(state)
        wanted = None if login is None else login.body.approval_hash
        if login is None or wanted is None or login.body.user_id is None:
            raise SsoError("this sign-in is unknown, expired, or not waiting for approval")
        if not secrets.compare_digest(wanted, verifier_hash(token)):
            raise SsoError("this sign-in is unknown, expired, or not waiting for approval")
        if login.body.expires_at <= self._clock():
            raise SsoError("the login expired before it was approved")
        update: dict[str, object] = {"approval_hash": None}
        if approve:
            update["approved"] = True
        else:
            update["error"] = "the sign-in was refused in the browser"
        await self.logins.update(login.id, lambda b: b.model_copy(update=update))
        return login.body

    async def _complete(
        self, code: str | None, error: str | None, login: SsoLogin, events: LoginEvents
    ) -> tuple[Entity[UserBody], bool]:
        if error is not None:
            raise SsoError(f"the identity provider refused the login: {error[:200]}")
        if not code:
            raise SsoError("the identity provider sent no code")
        identity = await self._verify(await self.configured(), code, login.nonce)
        if login.link_user_id is not None:
            user = await self._link_self(identity, login, events.link)
            return user, identity.mfa
        join = UserEvents(join=events.join, groups=events.groups)
        settings = await self.configured()
        return await self.users.user_for(identity, settings.group_mapping, join), identity.mfa

    async def _link_self(
        self, identity: ExternalIdentity, login: SsoLogin, on_link: LinkEvent | None
    ) -> Entity[UserBody]:
        user = await self._directory.users.get(login.link_user_id or "")
        if user is None or user.body.status != "active":
            raise SsoError("the user who asked for this link is gone or disabled")
        if await self.links.by_key(link_key(identity.issuer, identity.subject)) is not None:
            raise SsoError("this identity at the provider is linked to a user already")
        event = None if on_link is None else lambda _link: on_link(user, login)
        await self.users.link(identity, user.id, "user", audit=event)
        return user

    async def finish(
        self,
        login: Entity[SsoLogin],
        *,
        user_id: str | None = None,
        mfa: bool = False,
        error: str | None = None,
    ) -> None:
        def done(body: SsoLogin) -> SsoLogin:
            return body.model_copy(update={"user_id": user_id, "mfa": mfa, "error": error})

        await self.logins.update(login.id, done)

    async def _verify(self, settings: SsoSettings, code: str, nonce: str) -> ExternalIdentity:
        meta = await self._metadata(settings)
        try:
            secret = (await self._client_secret(settings.client_secret)).decode()
        except ValueError as exc:
            raise SsoError(f"the SSO client secret cannot be read: {exc}") from None
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": settings.redirect_url,
            "client_id": settings.client_id,
            "client_secret": secret,
        }
        tokens = await self._post(settings, str(meta["token_endpoint"]), form)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise SsoError("the identity provider answered without an ID token")
        jwks = await self._get(settings, str(meta["jwks_uri"]))
        try:
            keys = KeySet.import_key_set(cast("KeySetSerialization", jwks))
            token = jwt.decode(id_token, keys, algorithms=_ALGORITHMS)
            jwt.JWTClaimsRegistry(
                now=int(self._clock()),
                leeway=60,
                iss={"essential": True, "value": settings.issuer},
                aud={"essential": True, "value": settings.client_id},
                exp={"essential": True},
                nonce={"essential": True, "value": nonce},
            ).validate(token.claims)
        except JoseError as exc:
            raise SsoError(f"the ID token was refused: {exc.error}") from None
        except (ValueError, TypeError, KeyError):
            raise SsoError("the ID token could not be read") from None
        claims = token.claims
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise SsoError("the ID token carries no subject (sub)")
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise SsoError("the ID token carries no email address")
        # Absent counts as not verified: an address nobody proved is not an identity.
        if claims.get("email_verified") is not True:
            raise SsoError(
                f"the identity provider has not verified {email.lower()}"
                " (email_verified is not true in the ID token)"
            )
        raw_groups = claims.get(settings.group_claim) or []
        groups = tuple(str(g) for g in raw_groups) if isinstance(raw_groups, list) else ()
        name = claims.get("name")
        return ExternalIdentity(
            settings.issuer,
            subject,
            email.lower(),
            name if isinstance(name, str) else "",
            groups,
            mfa=_asserts_mfa(claims, settings),
        )

    async def link(
        self, issuer: str, subject: str, user_id: str, *, audit: AuditOf[SsoLink] | None = None
    ) -> SsoLink:
        """An administrator links (issuer, subject) to ``user_id``; Conflict when the
        identity is linked already (to anyone: unlink first). ``audit``: its event, of the
        link as written, in the insert's transaction."""
        body = SsoLink(
            issuer=issuer, subject=subject, user_id=user_id, made_by="admin", made_at=self._clock()
        )
        await self.links.insert(
            body, audit=None if audit is None else lambda written: audit(written.body)
        )
        return body

    async def unlink(
        self, user_id: str, *, audit: AuditOf[list[SsoLink]] | None = None
    ) -> list[SsoLink]:
        """Every link of ``user_id`` removed, in one transaction with ``audit``'s event (of
        the links removed; none removed, none written); answers them."""
        gone: list[SsoLink] = []

        async def plan() -> list[EntityWrite]:
            theirs = [link for link in await self.links.list() if link.body.user_id == user_id]
            return [self.links.deleted(link, any_version=True) for link in theirs]

        def event(written: list[EntityRecord | None]) -> AuditAppend | None:
            gone[:] = [self.links.parse(r).body for r in written if r is not None]
            return None if audit is None or not gone else audit(gone)

        await together(self._store, plan, audit=event)
        return gone

    # -- 3. poll

    async def poll(self, state: str, verifier: str) -> SsoDone | None:
        """The signed-in user once the callback is done (the caller makes the session:
        manager.access.login.Logins.session); None while it is not. Only the client that
        started the login holds ``verifier``."""
        login = await self.logins.by_key(state)
        wanted = "" if login is None else login.body.verifier_hash
        if login is None or not secrets.compare_digest(wanted, verifier_hash(verifier)):
            raise SsoError("no such login")
        if login.body.error is not None:
            await self.logins.delete(login.id)
            raise SsoError(login.body.error)
        waiting = login.body.link_user_id is None and not login.body.approved
        if login.body.user_id is None or waiting:
            if login.body.expires_at <= self._clock():
                await self.logins.delete(login.id)
                raise SsoError("the login expired before it was completed")
            return None
        user = await self._directory.users.get(login.body.user_id)
        active = user is not None and user.body.status == "active"
        if user is None or not active or login.body.link_user_id is not None:
            # Collected once: the pending login goes, so its poll secret cannot be replayed.
            if not await self.logins.delete(login.id):
                raise SsoError("no such login")
            if user is None or not active:
                raise SsoError("this user is disabled")
            return SsoDone(user, login.body.mfa, linked=True)
        # A sign-in: the pending login goes with the session it gives (:meth:`collect`).
        return SsoDone(user, login.body.mfa, login=login)

    async def collect(self, login: Entity[SsoLogin]) -> list[EntityWrite]:
        """The end of a polled sign-in's pending login, written in its session's transaction:
        collected once (its poll secret cannot be replayed), and never gone without the
        session it gave. SsoError when another poll collected it meanwhile."""
        current = await self.logins.get(login.id)
        if current is None:
            raise SsoError("no such login")
        return [self.logins.deleted(current)]

    # -- HTTP to the provider

    def _ssl(self, settings: SsoSettings) -> ssl.SSLContext:
        try:
            return client_context(Path(settings.ca_file) if settings.ca_file else None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or type(exc).__name__
            raise SsoError(
                f"ca_file: the SSO setting's CA bundle {settings.ca_file!r} cannot be used: {why}"
            ) from None

    async def _metadata(self, settings: SsoSettings) -> dict[str, Any]:
        url = settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        meta = await self._get(settings, url)
        for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(meta.get(field), str):
                raise SsoError(f"the identity provider's metadata has no {field}", 502)
        return meta

    async def _get(self, settings: SsoSettings, url: str) -> dict[str, Any]:
        return await self._request(settings, "GET", url, None)

    async def _post(self, settings: SsoSettings, url: str, form: dict[str, str]) -> dict[str, Any]:
        return await self._request(settings, "POST", url, form)

    async def _request(
        self, settings: SsoSettings, method: str, url: str, form: dict[str, str] | None
    ) -> dict[str, Any]:
        context = self._ssl(settings)
        try:
            async with (
                aiohttp.ClientSession(timeout=_HTTP_TIMEOUT) as http,
                http.request(method, url, data=form, ssl=context) as resp,
            ):
                if resp.status != 200:
                    raise SsoError(f"the identity provider answered {resp.status} at {url}", 502)
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            why = type(exc).__name__
            raise SsoError(
                f"the identity provider could not be reached at {url} (setting issuer): {why}",
                502,
            ) from None
        if not isinstance(data, dict):
            raise SsoError(
                f"the identity provider answered something other than JSON at {url}", 502
            )
        return data


def _asserts_mfa(claims: dict[str, Any], settings: SsoSettings) -> bool:
    amr = claims.get("amr")
    methods = {str(m) for m in amr} if isinstance(amr, list) else set()
    acr = claims.get("acr")
    return bool(methods & set(settings.mfa_amr)) or (
        isinstance(acr, str) and acr in settings.mfa_acr
    )

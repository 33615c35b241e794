"""The one path from a verified external identity to a user here, shared by every way in
that is not a local password: OpenID Connect (manager.access.sso), SAML (manager.access.saml)
and LDAP (manager.access.ldap).

Each of those proves an :class:`ExternalIdentity` (issuer, subject, email, groups, whether
the provider asserted MFA) in its own way; :meth:`ExternalUsers.user_for` then applies the
same rules to all of them:

- the identity is found through a *link* (issuer, subject) -> user, never by email alone:
  a local account (an administrator's) is never handed to whoever a provider vouches for
  with its address. A user is made (and linked) at an identity's first login only when no
  user has its email, and its email domain is allowed;
- a user made that way (``source="sso"``) has its groups set from the provider's groups
  through the provider's mapping at every login;
- a disabled user is refused.

The session then comes from :meth:`manager.access.login.Logins.external_session`, which
keeps a user's local 2FA unless the provider asserted MFA.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from manager.access.directory import Directory, UserBody
from manager.access.entities import Entity, EntityKind, together
from manager.core.audit_chain import AuditAppend, AuditOf
from manager.records import EntityRecord
from manager.store.base import Conflict, EntityWrite, Store

__all__ = [
    "ExternalIdentity",
    "ExternalUsers",
    "GroupsEvent",
    "JoinEvent",
    "SsoError",
    "SsoLink",
    "UserEvents",
    "link_key",
    "sso_links",
]


class SsoError(Exception):
    """Why an external login failed, in words fit for the user (never a token or a secret);
    ``status`` 502 when the provider could not be reached or made sense of."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    """A verified login at an identity provider (OIDC issuer, SAML IdP, LDAP directory)."""

    issuer: str
    subject: str
    email: str
    name: str
    groups: tuple[str, ...]
    mfa: bool = False


MadeBy = Literal["sso", "admin", "user", "migration", "scim"]


class SsoLink(BaseModel):
    """An identity at a provider, joined to a user on purpose."""

    model_config = ConfigDict(defer_build=True, extra="ignore")

    issuer: str
    subject: str
    user_id: str
    # Who made it: "sso" (the user was made by their first external login), "admin",
    # "user" (the user, signed in with their password), "migration" (an SSO-made user from
    # before links, joined to its identity at its next login), or "scim" (the user was
    # provisioned by a SCIM token bound to that issuer).
    made_by: MadeBy
    made_at: float


def link_key(issuer: str, subject: str) -> str:
    return f"{issuer} {subject}"  # an issuer is a URL or an entity id: it holds no space


def sso_links(store: Store) -> EntityKind[SsoLink]:
    """Identities joined to users, by (issuer, subject)."""
    return EntityKind(store, "sso_link", SsoLink, lambda b: link_key(b.issuer, b.subject), "ssl")


# The event of a user made at their first external login (the user and their link as
# written), chained with both.
JoinEvent = Callable[[Entity[UserBody], SsoLink], AuditAppend | None]
# The event of an external user's groups set from the provider's groups at a login (the
# body before, the user as written), chained with the update; made only when they changed.
GroupsEvent = Callable[[UserBody, Entity[UserBody]], AuditAppend | None]


@dataclass(frozen=True, slots=True)
class UserEvents:
    """The events of what finding the user writes, each chained with its change."""

    join: JoinEvent | None = None
    groups: GroupsEvent | None = None


class ExternalUsers:
    def __init__(
        self,
        store: Store,
        directory: Directory,
        *,
        domain_allowed: Callable[[str], Awaitable[bool]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._directory = directory
        # The account's allowed email domains, for users made at their first login.
        self._domain_allowed = domain_allowed
        self._clock = clock
        self.links = sso_links(store)

    async def linked(self, issuer: str, subject: str) -> Entity[UserBody] | None:
        """The user linked to (issuer, subject), if any (for a lockout claimed before the
        provider is asked: manager.access.ldap)."""
        link = await self.links.by_key(link_key(issuer, subject))
        return None if link is None else await self._directory.users.get(link.body.user_id)

    async def user_for(
        self,
        identity: ExternalIdentity,
        group_mapping: Mapping[str, str],
        events: UserEvents | None = None,
    ) -> Entity[UserBody]:
        """The user of ``identity``, made on first login; an external user's groups follow
        the provider's groups through ``group_mapping`` (provider group -> Tether group
        name) at every login. SsoError when the identity may not sign in."""
        events = events or UserEvents()
        by_name = {g.body.name: g.id for g in await self._directory.groups.list()}
        mapped = sorted(
            {
                by_name[group_mapping[g]]
                for g in identity.groups
                if g in group_mapping and group_mapping[g] in by_name
            }
        )
        user = await self._linked_user(identity, mapped, events.join)
        if user.body.status != "active":
            raise SsoError("this user is disabled")

        def sync(body: UserBody) -> UserBody:
            update: dict[str, Any] = {"last_login_at": self._clock()}
            if body.source == "sso":
                update["groups"] = mapped
            return body.model_copy(update=update)

        on_groups = events.groups

        def synced(written: tuple[UserBody, Entity[UserBody]]) -> AuditAppend | None:
            # The login time alone is no change to record.
            before, after = written
            if on_groups is None or before.groups == after.body.groups:
                return None
            return on_groups(before, after)

        _, after = await self._directory.users.update(user.id, sync, audit=synced)
        return after

    async def _linked_user(
        self, identity: ExternalIdentity, groups: list[str], on_join: JoinEvent | None
    ) -> Entity[UserBody]:
        """The user linked to ``identity``; made (and linked) at its first login when no
        user has its email. A user of that email who is not linked to it is refused."""
        key = link_key(identity.issuer, identity.subject)
        link = await self.links.by_key(key)
        if link is not None:
            linked = await self._directory.users.get(link.body.user_id)
            if linked is None:
                raise SsoError("the user linked to this identity no longer exists")
            return linked
        user = await self._directory.users.by_key(identity.email)
        if user is None:
            allowed = self._domain_allowed is None or await self._domain_allowed(identity.email)
            if not allowed:
                raise SsoError(f"{identity.email}: this email domain may not join this account")
            return await self._join(identity, groups, on_join)
        if user.body.source == "sso" and not await self._has_link(user.id):
            # Made by SSO before links existed: joined to the identity it logs in with now.
            await self.link(identity, user.id, "migration")
            return user
        raise SsoError(
            f"{identity.email} is a user here, not linked to this sign-in: log in with"
            " your password and ask an administrator to link it (tether user sso-link)"
        )

    async def _join(
        self, identity: ExternalIdentity, groups: list[str], on_join: JoinEvent | None
    ) -> Entity[UserBody]:
        """A user made at their first login, with their groups from the provider and their
        link, in one transaction with ``on_join``'s event: all of it or none."""
        body = UserBody(
            email=identity.email, name=identity.name, status="active", source="sso", groups=groups
        )
        new_user = self._directory.users.inserted(body)
        new_link = self.links.inserted(
            SsoLink(
                issuer=identity.issuer,
                subject=identity.subject,
                user_id=new_user.record.id,
                made_by="sso",
                made_at=self._clock(),
            )
        )

        async def plan() -> list[EntityWrite]:
            return [new_user, new_link]

        def event(written: list[EntityRecord | None]) -> AuditAppend | None:
            user, link = written
            if on_join is None or user is None or link is None:
                return None
            return on_join(self._directory.users.parse(user), self.links.parse(link).body)

        try:
            await together(self._store, plan, audit=event)
        except Conflict:  # two first logins at once: one makes it
            raise SsoError("the user is being made by another login; try again") from None
        user = await self._directory.users.get(new_user.record.id)
        if user is None:
            raise SsoError("the user made at this login is gone; try again")
        return user

    async def _has_link(self, user_id: str) -> bool:
        return any(link.body.user_id == user_id for link in await self.links.list())

    async def link(
        self,
        identity: ExternalIdentity,
        user_id: str,
        made_by: MadeBy,
        *,
        audit: AuditOf[SsoLink] | None = None,
    ) -> None:
        body = SsoLink(
            issuer=identity.issuer,
            subject=identity.subject,
            user_id=user_id,
            made_by=made_by,
            made_at=self._clock(),
        )
        try:
            await self.links.insert(
                body, audit=None if audit is None else lambda written: audit(written.body)
            )
        except Conflict:
            raise SsoError("this identity was linked meanwhile; try again") from None

"""Who and what access control talks about: users, user groups, applications and their
environments, and sessions, as stored entities (manager.access.entities).

Membership is kept on the user (its group ids): a user's groups are read with the user, which
is what every request needs. A group's members are found by scanning users, which only the
group pages need.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from manager.access.entities import Entity, EntityKind, Gone, together
from manager.core.audit_chain import AuditAppend, AuditOf
from manager.core.rbac import Grants
from manager.records import EntityRecord
from manager.schemas.grants import (
    ACCOUNT_PERMISSIONS,
    ACTIONS,
    ADMIN_GROUP,
    AccountPermission,
    AppGrant,
    EnvType,
    Target,
)
from manager.store.base import Conflict, EntityWrite, Store

__all__ = [
    "ADMIN_GROUP_ID",
    "AppBody",
    "Directory",
    "EnvBody",
    "GroupBody",
    "SessionBody",
    "UserBody",
    "UserStatus",
]

ADMIN_GROUP_ID = "grp_admins"

UserStatus = Literal["invited", "active", "disabled"]


class _Body(BaseModel):
    # Stored documents may gain fields in later versions; older managers ignore them.
    model_config = ConfigDict(defer_build=True, extra="ignore")


class GroupBody(_Body):
    name: str
    description: str = ""
    account_permissions: list[AccountPermission] = Field(default_factory=list)
    app_permissions: list[AppGrant] = Field(default_factory=list)


class NetworkFailures(_Body):
    """Failed logins from one client network (manager.access.lockout)."""

    count: int = 0
    # The first failure of the current window.
    since: float = 0.0
    locked_until: float | None = None


class UserBody(_Body):
    email: str
    name: str = ""
    status: UserStatus = "invited"
    groups: list[str] = Field(default_factory=list)  # group ids
    password_hash: str | None = None
    password_changed_at: float | None = None
    # Failed logins from everywhere in the window from failed_since, and the lock they set
    # (for every network); per network below (manager.access.lockout).
    failed_logins: int = 0
    failed_since: float | None = None
    locked_until: float | None = None
    network_failures: dict[str, NetworkFailures] = Field(default_factory=dict)
    invite_hash: str | None = None
    invite_expires_at: float | None = None
    # The TOTP secret, sealed with the manager's key (manager.vault); set once enrolled.
    totp_sealed: str | None = None
    totp_enabled: bool = False
    # A secret shown at enrolment, sealed likewise, until a code from it confirms it.
    totp_pending_sealed: str | None = None
    # The last 30-second step a code was accepted for: a code works once (RFC 6238 5.2).
    totp_last_step: int | None = None
    recovery_hashes: list[str] = Field(default_factory=list)
    last_login_at: float | None = None
    # "sso" users have no password; their groups follow the identity provider's claim.
    # "scim" users are provisioned by a SCIM client (manager.access.scim), which sets their
    # status and groups; they sign in through a provider.
    source: Literal["local", "sso", "scim"] = "local"


class AppBody(_Body):
    name: str
    description: str = ""


class EnvBody(_Body):
    app_id: str
    name: str
    type: EnvType
    # Only delegates whose token is scoped to this environment (or its application) run its
    # tasks (manager.core.eligibility).
    dedicated_delegates: bool = False


class SessionBody(_Body):
    token_hash: str
    user_id: str
    expires_at: float
    # Until the user enrols in 2FA (when the account enforces it), or changes an expired
    # password, a session may do only that.
    restricted: Literal["totp_enrolment", "password_change", "totp"] | None = None


class Directory:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.groups = EntityKind(store, "group", GroupBody, lambda b: b.name, "grp")
        self.users = EntityKind(store, "user", UserBody, lambda b: b.email, "usr")
        self.apps = EntityKind(store, "app", AppBody, lambda b: b.name, "app")
        self.envs = EntityKind(store, "env", EnvBody, lambda b: f"{b.app_id}/{b.name}", "env")
        self.sessions = EntityKind(store, "session", SessionBody, lambda b: b.token_hash, "ses")

    async def ensure_admin_group(self) -> None:
        """The group that holds every permission, made at first start (idempotent)."""
        if await self.groups.get(ADMIN_GROUP_ID) is not None:
            return
        body = GroupBody(
            name=ADMIN_GROUP,
            description="every account permission, every action on every application",
            account_permissions=list(ACCOUNT_PERMISSIONS),
            app_permissions=[AppGrant(actions=ACTIONS)],
        )
        with contextlib.suppress(Conflict):  # another replica made it first
            await self.groups.insert(body, entity_id=ADMIN_GROUP_ID)

    async def delete_group(
        self, group_id: str, *, audit: AuditOf[tuple[Entity[GroupBody], list[str]]]
    ) -> None:
        """Its members leave it and it goes, in one transaction with ``audit``'s event (of
        the group as deleted, and its members' emails): no user is left naming a group that
        is gone, and no outage keeps the deletion but not its event. :class:`Gone` when
        there is no such group."""
        emails: list[str] = []

        async def plan() -> list[EntityWrite]:
            current = await self.groups.get(group_id)
            if current is None:
                raise Gone(f"group {group_id} does not exist")
            members = [u for u in await self.users.list() if group_id in u.body.groups]
            emails[:] = [u.body.email for u in members]
            leave = [
                self.users.updated(u, u.body.model_copy(update={"groups": _without(u, group_id)}))
                for u in members
            ]
            return [*leave, self.groups.deleted(current)]

        def event(written: list[EntityRecord | None]) -> AuditAppend | None:
            record = written[-1]
            assert record is not None  # a delete that missed writes nothing
            return audit((self.groups.parse(record), list(emails)))

        await together(self.store, plan, audit=event)

    async def grants_of_groups(self, ids: Iterable[str] = (), names: Iterable[str] = ()) -> Grants:
        """The union of the named groups' permissions; unknown groups add nothing."""
        wanted_ids, wanted_names = set(ids), set(names)
        groups = [
            g for g in await self.groups.list() if g.id in wanted_ids or g.body.name in wanted_names
        ]
        # The administrators' permissions are built in (no one may edit them): every account
        # permission this release knows, so one added by an upgrade reaches a group made by an
        # earlier release at its first start.
        return Grants.union(
            (
                list(ACCOUNT_PERMISSIONS) if g.id == ADMIN_GROUP_ID else g.body.account_permissions,
                g.body.app_permissions,
            )
            for g in groups
        )

    async def target(self, app: str, env: str) -> Target | None:
        """The environment ``env`` of application ``app`` (names or ids), or None."""
        found = await self.apps.get(app) or await self.apps.by_key(app)
        if found is None:
            return None
        e = await self.envs.get(env) or await self.envs.by_key(f"{found.id}/{env}")
        if e is None or e.body.app_id != found.id:
            return None
        return Target(found.id, e.id, e.body.type)

    async def user_groups(self, user: Entity[UserBody]) -> list[Entity[GroupBody]]:
        wanted = set(user.body.groups)
        return [g for g in await self.groups.list() if g.id in wanted]

    @staticmethod
    def now() -> float:
        return time.time()


def _without(user: Entity[UserBody], group_id: str) -> list[str]:
    return [g for g in user.body.groups if g != group_id]

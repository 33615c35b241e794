"""SCIM 2.0 provisioning (RFC 7643/7644): an identity provider creates, updates, deactivates
and deletes users and groups here, authenticated by a dedicated SCIM token.

What a SCIM client may touch is only what it made: the users and groups that have a SCIM
record here (kinds ``scim_user`` and ``scim_group``). A local user, an SSO-made one, or the
administrators' group is invisible to it, so a stolen SCIM token cannot disable an
administrator or join anyone to a group that holds permissions it did not get from an
administrator. A group SCIM makes holds no permission until an administrator grants it.

Each SCIM resource keeps the document the client sent (validated with scim2-models), and
projects it on a Tether user or group:

- a User's email is its primary (else first) email, else its userName when that is an
  address, else a placeholder ``<userName>-<hash>@scim.invalid``; its name is displayName,
  else name.formatted; ``active: false`` disables the user,
  ends their sessions in the same transaction, and their API keys stop at once (the
  principal cache is dropped: manager.access.principal refuses a disabled owner's key);
- a Group is a Tether group of its displayName; its members are users SCIM made;
- a DELETE of a User disables the Tether user (kept for the audit trail) and removes its
  SCIM record and link; a DELETE of a Group removes the group.

A token may name an ``issuer`` (an SSO provider's issuer or entity id, an LDAP URL): the
users it makes are then linked to (issuer, userName), so they sign in through that provider
(manager.access.external) without any linking by email.

Only the token's SHA-256 is stored; the token is shown once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scim2_models import Context, Group, Meta, PatchOp, ScimFilter, User
from scim2_models.exceptions import SCIMException

from manager.access.directory import Directory, GroupBody, UserBody
from manager.access.entities import Entity, EntityKind, together
from manager.access.external import SsoLink, link_key, sso_links
from manager.access.principal import Principals
from manager.core.audit_chain import AuditAppend, AuditOf
from manager.records import EntityRecord
from manager.store.base import EntityWrite
from shared.ids import hash_secret

__all__ = [
    "SCIM_TOKEN_PREFIX",
    "Scim",
    "ScimError",
    "ScimGroupBody",
    "ScimTokenBody",
    "ScimUserBody",
    "Written",
]

SCIM_TOKEN_PREFIX = "tsc_"  # noqa: S105 (a prefix that tells the kind of token, no secret)
MAX_RESULTS = 200

if TYPE_CHECKING:
    AnyUser = User[Any]
else:
    AnyUser = User


class ScimError(Exception):
    """A SCIM error (RFC 7644 3.12): its HTTP status, scimType and detail."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type


class ScimTokenBody(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")

    name: str
    token_hash: str
    # The provider its users sign in through (their link's issuer); None: no link is made.
    issuer: str | None = None
    created_at: float
    created_by: str = ""


class ScimUserBody(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")

    user_id: str
    user_name: str
    # The User document as the client last set it (no id, no meta).
    document: dict[str, Any] = Field(default_factory=dict)
    issuer: str | None = None
    created_at: float
    updated_at: float
    version: int = 1


class ScimGroupBody(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")

    group_id: str
    display_name: str
    document: dict[str, Any] = Field(default_factory=dict)
    created_at: float
    updated_at: float
    version: int = 1


@dataclass(frozen=True, slots=True)
class Written:
    """What a SCIM write changed, for its audit event: the resource type ("user"/"group"),
    its SCIM id, a name, the action, and the views before and after (no secret: none)."""

    kind: str
    scim_id: str
    name: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def _err(exc: ValidationError | SCIMException) -> ScimError:
    if isinstance(exc, SCIMException):
        return ScimError(400, exc.detail or "the request is not valid", exc.scim_type)
    err = exc.errors(include_input=False, include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(body)"
    ctx = err.get("ctx") or {}
    inner = ctx.get("error") if isinstance(ctx, dict) else None
    scim_type = getattr(inner, "scim_type", None) or "invalidValue"
    return ScimError(400, f"{loc}: {err['msg']}", scim_type)


def _email_of(user: AnyUser) -> str:
    """The Tether user's email: the primary (else first) email, else userName when it is an
    address, else a placeholder under the reserved ``.invalid`` domain (RFC 2606) made from
    userName: Tether keys users by email, sends no mail, and such a user signs in through
    their provider's link, never by that address."""
    emails = [e for e in user.emails or [] if e.value]
    primary = next((e for e in emails if e.primary), emails[0] if emails else None)
    if primary is not None and "@" in str(primary.value):
        return str(primary.value).strip().lower()
    name = str(user.user_name or "").strip().lower()
    if "@" in name:
        return name
    safe = re.sub(r"[^a-z0-9._-]+", "-", name)[:40].strip("-.") or "user"
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:10]}@scim.invalid"


def _name_of(user: AnyUser) -> str:
    if user.display_name:
        return str(user.display_name)[:256]
    if user.name is not None and user.name.formatted:
        return str(user.name.formatted)[:256]
    return ""


class Scim:
    def __init__(
        self,
        directory: Directory,
        principals: Principals,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        store = directory.store
        self._store = store
        self._directory = directory
        self._principals = principals
        self._clock = clock
        self.tokens = EntityKind(store, "scim_token", ScimTokenBody, lambda b: b.token_hash, "sct")
        self.users = EntityKind(
            store, "scim_user", ScimUserBody, lambda b: b.user_name.lower(), "scu"
        )
        self.groups = EntityKind(
            store, "scim_group", ScimGroupBody, lambda b: b.display_name.lower(), "scg"
        )
        self.links = sso_links(store)

    # -- tokens

    async def create_token(
        self,
        name: str,
        issuer: str | None,
        created_by: str,
        *,
        audit: AuditOf[Entity[ScimTokenBody]] | None = None,
    ) -> tuple[str, Entity[ScimTokenBody]]:
        """A new token (shown once: only its hash is kept). Conflict when the name is taken."""
        if any(t.body.name == name for t in await self.tokens.list()):
            raise ScimError(409, f"a SCIM token named {name!r} exists", "uniqueness")
        token = SCIM_TOKEN_PREFIX + secrets.token_urlsafe(32)
        body = ScimTokenBody(
            name=name,
            token_hash=hash_secret(token),
            issuer=issuer,
            created_at=self._clock(),
            created_by=created_by,
        )
        made = await self.tokens.insert(body, audit=audit)
        return token, made

    async def revoke_token(
        self, name: str, *, audit: AuditOf[Entity[ScimTokenBody]] | None = None
    ) -> bool:
        found = next((t for t in await self.tokens.list() if t.body.name == name), None)
        return found is not None and await self.tokens.delete(found.id, audit=audit)

    async def authenticate(self, token: str | None) -> Entity[ScimTokenBody]:
        if not token or not token.startswith(SCIM_TOKEN_PREFIX):
            raise ScimError(401, "send a SCIM token: Authorization: Bearer tsc_...")
        found = await self.tokens.by_key(hash_secret(token))
        if found is None:
            raise ScimError(401, "the SCIM token is not valid (revoked or unknown)")
        return found

    # -- reading

    def _user_view(self, record: Entity[ScimUserBody], base: str, groups: list[Any]) -> AnyUser:
        user: AnyUser = User.model_validate(record.body.document)
        user.id = record.id
        user.groups = groups or None
        user.meta = _meta("User", record.body, f"{base}/Users/{record.id}")
        return user

    async def _groups_of(self, base: str) -> dict[str, list[dict[str, str]]]:
        """SCIM user id -> the groups (value, display, $ref) listing it."""
        out: dict[str, list[dict[str, str]]] = {}
        for g in await self.groups.list():
            for m in g.body.document.get("members") or []:
                value = m.get("value")
                if isinstance(value, str):
                    out.setdefault(value, []).append(
                        {
                            "value": g.id,
                            "display": g.body.display_name,
                            "$ref": f"{base}/Groups/{g.id}",
                        }
                    )
        return out

    async def user(self, scim_id: str, base: str) -> AnyUser:
        record = await self.users.get(scim_id)
        if record is None:
            raise ScimError(404, f"no user {scim_id}")
        return self._user_view(record, base, (await self._groups_of(base)).get(record.id, []))

    async def list_users(self, base: str, query: str | None) -> list[AnyUser]:
        matcher = _filter(User, query)
        groups = await self._groups_of(base)
        views = [
            self._user_view(r, base, groups.get(r.id, []))
            for r in sorted(await self.users.list(), key=lambda r: r.body.created_at)
        ]
        return [u for u in views if matcher is None or matcher.match(u)]

    def _group_view(self, record: Entity[ScimGroupBody], base: str) -> Group:
        group = Group.model_validate(record.body.document)
        group.id = record.id
        for m in group.members or []:
            if m.value:
                m.ref = f"{base}/Users/{m.value}"  # type: ignore[assignment]
        group.meta = _meta("Group", record.body, f"{base}/Groups/{record.id}")
        return group

    async def group(self, scim_id: str, base: str) -> Group:
        record = await self.groups.get(scim_id)
        if record is None:
            raise ScimError(404, f"no group {scim_id}")
        return self._group_view(record, base)

    async def list_groups(self, base: str, query: str | None) -> list[Group]:
        matcher = _filter(Group, query)
        views = [
            self._group_view(r, base)
            for r in sorted(await self.groups.list(), key=lambda r: r.body.created_at)
        ]
        return [g for g in views if matcher is None or matcher.match(g)]

    # -- users

    async def create_user(
        self, data: Any, token: Entity[ScimTokenBody], *, audit: AuditOf[Written]
    ) -> str:
        user = _parse(User, data, Context.RESOURCE_CREATION_REQUEST)
        if not user.user_name:
            raise ScimError(400, "userName is required", "invalidValue")
        email, now = _email_of(user), self._clock()
        ids: list[str] = []

        async def plan() -> list[EntityWrite]:
            if await self.users.by_key(user.user_name.lower()) is not None:
                raise ScimError(409, f"userName {user.user_name!r} is taken", "uniqueness")
            active = user.active is not False
            existing = await self._directory.users.by_key(email)
            writes: list[EntityWrite] = []
            body = UserBody(
                email=email,
                name=_name_of(user),
                status="active" if active else "disabled",
                source="scim",
            )
            if existing is None:
                made = self._directory.users.inserted(body)
                user_id = made.record.id
                writes.append(made)
            elif existing.body.source == "scim" and not await self._provisioned(existing.id):
                # Deleted by SCIM before, provisioned again: the same person comes back.
                user_id = existing.id
                writes.append(
                    self._directory.users.updated(
                        existing, existing.body.model_copy(update={"status": body.status})
                    )
                )
            else:
                raise ScimError(
                    409,
                    f"{email} is a user here that SCIM did not provision",
                    "uniqueness",
                )
            record = ScimUserBody(
                user_id=user_id,
                user_name=user.user_name,
                document=_stored(user),
                issuer=token.body.issuer,
                created_at=now,
                updated_at=now,
            )
            inserted = self.users.inserted(record)
            ids[:] = [inserted.record.id]
            writes.append(inserted)
            if token.body.issuer is not None:
                writes += await self._link_writes(token.body.issuer, user.user_name, user_id)
            return writes

        def event(written: list[EntityRecord | None]) -> AuditAppend | None:
            return audit(
                Written("user", ids[0], email, "create", None, _summary_of_user(user, email))
            )

        await together(self._store, plan, audit=event)
        return ids[0]

    async def _provisioned(self, user_id: str) -> bool:
        return any(r.body.user_id == user_id for r in await self.users.list())

    async def _link_writes(self, issuer: str, user_name: str, user_id: str) -> list[EntityWrite]:
        subject = user_name.lower() if issuer.startswith("ldap") else user_name
        current = await self.links.by_key(link_key(issuer, subject))
        if current is not None:
            if current.body.user_id == user_id:
                return []
            raise ScimError(409, f"{user_name!r} at {issuer} is linked to another user")
        link = SsoLink(
            issuer=issuer,
            subject=subject,
            user_id=user_id,
            made_by="scim",
            made_at=self._clock(),
        )
        return [self.links.inserted(link)]

    async def replace_user(self, scim_id: str, data: Any, *, audit: AuditOf[Written]) -> None:
        wanted = _parse(User, data, Context.RESOURCE_REPLACEMENT_REQUEST)
        await self._set_user(scim_id, lambda _current: wanted, "update", audit)

    async def patch_user(self, scim_id: str, data: Any, *, audit: AuditOf[Written]) -> None:
        patch = _parse(PatchOp[AnyUser], data, Context.RESOURCE_PATCH_REQUEST)

        def apply(current: AnyUser) -> AnyUser:
            try:
                patch.patch(current)
            except (SCIMException, ValidationError) as exc:
                raise _err(exc) from None
            return current

        await self._set_user(scim_id, apply, "update", audit)

    async def _set_user(
        self,
        scim_id: str,
        change: Callable[[AnyUser], AnyUser],
        action: str,
        audit: AuditOf[Written],
    ) -> None:
        written: list[Written] = []
        ended_sessions = [False]

        async def plan() -> list[EntityWrite]:
            record = await self.users.get(scim_id)
            if record is None:
                raise ScimError(404, f"no user {scim_id}")
            before: AnyUser = User.model_validate(record.body.document)
            after = change(User.model_validate(record.body.document))
            if not after.user_name:
                raise ScimError(400, "userName is required", "invalidValue")
            renamed = after.user_name.lower() != record.body.user_name.lower()
            if renamed and await self.users.by_key(after.user_name.lower()) is not None:
                raise ScimError(409, f"userName {after.user_name!r} is taken", "uniqueness")
            target = await self._directory.users.get(record.body.user_id)
            if target is None:
                raise ScimError(404, f"no user {scim_id}")
            email = _email_of(after)
            if email != target.body.email and await self._directory.users.by_key(email):
                raise ScimError(409, f"{email} is taken by another user", "uniqueness")
            active = after.active is not False
            status = "active" if active else "disabled"
            body = target.body.model_copy(
                update={"email": email, "name": _name_of(after), "status": status}
            )
            new = record.body.model_copy(
                update={
                    "user_name": after.user_name,
                    "document": _stored(after),
                    "updated_at": self._clock(),
                    "version": record.body.version + 1,
                }
            )
            writes = [self._directory.users.updated(target, body), self.users.updated(record, new)]
            if not active:
                # Deactivated: every session ends with the change (and keys stop: below).
                sessions = self._directory.sessions
                writes += [
                    sessions.deleted(s, any_version=True)
                    for s in await sessions.list()
                    if s.body.user_id == target.id
                ]
                ended_sessions[0] = target.body.status == "active"
            written[:] = [
                Written(
                    "user",
                    scim_id,
                    email,
                    "deactivate" if ended_sessions[0] else action,
                    _summary_of_user(before, target.body.email),
                    _summary_of_user(after, email),
                )
            ]
            return writes

        await together(self._store, plan, audit=lambda _w: audit(written[0]))
        self._principals.forget()

    async def delete_user(self, scim_id: str, *, audit: AuditOf[Written]) -> None:
        written: list[Written] = []

        async def plan() -> list[EntityWrite]:
            record = await self.users.get(scim_id)
            if record is None:
                raise ScimError(404, f"no user {scim_id}")
            writes: list[EntityWrite] = [self.users.deleted(record)]
            target = await self._directory.users.get(record.body.user_id)
            email = record.body.user_name
            if target is not None:
                email = target.body.email
                body = target.body.model_copy(update={"status": "disabled", "groups": []})
                writes.append(self._directory.users.updated(target, body))
                sessions = self._directory.sessions
                writes += [
                    sessions.deleted(s, any_version=True)
                    for s in await sessions.list()
                    if s.body.user_id == target.id
                ]
                writes += [
                    self.links.deleted(link, any_version=True)
                    for link in await self.links.list()
                    if link.body.user_id == target.id and link.body.made_by == "scim"
                ]
            for g in await self.groups.list():
                members = g.body.document.get("members") or []
                kept = [m for m in members if m.get("value") != scim_id]
                if len(kept) != len(members):
                    doc = {**g.body.document, "members": kept}
                    writes.append(
                        self.groups.updated(g, g.body.model_copy(update={"document": doc}))
                    )
            before = _summary_of_user(User.model_validate(record.body.document), email)
            written[:] = [Written("user", scim_id, email, "delete", before, None)]
            return writes

        await together(self._store, plan, audit=lambda _w: audit(written[0]))
        self._principals.forget()

    # -- groups

    async def _member_users(self, group: Group) -> dict[str, str]:
        """SCIM user id -> Tether user id of the group's members; ScimError for a member
        that is not a user SCIM made (nested groups are not supported)."""
        out: dict[str, str] = {}
        for m in group.members or []:
            record = None if not m.value else await self.users.get(m.value)
            if record is None:
                raise ScimError(400, f"member {m.value!r} is not a SCIM user here", "invalidValue")
            out[record.id] = record.body.user_id
        return out

    async def _membership_writes(self, group_id: str, members: set[str]) -> list[EntityWrite]:
        """Users' group lists updated so that exactly ``members`` (Tether ids) are in it."""
        writes: list[EntityWrite] = []
        for u in await self._directory.users.list():
            inside = group_id in u.body.groups
            wanted = u.id in members
            if inside == wanted:
                continue
            groups = [g for g in u.body.groups if g != group_id]
            if wanted:
                groups.append(group_id)
            writes.append(
                self._directory.users.updated(u, u.body.model_copy(update={"groups": groups}))
            )
        return writes

    async def create_group(self, data: Any, *, audit: AuditOf[Written]) -> str:
        group = _parse(Group, data, Context.RESOURCE_CREATION_REQUEST)
        name = (group.display_name or "").strip()
        if not name:
            raise ScimError(400, "displayName is required", "invalidValue")
        now = self._clock()
        ids: list[str] = []

        async def plan() -> list[EntityWrite]:
            if await self._directory.groups.by_key(name) is not None:
                raise ScimError(409, f"a group named {name!r} exists", "uniqueness")
            members = await self._member_users(group)
            made = self._directory.groups.inserted(
                GroupBody(name=name, description="provisioned by SCIM")
            )
            record = self.groups.inserted(
                ScimGroupBody(
                    group_id=made.record.id,
                    display_name=name,
                    document=_stored(group),
                    created_at=now,
                    updated_at=now,
                )
            )
            ids[:] = [record.record.id]
            return [
                made,
                record,
                *await self._membership_writes(made.record.id, set(members.values())),
            ]

        def event(_w: list[EntityRecord | None]) -> AuditAppend | None:
            return audit(Written("group", ids[0], name, "create", None, _summary_of_group(group)))

        await together(self._store, plan, audit=event)
        return ids[0]

    async def replace_group(self, scim_id: str, data: Any, *, audit: AuditOf[Written]) -> None:
        wanted = _parse(Group, data, Context.RESOURCE_REPLACEMENT_REQUEST)
        await self._set_group(scim_id, lambda _current: wanted, audit)

    async def patch_group(self, scim_id: str, data: Any, *, audit: AuditOf[Written]) -> None:
        patch = _parse(PatchOp[Group], data, Context.RESOURCE_PATCH_REQUEST)

        def apply(current: Group) -> Group:
            try:
                patch.patch(current)
            except (SCIMException, ValidationError) as exc:
                raise _err(exc) from None
            return current

        await self._set_group(scim_id, apply, audit)

    async def _set_group(
        self, scim_id: str, change: Callable[[Group], Group], audit: AuditOf[Written]
    ) -> None:
        written: list[Written] = []

        async def plan() -> list[EntityWrite]:
            record = await self.groups.get(scim_id)
            if record is None:
                raise ScimError(404, f"no group {scim_id}")
            before = Group.model_validate(record.body.document)
            after = change(Group.model_validate(record.body.document))
            name = (after.display_name or "").strip()
            if not name:
                raise ScimError(400, "displayName is required", "invalidValue")
            target = await self._directory.groups.get(record.body.group_id)
            if target is None:
                raise ScimError(404, f"no group {scim_id}")
            if name != target.body.name and await self._directory.groups.by_key(name):
                raise ScimError(409, f"a group named {name!r} exists", "uniqueness")
            members = await self._member_users(after)
            new = record.body.model_copy(
                update={
                    "display_name": name,
                    "document": _stored(after),
                    "updated_at": self._clock(),
                    "version": record.body.version + 1,
                }
            )
            writes: list[EntityWrite] = [self.groups.updated(record, new)]
            if name != target.body.name:
                renamed = target.body.model_copy(update={"name": name})
                writes.append(self._directory.groups.updated(target, renamed))
            writes += await self._membership_writes(target.id, set(members.values()))
            written[:] = [
                Written(
                    "group",
                    scim_id,
                    name,
                    "update",
                    _summary_of_group(before),
                    _summary_of_group(after),
                )
            ]
            return writes

        await together(self._store, plan, audit=lambda _w: audit(written[0]))
        self._principals.forget()

    async def delete_group(self, scim_id: str, *, audit: AuditOf[Written]) -> None:
        written: list[Written] = []

        async def plan() -> list[EntityWrite]:
            record = await self.groups.get(scim_id)
            if record is None:
                raise ScimError(404, f"no group {scim_id}")
            writes: list[EntityWrite] = [self.groups.deleted(record)]
            target = await self._directory.groups.get(record.body.group_id)
            if target is not None:
                writes += await self._membership_writes(target.id, set())
                writes.append(self._directory.groups.deleted(target, any_version=True))
            before = _summary_of_group(Group.model_validate(record.body.document))
            written[:] = [
                Written("group", scim_id, record.body.display_name, "delete", before, None)
            ]
            return writes

        await together(self._store, plan, audit=lambda _w: audit(written[0]))
        self._principals.forget()


def _parse(model: Any, data: Any, ctx: Context) -> Any:
    try:
        return model.model_validate(data, scim_ctx=ctx)
    except (ValidationError, SCIMException) as exc:
        raise _err(exc) from None


def _filter(model: Any, query: str | None) -> Any:
    if not query:
        return None
    try:
        return ScimFilter[model](query)
    except (ValidationError, SCIMException, ValueError) as exc:
        detail = getattr(exc, "detail", None) or "the filter cannot be read"
        raise ScimError(400, f"filter: {detail}", "invalidFilter") from None


def _stored(resource: AnyUser | Group) -> dict[str, Any]:
    """The document to keep: what the client may set, without id, meta or groups."""
    doc = resource.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
    for key in ("id", "meta", "groups"):
        doc.pop(key, None)
    return doc


def _meta(kind: str, body: ScimUserBody | ScimGroupBody, location: str) -> Meta:
    from datetime import UTC, datetime

    return Meta(
        resource_type=kind,
        created=datetime.fromtimestamp(body.created_at, UTC),
        last_modified=datetime.fromtimestamp(body.updated_at, UTC),
        location=location,
        version=f'W/"{body.version}"',
    )


def _summary_of_user(user: AnyUser, email: str) -> dict[str, Any]:
    return {
        "userName": user.user_name,
        "email": email,
        "externalId": user.external_id,
        "active": user.active is not False,
    }


def _summary_of_group(group: Group) -> dict[str, Any]:
    return {
        "displayName": group.display_name,
        "externalId": group.external_id,
        "members": sorted(m.value or "" for m in group.members or []),
    }

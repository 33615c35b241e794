"""Who may hand out which permissions: nobody raises anyone, themselves included, above
their own grants.

A principal may give a group (to a user, to an API key, to a service account) only when the
group's account permissions and application grants lie within the principal's own
(:func:`manager.core.rbac.within`); the administrators' group only when the principal is an
administrator (holds every permission). Editing a group's permissions follows the same rule:
the group as it would be must lie within its editor. Taking a group away is always allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web

from manager.access.directory import ADMIN_GROUP_ID, Directory, GroupBody
from manager.access.entities import Entity
from manager.access.principal import principal_of
from manager.core.rbac import FULL, Grants, within
from manager.errors import Forbidden
from manager.schemas.grants import EnvType

__all__ = ["Offered", "check_grantable", "check_group_edit", "refusal"]


@dataclass(frozen=True, slots=True)
class Offered:
    name: str
    grants: Grants
    admin_group: bool = False


def refusal(
    author: Grants, offered: Iterable[Offered], envs: Mapping[str, tuple[str, EnvType]]
) -> str | None:
    """Why ``author`` may not give these groups, or None when it may."""
    for group in offered:
        if group.admin_group and not within(FULL, author, envs=envs):
            return f"only an administrator may grant the group {group.name!r}"
        if not within(group.grants, author, envs=envs):
            return f"the group {group.name!r} holds permissions you do not hold"
    return None


def grants_of(body: GroupBody) -> Grants:
    return Grants.union([(body.account_permissions, body.app_permissions)])


async def _envs(d: Directory) -> dict[str, tuple[str, EnvType]]:
    return {e.id: (e.body.app_id, e.body.type) for e in await d.envs.list()}


async def check_grantable(
    request: web.Request, d: Directory, groups: Iterable[Entity[GroupBody]]
) -> None:
    """403 unless the caller may give every one of ``groups``."""
    offered = [Offered(g.body.name, grants_of(g.body), g.id == ADMIN_GROUP_ID) for g in groups]
    if not offered:
        return
    why = refusal(principal_of(request).grants, offered, await _envs(d))
    if why is not None:
        raise Forbidden("forbidden", why)


async def check_group_edit(request: web.Request, d: Directory, after: GroupBody) -> None:
    """403 unless ``after`` (a group as a create or an edit would leave it) lies within the
    caller's grants."""
    if not within(grants_of(after), principal_of(request).grants, envs=await _envs(d)):
        raise Forbidden(
            "forbidden", f"the group {after.name!r} would hold permissions you do not hold"
        )

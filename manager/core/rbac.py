"""What a user group allows, and what a set of groups adds up to.

A group holds **account permissions** (named below) and **application permissions**: grants of
actions on some applications and some of their environments. A principal (a user, or an API
key acting for its owner) holds the union of its groups' permissions. Nothing here reads the
store: :class:`Grants` is computed once per request from groups already loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from manager.schemas.grants import (
    ACCOUNT_PERMISSIONS,
    ACTIONS,
    AccountPermission,
    Action,
    AppGrant,
    EnvType,
    Target,
)

__all__ = ["FULL", "Grants", "within"]


@dataclass(frozen=True, slots=True)
class Grants:
    account: frozenset[AccountPermission]
    apps: tuple[AppGrant, ...]

    @classmethod
    def union(
        cls, groups: Iterable[tuple[Iterable[AccountPermission], Iterable[AppGrant]]]
    ) -> Grants:
        account: set[AccountPermission] = set()
        apps: list[AppGrant] = []
        for perms, grants in groups:
            account.update(perms)
            apps.extend(grants)
        return cls(frozenset(account), tuple(apps))

    def has(self, permission: AccountPermission) -> bool:
        return permission in self.account

    def allows(self, target: Target | None, action: Action) -> bool:
        """``action`` on ``target``; ``None`` (outside any application) needs the action on
        every application and environment."""
        if target is None:
            return self.everywhere(action)
        return any(g.covers(target, action) for g in self.apps)

    def everywhere(self, action: Action) -> bool:
        return any(g.universal and action in g.actions for g in self.apps)

    def allows_all(self, target: Target | None, actions: Iterable[Action]) -> bool:
        return all(self.allows(target, a) for a in actions)


FULL = Grants(frozenset(ACCOUNT_PERMISSIONS), (AppGrant(actions=ACTIONS),))


# A piece of a grant: (an application id, or None for every application; "type:<env type>",
# "id:<env id>", or "all:" for everywhere, the place outside any application included).
_Region = tuple[str | None, str]
_TYPES: tuple[EnvType, ...] = ("production", "non_production")


def within(a: Grants, b: Grants, *, envs: Mapping[str, tuple[str, EnvType]] | None = None) -> bool:
    """Whether ``a`` allows nothing that ``b`` does not, now or once applications and
    environments are added: the check behind granting a group (to oneself or anyone) and
    editing one. ``envs`` (environment id -> (application id, type)) lets a grant of
    environment ids be matched by a grant of their type; without it such a grant must be
    matched by id or by "all"."""
    if not a.account <= b.account:
        return False
    known = envs or {}
    return all(
        any(_covers(h, app, env, action, known) for h in b.apps)
        for g in a.apps
        for action in g.actions
        for app, env in _regions(g, known)
    )


def _regions(g: AppGrant, envs: Mapping[str, tuple[str, EnvType]]) -> list[_Region]:
    """``g`` cut into pieces each one grant of ``b`` must cover whole."""
    if g.universal:
        # Also the place outside every application (Grants.everywhere): only another
        # universal grant reaches it, not one grant per environment type.
        return [(None, "all:")]
    apps: list[str | None] = [None] if g.apps == "all" else list(g.apps)
    if g.envs == "all":
        return [(app, f"type:{t}") for app in apps for t in _TYPES]
    if isinstance(g.envs, str):
        return [(app, f"type:{g.envs}") for app in apps]
    out: list[_Region] = []
    for env_id in g.envs:
        owner = envs.get(env_id, (None, None))[0]
        if g.apps == "all":
            out.append((owner, f"id:{env_id}"))
        else:
            # An id of another application's environment grants nothing here.
            out.extend((app, f"id:{env_id}") for app in g.apps if owner in (None, app))
    return out


def _covers(
    h: AppGrant,
    app: str | None,
    env: str,
    action: Action,
    envs: Mapping[str, tuple[str, EnvType]],
) -> bool:
    if action not in h.actions:
        return False
    if h.apps != "all" and (app is None or app not in h.apps):
        return False
    if h.envs == "all":
        return True
    kind, _, value = env.partition(":")
    if kind == "all":
        return False
    if isinstance(h.envs, str):
        if kind == "type":
            return value == h.envs
        found = envs.get(value)
        return found is not None and found[1] == h.envs
    return kind == "id" and value in h.envs


def uncovered_delegate_scope(
    grants: Grants,
    *,
    account_wide: bool,
    apps: Iterable[str],
    envs: Iterable[Target],
    env_types: Iterable[EnvType],
) -> list[str]:
    """The parts of a delegate token's scope that ``grants`` may not run tasks in (empty:
    all of it). A delegate of the token receives the tasks, and their secrets, of every place
    its scope covers, so making (or revoking) one is running there: it needs ``execute`` on
    each place, and on a whole application or environment type only through a grant that
    covers all of it, including environments added later."""

    def whole(app: str | None, env_type: EnvType | None) -> bool:
        return any(
            "execute" in g.actions
            and (g.apps == "all" or (app is not None and app in g.apps))
            and (g.envs == "all" or (env_type is not None and g.envs == env_type))
            for g in grants.apps
        )

    if account_wide:
        return [] if grants.everywhere("execute") else ["the whole account"]
    missing = [f"application {a}" for a in apps if not whole(a, None)]
    missing += [f"environment type {t}" for t in env_types if not whole(None, t)]
    missing += [f"environment {t.env_id}" for t in envs if not grants.allows(t, "execute")]
    return missing

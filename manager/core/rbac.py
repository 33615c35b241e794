"""What a user group allows, and what a set of groups adds up to.

A group holds **account permissions** (named below) and **application permissions**: grants of
actions on some applications and some of their environments. A principal (a user, or an API
key acting for its owner) holds the union of its groups' permissions. Nothing here reads the
store: :class:`Grants` is computed once per request from groups already loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from manager.schemas.grants import (
    ACCOUNT_PERMISSIONS,
    ACTIONS,
    AccountPermission,
    Action,
    AppGrant,
    Target,
)

__all__ = ["FULL", "Grants"]


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

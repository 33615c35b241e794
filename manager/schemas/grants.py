"""The vocabulary of access control, shared by the wire models and the decisions.

Account permissions, actions on applications, environment types, and the grant of actions on
some applications and environments. :mod:`manager.core.rbac` adds up what a set of groups
allows; the client reads these names without importing any server code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ACCOUNT_PERMISSIONS",
    "ACTIONS",
    "ADMIN_GROUP",
    "AccountPermission",
    "Action",
    "AppGrant",
    "EnvType",
    "Target",
]

AccountPermission = Literal[
    "manage_users",
    "manage_user_groups",
    "manage_delegates",
    "manage_secrets",
    "manage_secret_managers",
    "manage_api_keys",
    "manage_applications",
    "manage_governance",
    "view_audit",
    # issue 18: proceed through a freeze window with a reason; webhooks; incidents
    "override_freeze",
    "manage_webhooks",
    "manage_incidents",
]
ACCOUNT_PERMISSIONS: tuple[AccountPermission, ...] = get_args(AccountPermission)

Action = Literal["create", "read", "update", "delete", "execute"]
ACTIONS: tuple[Action, ...] = get_args(Action)

EnvType = Literal["production", "non_production"]

# Made at first start, holding every permission; the admin API key acts through it.
ADMIN_GROUP = "Account Administrators"


class AppGrant(BaseModel):
    """Actions on applications and environments. ``apps`` is ``"all"`` or application ids;
    ``envs`` is ``"all"``, an environment type, or environment ids."""

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)

    apps: Literal["all"] | tuple[str, ...] = "all"
    envs: Literal["all", "production", "non_production"] | tuple[str, ...] = "all"
    actions: tuple[Action, ...] = Field(min_length=1)

    @field_validator("actions")
    @classmethod
    def _distinct(cls, actions: tuple[Action, ...]) -> tuple[Action, ...]:
        return tuple(dict.fromkeys(actions))

    def covers(self, target: Target, action: Action) -> bool:
        if action not in self.actions:
            return False
        if self.apps != "all" and target.app_id not in self.apps:
            return False
        if self.envs == "all":
            return True
        if isinstance(self.envs, str):
            return target.env_type == self.envs
        return target.env_id in self.envs

    @property
    def universal(self) -> bool:
        """All applications and all environments."""
        return self.apps == "all" and self.envs == "all"


@dataclass(frozen=True, slots=True)
class Target:
    """An environment of an application, as a task or a secret's scope names it."""

    app_id: str
    env_id: str
    env_type: EnvType

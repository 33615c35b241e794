"""Models of the users, groups, applications and environments routes, shared by the server and
the client. The API speaks in names (group names, application and environment names); the
store keeps ids (manager.access.directory)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from manager.schemas.grants import AccountPermission, Action, EnvType

__all__ = [
    "AppCreate",
    "AppList",
    "AppPermission",
    "AppView",
    "EnvCreate",
    "EnvList",
    "EnvUpdate",
    "EnvView",
    "GroupCreate",
    "GroupList",
    "GroupUpdate",
    "GroupView",
    "UserCreate",
    "UserCreated",
    "UserList",
    "UserUpdate",
    "UserView",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$"
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=_NAME)]
# Deliberately plain: a local part, an @, a domain with a dot. The invite proves the rest.
_EMAIL = r"^[^@\s]{1,64}@[A-Za-z0-9.-]{1,255}\.[A-Za-z]{2,63}$"
_EMAIL_FORM = re.compile(_EMAIL)


def _an_email(value: str) -> str:
    # Our own words: pydantic's pattern error would print the regular expression.
    if not _EMAIL_FORM.match(value):
        raise PydanticCustomError(
            "email", "not an email address: expected a name, @ and a domain (dev@example.com)"
        )
    return value


# The pattern stays in the OpenAPI document (json_schema_extra); the check is _an_email.
Email = Annotated[
    str,
    Field(min_length=3, max_length=320, json_schema_extra={"pattern": _EMAIL}),
    AfterValidator(_an_email),
]


class Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")


class AppPermission(Model):
    """Actions on applications (``all`` or names) and their environments (``all``, a type,
    or names within the listed applications)."""

    apps: Literal["all"] | list[Name] = "all"
    envs: Literal["all", "production", "non_production"] | list[Name] = "all"
    actions: list[Action] = Field(min_length=1)

    @field_validator("actions")
    @classmethod
    def _distinct(cls, actions: list[Action]) -> list[Action]:
        return list(dict.fromkeys(actions))


class GroupCreate(Model):
    name: Name
    description: str = Field(default="", max_length=1024)
    account_permissions: list[AccountPermission] = Field(default_factory=list)
    app_permissions: list[AppPermission] = Field(default_factory=list, max_length=64)


class GroupUpdate(Model):
    """Fields left out keep their value. A group is not renamed: API keys name groups."""

    description: str | None = Field(default=None, max_length=1024)
    account_permissions: list[AccountPermission] | None = None
    app_permissions: list[AppPermission] | None = Field(default=None, max_length=64)


class GroupView(Model):
    id: str
    name: str
    description: str
    account_permissions: list[AccountPermission]
    app_permissions: list[AppPermission]
    builtin: bool
    members: list[str]


class GroupList(Model):
    groups: list[GroupView]


class UserCreate(Model):
    email: Email
    name: str = Field(default="", max_length=256)
    groups: list[Name] = Field(default_factory=list, max_length=64)


class UserUpdate(Model):
    name: str | None = Field(default=None, max_length=256)
    groups: list[Name] | None = Field(default=None, max_length=64)


class UserView(Model):
    id: str
    email: str
    name: str
    status: Literal["invited", "active", "disabled"]
    source: Literal["local", "sso", "scim"]
    groups: list[str]
    totp_enabled: bool
    created_at: float
    last_login_at: float | None = None
    locked_until: float | None = None
    invite_expires_at: float | None = None


class UserCreated(UserView):
    # Shown once: the user sets a password with it (there is no mail server to send it).
    invite_token: str


class UserList(Model):
    users: list[UserView]


class AppCreate(Model):
    name: Name
    description: str = Field(default="", max_length=1024)


class AppView(Model):
    id: str
    name: str
    description: str
    created_at: float


class AppList(Model):
    apps: list[AppView]


class EnvCreate(Model):
    name: Name
    type: EnvType
    # Only delegates whose token is scoped to this environment (or its application) by
    # name run its tasks; account-wide and environment-type tokens do not.
    dedicated_delegates: bool = False


class EnvUpdate(Model):
    """Fields left out keep their value."""

    dedicated_delegates: bool | None = None


class EnvView(Model):
    id: str
    app: str
    name: str
    type: EnvType
    created_at: float
    dedicated_delegates: bool = False


class EnvList(Model):
    envs: list[EnvView]

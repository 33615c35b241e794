"""Bodies and answers of the secrets API. No answer model has a field for a value."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from manager.schemas.grants import Target
from shared.expressions import MAX_NAME_LENGTH
from shared.secretspec import RefSpec, SecretKind, SecretType

__all__ = [
    "ManagerName",
    "SecretCreate",
    "SecretList",
    "SecretManagerCreate",
    "SecretManagerList",
    "SecretManagerTestResult",
    "SecretManagerUpdate",
    "SecretManagerView",
    "SecretMigrate",
    "SecretName",
    "SecretUpdate",
    "SecretValue",
    "SecretVersionList",
    "SecretVersionView",
    "SecretView",
]

# The same rule the expressions apply (shared.expressions), so every secret can be named
# in a task: segments of letters, digits, "_", "." and "-", joined by "/".
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
SecretName = Annotated[
    str, Field(pattern=rf"^{_SEGMENT}(?:/{_SEGMENT})*$", max_length=MAX_NAME_LENGTH)
]
ManagerName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
_Settings = Annotated[dict[str, Annotated[str, Field(max_length=8192)]], Field(max_length=32)]
_Selectors = Annotated[list[str], Field(max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")


EnvChoice = Literal["all", "production", "non_production"] | list[str]


class ScopeTarget(_Model):
    """Some applications (all, or names) and some of their environments (all, a type, or
    names)."""

    apps: Literal["all"] | list[str] = "all"
    envs: EnvChoice = "all"

    def covers(self, t: Target) -> bool:
        if self.apps != "all" and t.app_id not in self.apps:
            return False
        if self.envs == "all":
            return True
        if isinstance(self.envs, str):
            return t.env_type == self.envs
        return t.env_id in self.envs

    @property
    def universal(self) -> bool:
        return self.apps == "all" and self.envs == "all"


class ScopeSpec(_Model):
    """Where secrets may be used (manager.secrets.scope): the account (delegate profiles)
    and/or application targets. Empty: delegate profiles only."""

    account: bool = False
    targets: list[ScopeTarget] = Field(default_factory=list, max_length=64)


class ScopePut(_Model):
    # null: no scope of its own (a secret has its manager's; a manager is unrestricted).
    scope: ScopeSpec | None


class SecretManagerCreate(_Model):
    name: ManagerName
    kind: SecretKind
    settings: _Settings = Field(default_factory=dict)
    # A builtin secret whose value is a JSON object of this kind's credentials; absent: the
    # delegate's own environment (AWS default chain, VAULT_TOKEN, a service account file...).
    credentials_secret: SecretName | None = None
    # Which delegates run its connection test and key operations.
    selectors: _Selectors = Field(default_factory=list)
    description: str = Field(default="", max_length=1024)
    # Absent: unrestricted.
    scope: ScopeSpec | None = None


class SecretManagerUpdate(_Model):
    """Fields left out keep their value; ``credentials_secret: null`` goes back to the
    delegate's environment."""

    name: ManagerName | None = None
    settings: _Settings | None = None
    credentials_secret: SecretName | None = None
    selectors: _Selectors | None = None
    description: str | None = Field(default=None, max_length=1024)


class SecretManagerView(_Model):
    id: str
    name: str
    kind: SecretKind
    settings: dict[str, str]
    credentials_secret: str | None
    selectors: list[str]
    description: str
    builtin: bool
    created_at: float
    updated_at: float
    scope: ScopeSpec | None = None


class SecretManagerList(_Model):
    secret_managers: list[SecretManagerView]


class SecretManagerTestResult(_Model):
    ok: bool
    task_id: str | None = None
    delegate_id: str | None = None
    # Why the test failed, in the delegate's words (never a credential).
    error: str | None = None


class SecretValue(_Model):
    """Exactly one source of the value. ``fields`` is for ssh_key ({key, passphrase?, user?})
    and winrm ({user, password, domain?}); ``ref`` makes a reference."""

    value: str | None = Field(default=None, max_length=1024 * 1024)
    value_base64: str | None = Field(default=None, max_length=1_400_000)
    fields: dict[str, Annotated[str, Field(max_length=64 * 1024)]] | None = Field(
        default=None, max_length=8
    )
    ref: RefSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretValue:
        given = [
            n for n in ("value", "value_base64", "fields", "ref") if getattr(self, n) is not None
        ]
        if len(given) != 1:
            raise ValueError("give exactly one of value, value_base64, fields or ref")
        return self


class SecretCreate(SecretValue):
    name: SecretName
    # The secret manager's name.
    manager: ManagerName = "builtin"
    type: SecretType = "text"
    description: str = Field(default="", max_length=1024)
    # Absent: the manager's scope.
    scope: ScopeSpec | None = None


class SecretUpdate(SecretValue):
    description: str | None = Field(default=None, max_length=1024)


class SecretView(_Model):
    id: str
    name: str
    manager: str
    manager_kind: SecretKind
    type: SecretType
    # "inline" (ciphertext kept by the manager) or "reference" (value in the customer's store)
    mode: str
    current_version: int
    description: str
    created_by: str | None = None
    created_at: float
    updated_at: float
    # Its own scope; null: its manager's.
    scope: ScopeSpec | None = None


class SecretList(_Model):
    secrets: list[SecretView]


class SecretVersionView(_Model):
    version: int
    current: bool
    created_at: float
    created_by: str | None = None
    # inline: plaintext bytes and which key wraps its data key; reference: where it lives.
    size: int | None = None
    key: str | None = None
    ref: RefSpec | None = None


class SecretVersionList(_Model):
    name: str
    versions: list[SecretVersionView]


class SecretMigrate(_Model):
    to: ManagerName

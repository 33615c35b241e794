"""Models of the user-facing REST API (``/api/v1``), shared by the server and the client."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.logbytes import from_base64
from shared.protocol import (
    Deployment,
    Isolation,
    TaskPayload,
    TaskState,
    TaskType,
    UserPayload,
)

__all__ = [
    "ID_PREFIX",
    "LABEL_KEY",
    "AttemptView",
    "DelegateView",
    "LogEntry",
    "LogPage",
    "ProfileList",
    "ProfilePut",
    "ProfileView",
    "TaskList",
    "TaskSubmit",
    "TaskView",
    "TokenCreate",
    "TokenCreated",
    "TokenScopeView",
    "TokenView",
]


class Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")


# A task's name and its labels' keys and values: what `tether task list` filters by.
_TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._:/@+-]*$"
TaskName = Annotated[str, Field(min_length=1, max_length=128, pattern=_TASK_NAME)]
LABEL_KEY = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"
LabelKey = Annotated[str, Field(min_length=1, max_length=63, pattern=LABEL_KEY)]
LabelValue = Annotated[str, Field(max_length=256)]
# The start of a task id (``task list --id-prefix``): ids are lower-case letters, digits, _.
ID_PREFIX = r"^[a-z0-9_]{1,64}$"


class TaskSubmit(Model):
    payload: UserPayload
    selectors: list[str] = Field(default_factory=list, max_length=64)
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    queue_timeout_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    max_attempts: int = Field(default=1, ge=1, le=10)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)
    # Values the task may see that must never show: sealed to the delegate at acquire,
    # masked in the logs, and never returned by the API (only their names are).
    secret_env: dict[str, str] = Field(default_factory=dict, max_length=256)
    deployment: Deployment | None = None
    # The application and environment (names or ids) the task runs for; both or neither.
    # Submitting needs the execute action there; without them, execute on every one.
    app: str | None = Field(default=None, min_length=1, max_length=128)
    env: str | None = Field(default=None, min_length=1, max_length=128)
    # Proceed through an active freeze window, with this reason (needs override_freeze;
    # the reason is written into the submission's audit event).
    override_freeze: str | None = Field(default=None, min_length=1, max_length=500)
    # A name to find the task by (not unique), and labels to filter lists with.
    name: TaskName | None = None
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=32)

    @model_validator(mode="after")
    def _app_and_env(self) -> TaskSubmit:
        if (self.app is None) != (self.env is None):
            raise ValueError("app and env go together: give both or neither")
        return self


class AttemptView(Model):
    attempt: int
    delegate_id: str
    delegate_name: str | None = None
    started_at: float
    finished_at: float | None = None
    status: str | None = None


class TaskView(Model):
    id: str
    type: TaskType
    state: TaskState
    payload: TaskPayload
    selectors: list[str]
    secret_env_names: list[str]
    timeout_s: float
    queue_timeout_s: float
    max_attempts: int
    attempt: int
    delegate_id: str | None = None
    idempotency_key: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    error: str | None = None
    cancel_requested: bool = False
    deployment: Deployment | None = None
    attempts: list[AttemptView] = Field(default_factory=list)
    app_id: str | None = None
    env_id: str | None = None
    app: str | None = None
    env: str | None = None
    submitted_by: str | None = None
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class TaskList(Model):
    tasks: list[TaskView]


def _is_none(value: object) -> bool:
    return value is None


class LogEntry(Model):
    attempt: int
    seq: int
    stream: Literal["stdout", "stderr", "system"]
    ts: float
    text: str = Field(
        description="The line as text. When its bytes are not UTF-8 text (invalid UTF-8, or"
        " a NUL byte), each such byte shows here as U+FFFD and `data` has the exact bytes."
    )
    data: str | None = Field(
        default=None,
        exclude_if=_is_none,
        description="The line's exact bytes in base64 (standard alphabet, padded); present"
        " only when they are not UTF-8 text free of NUL.",
    )

    @property
    def raw(self) -> bytes:
        """The line's exact bytes."""
        return self.text.encode("utf-8") if self.data is None else from_base64(self.data)


class LogPage(Model):
    """A page of a task's log: at most ``limit`` lines and 4 MiB of their text, whichever
    comes first (a longer line comes alone). A page may end before the log does: read on
    with ``after`` set to ``cursor`` until a page comes back with no lines."""

    lines: list[LogEntry]
    # Pass as ``after`` to get the next page; unchanged when there was nothing new.
    cursor: str
    state: TaskState


class TokenScopeView(Model):
    # True: any application and environment (a token made without a scope).
    account_wide: bool
    apps: list[str] = Field(default_factory=list)
    envs: list[str] = Field(default_factory=list)  # "APP/ENV"
    env_types: list[str] = Field(default_factory=list)
    # None: any selector.
    selectors: list[str] | None = None


class DelegateView(Model):
    id: str
    name: str
    hostname: str
    version: str
    protocol_version: int
    selectors: list[str]
    task_types: list[TaskType]
    capacity: int
    status: Literal["connected", "polling", "disconnected"]
    last_heartbeat: float | None = None
    running: list[str] = Field(default_factory=list)
    draining: bool = False
    # Older than the manager (protocol or release): upgrade it.
    outdated: bool = False
    # "task_users": its tasks run as users of their own, apart from it; "shared_user": as
    # the delegate's own user (an opt-in), so a task can read the delegate's credentials.
    isolation: Isolation = "shared_user"
    # The token it registered with, and what that token allows.
    token: str | None = None
    scope: TokenScopeView | None = None


Selector = Annotated[str, Field(min_length=1, max_length=128)]


class TokenCreate(Model):
    """A delegate token. With no ``scope`` and no ``scope_env_types`` its delegates may run
    tasks of the whole account; with no ``selectors`` they may claim any selector."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # "APP" (every environment of it) or "APP/ENV", by name.
    scope: list[str] = Field(default_factory=list, max_length=64)
    scope_env_types: list[Literal["production", "non_production"]] = Field(
        default_factory=list, max_length=2
    )
    selectors: list[Selector] | None = Field(default=None, max_length=64)


class TokenView(Model):
    id: str
    name: str
    created_at: float
    revoked_at: float | None = None
    scope: TokenScopeView | None = None


class TokenCreated(TokenView):
    # Shown once; only its hash is kept.
    token: str


class ProfilePut(Model):
    """A delegate profile: run on every delegate whose selectors (or name) include these."""

    selectors: list[str] = Field(default_factory=list, max_length=64)
    script: str = Field(min_length=1, max_length=256 * 1024)
    interpreter: Literal["bash", "sh"] = "bash"


class ProfileView(Model):
    name: str
    selectors: list[str]
    script: str
    interpreter: str
    updated_at: float
    # How many live delegates the last change was sent to (0 on reads).
    runs_started: int = 0


class ProfileList(Model):
    profiles: list[ProfileView]

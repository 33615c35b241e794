"""Rows as the store returns them: plain frozen dataclasses, no database types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.protocol import TaskState

__all__ = [
    "AccessSettings",
    "AllowlistEntry",
    "ApiKeyRecord",
    "AttemptRecord",
    "DelegateRecord",
    "EntityRecord",
    "LeaseFor",
    "LogRecord",
    "Presence",
    "ProfileRecord",
    "Readable",
    "SecretManagerRecord",
    "SecretRecord",
    "SecretVersionRecord",
    "TaskFilter",
    "TaskRecord",
    "TokenRecord",
]


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    name: str
    token_hash: str
    created_at: float
    revoked_at: float | None = None
    # What delegates using it may claim and run (manager.core.eligibility.DelegateScope,
    # stored as JSON); None: the whole account, any selector.
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: str
    name: str
    prefix: str
    key_hash: str
    created_at: float
    revoked_at: float | None = None
    # Whom the key acts for. Until users exist: a free-text name, or a service account's.
    owner: str = ""
    owner_user_id: str | None = None
    service_account: bool = False
    # The user groups the key is narrowed to (enforced once groups exist); () narrows nothing.
    groups: tuple[str, ...] = ()
    max_qps: float = 1.0
    burst: int = 10
    expires_at: float | None = None
    # Written at most once a minute per key (manager.api.guards), so reads never wait on it.
    last_used_at: float | None = None
    # The actor id of whoever made it (None: made at first start, or before this was kept).
    created_by: str | None = None


@dataclass(frozen=True, slots=True)
class AllowlistEntry:
    """A CIDR range allowed to reach the user API, in its normalised form (10.0.0.0/8)."""

    id: str
    cidr: str
    description: str
    enabled: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class AccessSettings:
    """The install's access settings: one row, read by every replica."""

    allowlist_enabled: bool = False
    # Peers whose X-Forwarded-For is believed (CIDRs); nobody's by default.
    trusted_proxies: tuple[str, ...] = ()
    # What a new API key gets when its creator names no limit.
    api_key_max_qps: float = 1.0
    api_key_burst: int = 10
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class DelegateRecord:
    id: str
    name: str
    token_id: str
    hostname: str
    version: str
    protocol_version: int
    selectors: tuple[str, ...]
    task_types: tuple[str, ...]
    capacity: int
    public_key: str
    created_at: float
    last_seen: float
    # Set by an operator: no new tasks; kept across reconnects until resumed.
    draining: bool = False
    # As the delegate said at its last registration: "task_users" or "shared_user".
    isolation: str = "shared_user"


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: str
    type: str
    state: TaskState
    # The validated payload as JSON-able data; parsed into the protocol model at the edges.
    payload: dict[str, Any]
    selectors: tuple[str, ...]
    timeout_s: float
    queue_timeout_s: float
    max_attempts: int
    created_at: float
    attempt: int = 0
    delegate_id: str | None = None
    idempotency_key: str | None = None
    # Sensitive env, encrypted at rest with the manager's key (manager.vault); names listed.
    secret_env_sealed: str | None = None
    secret_env_names: tuple[str, ...] = ()
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    cancel_requested: bool = False
    deployment: dict[str, Any] | None = None
    # When the task last entered the queue: its queue timeout runs from here, so a task
    # requeued after a lost lease gets a full queue timeout again.
    queued_at: float | None = None
    # Until when the holder's lease runs, on the store's lease clock (the database's on
    # PostgreSQL, so replicas agree; SQLite's: manager.store.sqlite.lease_clock): renewed in
    # batches by the replica that hears the holder's heartbeats, and judged by any replica
    # (manager.tasks.service.TaskService.sweep). Written as a LeaseFor, never as a time.
    lease_until: float | None = None
    # With access control: the application and environment the task deploys to (ids), and
    # who submitted it (an actor id), whose permissions were checked at submission.
    app_id: str | None = None
    env_id: str | None = None
    submitted_by: str | None = None
    # The holder's name for the acquire that started this attempt: the same delegate asking
    # again with it (its answer was lost) is handed the same attempt again.
    acquire_key: str | None = None
    # What the submitter calls the task, and its labels (key -> value), to find it by.
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeaseFor:
    """A lease of ``seconds`` from now on the store's own clock: the value a task change
    gives ``lease_until``, so no replica's clock is written into a lease."""

    seconds: float


@dataclass(frozen=True, slots=True)
class EntityRecord:
    """A low-traffic configuration object (a user, a group, an application, an environment,
    a session) kept as a JSON document: ``key`` is unique within its ``kind`` (an email, a
    name, a token hash), and ``version`` guards every update (compare and set)."""

    kind: str
    id: str
    key: str
    body: dict[str, Any]
    version: int
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    """A startup script run on every delegate whose selectors (or name) cover these."""

    name: str
    selectors: tuple[str, ...]
    script: str
    interpreter: str
    updated_at: float


@dataclass(frozen=True, slots=True)
class Presence:
    """Where a delegate was last heard, by a replica that is itself alive."""

    delegate_id: str
    replica_id: str
    mode: str
    last_heartbeat: float


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    task_id: str
    attempt: int
    delegate_id: str
    started_at: float
    finished_at: float | None = None
    status: str | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A new task's claim, written with it (TaskStore.insert_task): its attempt's row, and
    the lease, counted from the insert on the store's clock as any claim's (LeaseFor)."""

    attempt: AttemptRecord
    lease_for: float


@dataclass(frozen=True, slots=True)
class LogRecord:
    attempt: int
    seq: int
    stream: str
    ts: float
    # What people read of the line; it is the line itself when ``data`` is None.
    text: str
    # The line's exact bytes, when they are not UTF-8 text free of NUL (shared.logbytes):
    # ``text`` is then their display form, each such byte U+FFFD.
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Readable:
    """The tasks a reader may see, as a listing's query filters them before its limit: a
    limit taken first and the page filtered after told, by how far a limit had to grow
    before the reader's own task showed, how many unreadable tasks matched, and when.
    Made from the reader's grants (manager.api.task_access.readable)."""

    # Tasks outside any application.
    outside: bool
    # The environments it may read, among every one that exists (``known``).
    envs: frozenset[str]
    known: frozenset[str]
    # Tasks of an environment deleted since, judged as production of their application:
    # all of them, or those of these applications.
    gone_all: bool
    gone_apps: frozenset[str]


@dataclass(frozen=True, slots=True)
class TaskFilter:
    state: TaskState | None = None
    delegate_id: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    app_id: str | None = None
    env_id: str | None = None
    # Deployment history: only tasks that carry deployment data, optionally of one service.
    deployments_only: bool = False
    service: str | None = None
    # ``delegate_id`` may name a delegate too (every delegate of that name).
    # Tasks by name, by labels (all of them), by the start of their id.
    name: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    id_prefix: str | None = None
    # Only the tasks a reader may see (None: every task).
    readable: Readable | None = None


BUILTIN_MANAGER_ID = "sm_builtin"


@dataclass(frozen=True, slots=True)
class SecretManagerRecord:
    """A place secrets are kept. The builtin one (``BUILTIN_MANAGER_ID``) always exists."""

    id: str
    name: str
    kind: str
    # Non-sensitive settings the kind takes (URL, key id, region, endpoint, ...).
    settings: dict[str, str]
    created_at: float
    updated_at: float
    # Name of a builtin secret whose value (a JSON object of strings) holds this manager's
    # credentials; None: the delegate's own environment.
    credentials_secret: str | None = None
    # Which delegates run its connection test and key operations.
    selectors: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True, slots=True)
class SecretRecord:
    """A named secret; its values are the versions, newest is ``current_version``."""

    id: str
    name: str
    manager_id: str
    type: str
    # "inline" (ciphertext kept here) or "reference" (the value stays in the customer's store)
    mode: str
    current_version: int
    created_at: float
    updated_at: float
    description: str = ""
    created_by: str | None = None


@dataclass(frozen=True, slots=True)
class SecretVersionRecord:
    secret_id: str
    version: int
    created_at: float
    # inline: shared.envelope.Envelope as JSON (ciphertext only); reference: None.
    envelope: str | None = None
    # reference: {"path": ..., "key": ... or None, "version": ... or None}; inline: None.
    ref: dict[str, str | None] | None = None
    # Bytes of plaintext for an inline version (metadata users may see); None for a reference.
    size: int | None = None
    # Who made it (an actor id once access control exists).
    created_by: str | None = None


@dataclass(frozen=True, slots=True)
class VerificationRecord:
    """One version of a named verification spec (shared.verify.spec), as JSON text."""

    name: str
    version: int
    spec: str
    created_at: float
    created_by: str | None = None

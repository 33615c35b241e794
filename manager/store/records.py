"""Rows as the store returns them: plain frozen dataclasses, no database types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.protocol import TaskState

__all__ = [
    "ApiKeyRecord",
    "AttemptRecord",
    "DelegateRecord",
    "LogRecord",
    "Presence",
    "ProfileRecord",
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


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: str
    name: str
    prefix: str
    key_hash: str
    created_at: float
    revoked_at: float | None = None


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
    # Until when the holder's lease runs: renewed in batches by the replica that hears the
    # holder's heartbeats, and judged by any replica (manager.service.TaskService.sweep).
    lease_until: float | None = None


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
class LogRecord:
    attempt: int
    seq: int
    stream: str
    ts: float
    text: str


@dataclass(frozen=True, slots=True)
class TaskFilter:
    state: TaskState | None = None
    delegate_id: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100

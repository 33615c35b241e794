"""The store interface. Nothing above it speaks SQL; SQLite and PostgreSQL implement it.

Task updates are compare-and-set on ``(state, attempt)``: the state machine
(:mod:`manager.taskstate`) decides from a snapshot, and the store applies the decision only
if the snapshot still holds. That makes acquire atomic (exactly one delegate wins) and keeps
a late message from an old attempt out, whichever replica handles it.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from typing import Any

from manager.store.records import (
    ApiKeyRecord,
    AttemptRecord,
    DelegateRecord,
    LogRecord,
    Presence,
    ProfileRecord,
    TaskFilter,
    TaskRecord,
    TokenRecord,
)
from shared.protocol import TaskState

__all__ = ["Conflict", "Store", "StoreError"]


class StoreError(Exception):
    """The database failed; the request that needed it gets a 503."""


class Conflict(StoreError):
    """A uniqueness rule was broken (a name in use)."""


class Store(abc.ABC):
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and run pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- settings: small values every replica must agree on (e.g. the session signing key)
    @abc.abstractmethod
    async def get_setting(self, key: str) -> str | None: ...

    @abc.abstractmethod
    async def put_setting_if_absent(self, key: str, value: str) -> str:
        """Store ``value`` unless the key exists; return the value that is stored."""

    # -- delegate tokens
    @abc.abstractmethod
    async def create_token(self, token: TokenRecord) -> None:
        """Raises :class:`Conflict` when an unrevoked token has the same name."""

    @abc.abstractmethod
    async def list_tokens(self) -> list[TokenRecord]: ...

    @abc.abstractmethod
    async def revoke_token(self, name: str, now: float) -> TokenRecord | None:
        """Revoke the live token of that name; None when there is none."""

    @abc.abstractmethod
    async def token_by_hash(self, token_hash: str) -> TokenRecord | None: ...

    @abc.abstractmethod
    async def revoked_token_ids(self, among: Iterable[str]) -> set[str]: ...

    # -- API keys
    @abc.abstractmethod
    async def create_api_key(self, key: ApiKeyRecord) -> None: ...

    @abc.abstractmethod
    async def api_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None: ...

    # -- delegates
    @abc.abstractmethod
    async def upsert_delegate(self, delegate: DelegateRecord) -> DelegateRecord:
        """Insert, or update the row with the same public key, keeping its id."""

    @abc.abstractmethod
    async def get_delegate(self, delegate_id: str) -> DelegateRecord | None: ...

    @abc.abstractmethod
    async def list_delegates(self) -> list[DelegateRecord]: ...

    @abc.abstractmethod
    async def set_draining(self, delegate_id: str, draining: bool) -> DelegateRecord | None: ...

    # -- tasks
    @abc.abstractmethod
    async def insert_task(
        self, task: TaskRecord, *, idempotency_window: float
    ) -> tuple[TaskRecord, bool]:
        """Insert, or return the task submitted with the same idempotency key within the
        window. The bool is True when a new row was written. Durable when it returns."""

    @abc.abstractmethod
    async def get_task(self, task_id: str) -> TaskRecord | None: ...

    @abc.abstractmethod
    async def list_tasks(self, flt: TaskFilter) -> list[TaskRecord]: ...

    @abc.abstractmethod
    async def tasks_in_states(self, states: Sequence[TaskState]) -> list[TaskRecord]: ...

    @abc.abstractmethod
    async def update_task(
        self,
        task_id: str,
        *,
        expect_state: TaskState,
        expect_attempt: int,
        changes: dict[str, Any],
        start_attempt: AttemptRecord | None = None,
        end_attempt_status: str | None = None,
        end_attempt_at: float | None = None,
    ) -> TaskRecord | None:
        """Apply ``changes`` if the task is still in ``expect_state`` at ``expect_attempt``.

        Returns the updated task, or None when the snapshot no longer held. In the same
        transaction it records a new attempt row, or closes the current one with a status
        at ``end_attempt_at`` (the manager's clock).
        """

    @abc.abstractmethod
    async def renew_leases(self, held: Sequence[tuple[str, str]], until: float) -> set[str]:
        """Extend to ``until`` the leases of running tasks held by the given delegates.

        ``held`` pairs a task id with the delegate whose heartbeat listed it. One call per
        interval per replica, not a write per heartbeat. Returns the task ids renewed: a
        listed task not among them is not (or no longer) that delegate's to run.
        """

    @abc.abstractmethod
    async def extend_leases(self, until: float) -> int:
        """Give every running task a lease until at least ``until`` (after a restart, so
        delegates have time to reconnect before their leases are judged)."""

    @abc.abstractmethod
    async def expired_leases(self, now: float, *, limit: int = 500) -> list[TaskRecord]:
        """Running tasks whose lease ran out before ``now``, oldest first."""

    @abc.abstractmethod
    async def put_profile(self, profile: ProfileRecord) -> None:
        """Create or replace the profile of that name."""

    @abc.abstractmethod
    async def delete_profile(self, name: str) -> bool: ...

    @abc.abstractmethod
    async def list_profiles(self) -> list[ProfileRecord]: ...

    @abc.abstractmethod
    async def record_presence(
        self, replica_id: str, started_at: float, now: float, seen: Sequence[Presence]
    ) -> None:
        """This replica's heartbeat row, and the delegates it heard: one transaction."""

    @abc.abstractmethod
    async def presence(self, since: float) -> dict[str, Presence]:
        """Delegates heard after ``since`` by a replica whose own heartbeat is after it."""

    @abc.abstractmethod
    async def attempts(self, task_id: str) -> list[AttemptRecord]: ...

    # -- logs
    @abc.abstractmethod
    async def append_logs(
        self, task_id: str, attempt: int, delegate_id: str, lines: Sequence[LogRecord]
    ) -> int:
        """Insert the lines not yet stored (idempotent by task, attempt and seq).

        Returns how many were new, or -1 when ``attempt`` is not the task's current attempt
        or ``delegate_id`` does not hold it (a stale holder, or a stranger), in which case
        nothing is written.
        """

    @abc.abstractmethod
    async def get_logs(
        self, task_id: str, *, after: tuple[int, int] | None, limit: int
    ) -> list[LogRecord]:
        """Lines in (attempt, seq) order, strictly after the ``after`` position."""

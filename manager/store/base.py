"""The store interface, one protocol per concern. Nothing above it speaks SQL; SQLite and
PostgreSQL implement it (:mod:`manager.store.sql` holds the SQL they share).

Task updates are compare-and-set on ``(state, attempt)``: the state machine
(:mod:`manager.core.taskstate`) decides from a snapshot, and the store applies the decision only
if the snapshot still holds. That makes acquire atomic (exactly one delegate wins) and keeps
a late message from an old attempt out, whichever replica handles it.

Audit events are chained in the transaction of the change they record: a write that changes
what the audit trail follows (a task submitted or cancelled, a delegate, a profile, a token,
an API key, the allowlist, an entity, a secret or secret manager, a saved filter) takes
``audit``, a function of the row it wrote to the event (``manager.core.audit_chain.
AuditOf``), and commits the change and its event together, or neither. The event is made
from the row as written, inside the transaction, so it describes what was committed.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from manager.core.audit_chain import (
    AuditDraft,
    AuditEvent,
    AuditOf,
    AuditQuery,
    ChainKey,
    SavedAuditFilter,
)
from manager.core.audit_checkpoint import AuditCheckpoint
from manager.records import (
    AccessSettings,
    AllowlistEntry,
    ApiKeyRecord,
    AttemptRecord,
    Claimed,
    DelegateRecord,
    EntityRecord,
    LogRecord,
    Presence,
    ProfileRecord,
    SecretManagerRecord,
    SecretRecord,
    SecretVersionRecord,
    TaskFilter,
    TaskRecord,
    TokenRecord,
    VerificationRecord,
)
from manager.store.health import WriteHealth
from shared.limits import MAX_LOG_PAGE_BYTES
from shared.protocol import TaskState

__all__ = [
    "ACCESS_SETTINGS",
    "API_KEYS",
    "EVERYTHING",
    "AccessStore",
    "AuditStore",
    "BadData",
    "ChangeWatcher",
    "Conflict",
    "DataKeyStore",
    "DiskFull",
    "EntityWrite",
    "SecretStore",
    "Store",
    "StoreError",
    "TaskStore",
    "check_envelope_versions",
    "check_first_version",
    "check_next_version",
]


@dataclass(frozen=True, slots=True)
class EntityWrite:
    """One write of several made together (:meth:`AccessStore.write_entities`): ``record``
    inserted (``expect_version`` None), replaced if its stored version is still
    ``expect_version``, or, with ``delete``, deleted (if still at ``expect_version`` when
    one is given)."""

    record: EntityRecord
    expect_version: int | None = None
    delete: bool = False


class StoreError(Exception):
    """The database failed; the request that needed it gets a 503."""


class BadData(StoreError):
    """The database refused a value of the request itself (text with a NUL, a value too
    large): trying again cannot help, so the request gets a 422 that says so, not a 503.

    The message names the kind of value, never the value: a driver's own message may quote
    it, and it may be a secret.
    """

    def __init__(self, what: str) -> None:
        super().__init__(f"the database refused a value in this request: {what}")


class DiskFull(StoreError):
    """The database's volume is full: writes fail until space is freed (a 503 that says so,
    and ``/readyz`` not ready meanwhile: manager.store.health)."""


class Conflict(StoreError):
    """A uniqueness rule was broken (a name in use), or a reference was: a secret naming a
    manager that is gone, a manager deleted while it keeps secrets."""


class TaskStore(abc.ABC):
    """Tasks, their attempts, leases and logs; the delegates that run them, their profiles
    and where each was last heard."""

    # -- delegates
    @abc.abstractmethod
    async def upsert_delegate(self, delegate: DelegateRecord) -> DelegateRecord | None:
        """Insert, or update the row with the same public key, keeping its id; None (and
        nothing written) when that key's row was registered with another token."""

    @abc.abstractmethod
    async def get_delegate(self, delegate_id: str) -> DelegateRecord | None: ...

    @abc.abstractmethod
    async def list_delegates(self) -> list[DelegateRecord]: ...

    @abc.abstractmethod
    async def delegates_named(self, name: str) -> list[DelegateRecord]: ...

    @abc.abstractmethod
    async def delete_delegate(self, delegate_id: str) -> bool: ...

    @abc.abstractmethod
    async def set_draining(self, delegate_id: str, draining: bool) -> DelegateRecord | None: ...

    @abc.abstractmethod
    async def set_draining_of(
        self,
        delegate_ids: Sequence[str],
        draining: bool,
        *,
        audit: AuditOf[list[DelegateRecord]] | None = None,
    ) -> list[DelegateRecord]:
        """Set ``draining`` on those of ``delegate_ids`` where it differs, in one statement;
        answers the rows it flipped (``audit``: of them; none flipped, no event)."""

    @abc.abstractmethod
    async def delete_delegates(
        self, delegate_ids: Sequence[str], *, audit: AuditOf[list[DelegateRecord]] | None = None
    ) -> list[DelegateRecord]:
        """Delete those of ``delegate_ids`` that exist, in one statement; answers the rows
        deleted (``audit``: of them; none deleted, no event)."""

    # -- tasks
    @abc.abstractmethod
    async def insert_task(
        self,
        task: TaskRecord,
        *,
        idempotency_window: float,
        audit: AuditOf[TaskRecord] | None = None,
        data_key: NewDataKey | None = None,
        claim: Claimed | None = None,
    ) -> tuple[TaskRecord, bool]:
        """Insert, or return the task submitted with the same idempotency key within the
        window. The bool is True when a new row was written. Durable when it returns.

        ``claim``: the task is written claimed (``task`` is running at ``claim``'s attempt),
        with that attempt's row and a lease of ``claim.lease_for`` seconds on the store's
        clock, in the same transaction; only when the row is new.

        Every write that takes ``audit`` chains the event it makes of the new (or changed)
        row in the same transaction, and only when it wrote one (module docstring).
        ``data_key``: the new task's data key (manager.tasks.sealing), stored in the same
        transaction, so a submission is one commit; the caller deletes it when the answer
        is an earlier task (it may have been stored)."""

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
        audit: AuditOf[TaskRecord] | None = None,
        skip_locked: bool = False,
    ) -> TaskRecord | None:
        """Apply ``changes`` if the task is still in ``expect_state`` at ``expect_attempt``.

        Returns the updated task, or None when the snapshot no longer held. In the same
        transaction it records a new attempt row, or closes the current one with a status
        at ``end_attempt_at`` (the manager's clock).

        ``skip_locked``: for a claim (a replica handing a queued task to one of its own
        delegates). On PostgreSQL the row is taken ``FOR UPDATE SKIP LOCKED``: when another
        transaction (another replica's claim) holds it, this answers None at once instead
        of waiting for that transaction to end and then missing; the caller goes on to
        another task, or another delegate. On SQLite, with one writer, nothing else holds a
        row: the same as without.
        """

    @abc.abstractmethod
    async def renew_leases(self, held: Sequence[tuple[str, str, float]]) -> set[str]:
        """Extend the leases of running tasks held by the given delegates.

        ``held`` is (task id, the delegate whose heartbeat listed it, seconds the lease may
        run from now). Leases are counted on the store's own clock (the database's on
        PostgreSQL), never a replica's. One call per interval per replica, not a write per
        heartbeat. Returns the task ids renewed: a listed task not among them is not (or no
        longer) that delegate's to run.
        """

    @abc.abstractmethod
    async def extend_leases(self, lease_for: float) -> int:
        """Give every running task a lease of at least ``lease_for`` seconds from now (after
        a restart, so delegates have time to reconnect before their leases are judged)."""

    @abc.abstractmethod
    async def expired_leases(self, *, limit: int = 500) -> list[TaskRecord]:
        """Running tasks whose lease ran out, by the store's clock, oldest first."""

    @abc.abstractmethod
    async def put_profile(
        self, profile: ProfileRecord, *, audit: AuditOf[ProfileRecord] | None = None
    ) -> None:
        """Create or replace the profile of that name (``audit``: of the row written)."""

    @abc.abstractmethod
    async def delete_profile(
        self, name: str, *, audit: AuditOf[ProfileRecord] | None = None
    ) -> bool: ...

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

    @abc.abstractmethod
    async def attempts_named(self, task_id: str) -> tuple[list[AttemptRecord], dict[str, str]]:
        """The task's attempts, and the names of their delegates still registered, by id
        (one read: a task view is built for every task shown and at each follow's end)."""

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
        self,
        task_id: str,
        *,
        after: tuple[int, int] | None,
        limit: int,
        max_bytes: int = MAX_LOG_PAGE_BYTES,
    ) -> list[LogRecord]:
        """Lines in (attempt, seq) order, strictly after the ``after`` position: at most
        ``limit`` of them and ``max_bytes`` of text, but always the first line there is."""


class SecretStore(abc.ABC):
    """Secret managers, secrets and their versions."""

    # -- secret managers (the builtin one is made by the migration and cannot be deleted)
    @abc.abstractmethod
    async def create_secret_manager(
        self,
        manager: SecretManagerRecord,
        *,
        entities: Sequence[EntityWrite] = (),
        audit: AuditOf[SecretManagerRecord] | None = None,
    ) -> None:
        """Raises :class:`Conflict` when the name is in use. ``entities``: entity writes that
        go with it (its usage scope), in its transaction: inserts, or deletes of any version.

        Every secret write takes ``audit``: its event, made of the row written (an insert's:
        the record given) and chained in its transaction; none when nothing was written."""

    @abc.abstractmethod
    async def get_secret_manager(self, manager_id: str) -> SecretManagerRecord | None: ...

    @abc.abstractmethod
    async def secret_manager_by_name(self, name: str) -> SecretManagerRecord | None: ...

    @abc.abstractmethod
    async def list_secret_managers(self) -> list[SecretManagerRecord]:
        """By name."""

    @abc.abstractmethod
    async def update_secret_manager(
        self, manager: SecretManagerRecord, *, audit: AuditOf[SecretManagerRecord] | None = None
    ) -> bool:
        """Replace the row with that id (name may change: Conflict when taken); False: gone.

        Every field but ``created_at``, which stays as first stored.
        """

    @abc.abstractmethod
    async def delete_secret_manager(
        self,
        manager_id: str,
        *,
        entities: Sequence[EntityWrite] = (),
        audit: AuditOf[SecretManagerRecord] | None = None,
    ) -> bool:
        """Raises :class:`Conflict` while secrets are kept in it; False when there is none."""

    # -- secrets and their versions
    @abc.abstractmethod
    async def create_secret(
        self,
        secret: SecretRecord,
        first: SecretVersionRecord,
        *,
        entities: Sequence[EntityWrite] = (),
        audit: AuditOf[SecretRecord] | None = None,
    ) -> None:
        """The secret with its version 1, in one transaction. Conflict: the name is taken, or
        ``secret.manager_id`` names no manager. ValueError unless ``first`` is version 1 of
        ``secret`` and ``secret.current_version`` is 1.
        """

    @abc.abstractmethod
    async def get_secret(self, secret_id: str) -> SecretRecord | None: ...

    @abc.abstractmethod
    async def secret_by_name(self, name: str) -> SecretRecord | None: ...

    @abc.abstractmethod
    async def secrets_by_name(self, names: Iterable[str]) -> dict[str, SecretRecord]:
        """The secrets among ``names`` that exist, in one query (the acquire path)."""

    @abc.abstractmethod
    async def list_secrets(self, *, manager_id: str | None = None) -> list[SecretRecord]:
        """By name; only those kept in ``manager_id`` when given."""

    @abc.abstractmethod
    async def add_secret_version(
        self,
        secret: SecretRecord,
        version: SecretVersionRecord,
        *,
        audit: AuditOf[SecretRecord] | None = None,
    ) -> SecretRecord | None:
        """Store ``version`` (numbered ``secret.current_version + 1``) and make it current,
        compare-and-set on ``secret.current_version``: None when another update came first
        or the secret is gone. Returns the updated secret, whose ``updated_at`` is
        ``version.created_at``. ValueError when ``version`` is not that number of ``secret``.
        """

    @abc.abstractmethod
    async def secret_versions(self, secret_id: str) -> list[SecretVersionRecord]:
        """Newest first."""

    @abc.abstractmethod
    async def get_secret_version(
        self, secret_id: str, version: int
    ) -> SecretVersionRecord | None: ...

    @abc.abstractmethod
    async def current_versions(self, secret_ids: Iterable[str]) -> dict[str, SecretVersionRecord]:
        """Each secret's current version, in one query (the acquire path)."""

    @abc.abstractmethod
    async def delete_secret(
        self,
        secret_id: str,
        *,
        entities: Sequence[EntityWrite] = (),
        audit: AuditOf[SecretRecord] | None = None,
    ) -> bool:
        """The secret and all its versions; False when there is none."""

    @abc.abstractmethod
    async def move_secret(
        self,
        secret: SecretRecord,
        manager_id: str,
        envelopes: dict[int, str],
        now: float,
        *,
        audit: AuditOf[SecretRecord] | None = None,
    ) -> SecretRecord | None:
        """Migration: keep ``secret`` in ``manager_id`` and replace the envelopes of the
        listed versions, in one transaction; compare-and-set on ``secret.current_version``
        and ``secret.manager_id`` (None when either changed meanwhile, or it is gone).
        Conflict: ``manager_id`` names no manager. ValueError: ``envelopes`` lists a version
        outside ``1..secret.current_version``.
        """

    @abc.abstractmethod
    async def envelopes_of_manager(self, manager_id: str) -> list[SecretVersionRecord]:
        """Every inline version of the secrets kept in ``manager_id`` (for key rotation)."""

    @abc.abstractmethod
    async def replace_envelope(self, secret_id: str, version: int, old: str, new: str) -> bool:
        """Swap one version's envelope, compare-and-set on the old text (key rotation).

        The manager is not checked: a secret moved meanwhile has new envelope texts, so the
        old text no longer matches.
        """

    @abc.abstractmethod
    async def clear_task_secret_env(self, task_id: str) -> None:
        """Forget a task's sealed env (a finished secret operation's data key)."""


# What a change notice names besides an entity kind (AccessStore.watch_changes): a revoked
# API key; the access settings or the allowlist; anything at all (notices may have been lost).
API_KEYS = "api_key"
ACCESS_SETTINGS = "access"
EVERYTHING = "*"

ChangeWatcher = Callable[[str], None]


class AccessStore(abc.ABC):
    """Who may act: settings, delegate tokens, API keys, the directory's entities, the
    access settings and the IP allowlist."""

    @abc.abstractmethod
    async def watch_changes(self, watcher: ChangeWatcher) -> None:
        """Call ``watcher(what)`` each time another process (a replica) commits a change to
        ``what``: an entity kind, :data:`API_KEYS` or :data:`ACCESS_SETTINGS`; with
        :data:`EVERYTHING` when notices may have been missed. Returns once notices are
        delivered. A store only this process writes (SQLite) has none to deliver."""

    # -- settings: small values every replica must agree on (e.g. the session signing key)
    @abc.abstractmethod
    async def get_setting(self, key: str) -> str | None: ...

    @abc.abstractmethod
    async def put_setting_if_absent(self, key: str, value: str) -> str:
        """Store ``value`` unless the key exists; return the value that is stored."""

    @abc.abstractmethod
    async def replace_setting(self, key: str, old: str, new: str) -> bool:
        """Set ``key`` to ``new`` if it holds ``old`` (compare-and-set); False if it did not."""

    # -- delegate tokens
    @abc.abstractmethod
    async def create_token(
        self, token: TokenRecord, *, audit: AuditOf[TokenRecord] | None = None
    ) -> None:
        """Raises :class:`Conflict` when an unrevoked token has the same name."""

    @abc.abstractmethod
    async def list_tokens(self) -> list[TokenRecord]: ...

    @abc.abstractmethod
    async def revoke_token(
        self, name: str, now: float, *, audit: AuditOf[TokenRecord] | None = None
    ) -> TokenRecord | None:
        """Revoke the live token of that name (``audit``: of the row revoked); None when
        there is none."""

    @abc.abstractmethod
    async def token_by_hash(self, token_hash: str) -> TokenRecord | None: ...

    @abc.abstractmethod
    async def revoked_token_ids(self, among: Iterable[str]) -> set[str]: ...

    @abc.abstractmethod
    async def token_by_id(self, token_id: str) -> TokenRecord | None: ...

    # -- API keys
    @abc.abstractmethod
    async def create_api_key(
        self, key: ApiKeyRecord, *, audit: AuditOf[ApiKeyRecord] | None = None
    ) -> None:
        """Raises :class:`Conflict` when a live (unrevoked) key has the same name."""

    @abc.abstractmethod
    async def api_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None: ...

    # -- api keys (owners, limits) and the IP allowlist
    @abc.abstractmethod
    async def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked ones too, oldest first."""

    @abc.abstractmethod
    async def revoke_api_key(
        self, name: str, now: float, *, audit: AuditOf[ApiKeyRecord] | None = None
    ) -> ApiKeyRecord | None:
        """Revoke the live key of that name; None when there is none."""

    @abc.abstractmethod
    async def touch_api_key(self, key_id: str, now: float, *, min_interval: float) -> None:
        """Set the key's last use to ``now`` unless it was set less than ``min_interval``
        ago (by any replica): a busy key costs one write a minute, not one per request."""

    @abc.abstractmethod
    async def access_settings(self) -> AccessSettings: ...

    @abc.abstractmethod
    async def update_access_settings(
        self,
        now: float,
        *,
        allowlist_enabled: bool | None = None,
        trusted_proxies: Sequence[str] | None = None,
        api_key_max_qps: float | None = None,
        api_key_burst: int | None = None,
        audit: AuditOf[AccessSettings] | None = None,
    ) -> AccessSettings:
        """Change the settings given (None: unchanged); return them all."""

    @abc.abstractmethod
    async def list_allowlist(self) -> list[AllowlistEntry]:
        """Every entry, enabled or not, oldest first."""

    @abc.abstractmethod
    async def add_allowlist_entry(
        self, entry: AllowlistEntry, *, audit: AuditOf[AllowlistEntry] | None = None
    ) -> None:
        """Raises :class:`Conflict` when an entry has the same CIDR."""

    @abc.abstractmethod
    async def set_allowlist_entry_enabled(
        self, entry_id: str, enabled: bool, *, audit: AuditOf[AllowlistEntry] | None = None
    ) -> AllowlistEntry | None: ...

    @abc.abstractmethod
    async def delete_allowlist_entry(
        self, entry_id: str, *, audit: AuditOf[AllowlistEntry] | None = None
    ) -> AllowlistEntry | None:
        """The entry removed; None when there was none."""

    # -- entities: users, groups, applications, environments, sessions (manager.access.directory)
    @abc.abstractmethod
    async def get_entity(self, kind: str, entity_id: str) -> EntityRecord | None: ...

    @abc.abstractmethod
    async def entity_by_key(self, kind: str, key: str) -> EntityRecord | None: ...

    @abc.abstractmethod
    async def list_entities(self, kind: str) -> list[EntityRecord]:
        """Every entity of ``kind``, oldest first."""

    @abc.abstractmethod
    async def insert_entity(
        self, entity: EntityRecord, *, audit: AuditOf[EntityRecord] | None = None
    ) -> None:
        """Store a new entity; :class:`Conflict` when its id or its key is taken."""

    @abc.abstractmethod
    async def update_entity(
        self,
        entity: EntityRecord,
        expect_version: int,
        *,
        audit: AuditOf[EntityRecord] | None = None,
    ) -> bool:
        """Replace the entity's key and body if its stored version is ``expect_version``
        (``entity.version`` is the new one); False when it changed or is gone since it was
        read. :class:`Conflict` when the new key is another entity's."""

    @abc.abstractmethod
    async def delete_entity(
        self, kind: str, entity_id: str, *, audit: AuditOf[EntityRecord] | None = None
    ) -> bool:
        """``audit`` is made of the row deleted."""

    @abc.abstractmethod
    async def purge_entities(
        self,
        kind: str,
        before: float,
        limit: int,
        *,
        audit: AuditOf[list[EntityRecord]] | None = None,
        key_owner: str | None = None,
    ) -> list[EntityRecord]:
        """Delete at most ``limit`` entities of ``kind`` last written before ``before``,
        the oldest first (a retention purge, in bounded batches); ``audit``: the event of
        the rows deleted, none when none were. ``key_owner``: the kind of data-key owner
        (``incident``): the deleted entities' keys (``<key_owner>:<id>``) go in the same
        transaction."""

    @abc.abstractmethod
    async def write_entities(
        self,
        writes: Sequence[EntityWrite],
        *,
        audit: AuditOf[list[EntityRecord | None]] | None = None,
    ) -> bool:
        """``writes`` in one transaction, with the event ``audit`` makes of the rows as
        written (a delete's: the row deleted; None for one that found none); False, and
        nothing written, when an update or a versioned delete found its entity changed or
        gone. :class:`Conflict` when an insert's or update's key is another entity's."""


class AuditStore(abc.ABC):
    """The hash-chained audit trail and saved audit filters."""

    # -- audit trail
    @abc.abstractmethod
    async def append_audit(self, draft: AuditDraft, key: ChainKey | None = None) -> AuditEvent:
        """Chain ``draft`` after the newest event and store it (core.audit_chain.seal), in one
        transaction that holds the chain's head: concurrent appends, from other replicas or
        a host-side command, each get the next seq in turn, so the chain never forks."""

    @abc.abstractmethod
    async def audit_head(self) -> tuple[int, str]:
        """The newest event's (seq, hash); ``(0, GENESIS)`` before the first."""

    @abc.abstractmethod
    async def list_audit(self, query: AuditQuery) -> list[AuditEvent]:
        """Up to ``query.limit`` matching events, by seq (newest first unless ascending)."""

    async def audit_events_all(
        self, query: AuditQuery | None = None, *, page: int = 500
    ) -> AsyncGenerator[AuditEvent, None]:
        """Every event matching ``query`` (default: all), oldest first, a page at a time, so
        verification and export never hold the whole trail."""
        base = replace(query or AuditQuery(), ascending=True, before=None, limit=page)
        after = base.after or 0
        while True:
            events = await self.list_audit(replace(base, after=after))
            for event in events:
                yield event
            if len(events) < page:
                return
            after = events[-1].seq

    @abc.abstractmethod
    async def create_audit_filter(
        self, saved: SavedAuditFilter, *, audit: AuditOf[SavedAuditFilter] | None = None
    ) -> None:
        """Raises :class:`Conflict` when its owner has a filter of that name."""

    @abc.abstractmethod
    async def get_audit_filter(self, owner: str, name: str) -> SavedAuditFilter | None: ...

    @abc.abstractmethod
    async def list_audit_filters(self, owner: str) -> list[SavedAuditFilter]:
        """The owner's filters, by name."""

    @abc.abstractmethod
    async def delete_audit_filter(
        self, owner: str, name: str, *, audit: AuditOf[SavedAuditFilter] | None = None
    ) -> SavedAuditFilter | None:
        """The filter deleted (``audit``: of it); None when there was none."""


@dataclass(frozen=True, slots=True)
class PurgeCandidate:
    """A task the purge looks at (manager.retention): one row of a page."""

    id: str
    created_at: float
    finished: bool
    finished_at: float | None
    logs_purged: bool


class RetentionStore(abc.ABC):
    """What retention deletes, in bounded batches (manager.store.sql.retention)."""

    @abc.abstractmethod
    async def purge_page(
        self,
        place: tuple[str, str] | None,
        cutoff: float,
        after: tuple[float, str],
        limit: int,
    ) -> list[PurgeCandidate]:
        """Up to ``limit`` tasks of ``place`` ((app id, env id); None: outside any
        application) made before ``cutoff``, after ``after`` (created_at, id), in order."""

    @abc.abstractmethod
    async def delete_task_logs(self, task_id: str, limit: int) -> int:
        """Delete up to ``limit`` of the task's log lines; how many went."""

    @abc.abstractmethod
    async def mark_logs_purged(self, task_id: str, now: float) -> bool:
        """Record that a finished task's lines are gone; False when it is not finished."""

    @abc.abstractmethod
    async def delete_finished_tasks(self, task_ids: Sequence[str]) -> int:
        """Delete those of the tasks that are finished (and their attempts), in one
        transaction; how many tasks went."""

    @abc.abstractmethod
    async def audit_checkpoints(self) -> list[AuditCheckpoint]:
        """Every checkpoint of the audit chain, oldest first."""

    @abc.abstractmethod
    async def add_audit_checkpoint(self, cp: AuditCheckpoint) -> None: ...

    @abc.abstractmethod
    async def audit_first_seq(self) -> int | None:
        """The oldest event's seq; None when there is none."""

    @abc.abstractmethod
    async def audit_last_before(self, ts: float) -> int | None:
        """The newest event's seq written before ``ts``; None when there is none."""

    @abc.abstractmethod
    async def audit_event_hash(self, seq: int) -> str | None: ...

    @abc.abstractmethod
    async def delete_audit_upto(self, upto: int, limit: int) -> int:
        """Delete the oldest events, up to ``limit`` of them, none after ``upto``."""


@dataclass(frozen=True, slots=True)
class NewDataKey:
    """A new owner's data key, wrapped, for a write to store with its first record."""

    owner: str
    wrapped: bytes
    created_at: float


class DataKeyStore(abc.ABC):
    """The wrapped data key of each owner of sealed records (manager.keys.data_keys)."""

    @abc.abstractmethod
    async def data_keys_of(self, owners: Sequence[str]) -> dict[str, bytes]:
        """The wrapped keys of those of ``owners`` that have one."""

    @abc.abstractmethod
    async def add_data_key(self, owner: str, wrapped: bytes, created_at: float) -> bytes:
        """Store ``wrapped`` as ``owner``'s key unless it has one already; the key it has
        now (another writer's, when two raced)."""

    @abc.abstractmethod
    async def data_keys_after(self, owner: str, limit: int) -> list[tuple[str, bytes]]:
        """A page of (owner, wrapped key), in owner order, after ``owner`` ("" first)."""

    @abc.abstractmethod
    async def replace_data_key(self, owner: str, old: bytes, new: bytes) -> bool:
        """Compare-and-set of ``owner``'s wrapped key; False when it was not ``old``."""

    @abc.abstractmethod
    async def delete_data_key(self, owner: str) -> bool:
        """Forget ``owner``'s key (its sealed records no longer open); False when none."""


class VerificationStore(abc.ABC):
    """Named verification specs, each change a new version (manager.verify)."""

    @abc.abstractmethod
    async def add_verification_version(
        self,
        name: str,
        spec: str,
        *,
        created_at: float,
        created_by: str | None,
        audit: AuditOf[VerificationRecord] | None = None,
    ) -> VerificationRecord:
        """The next version of ``name`` (1 for a new one); Conflict when another write took
        that version first."""

    @abc.abstractmethod
    async def verification(
        self, name: str, version: int | None = None
    ) -> VerificationRecord | None:
        """That version, or the latest."""

    @abc.abstractmethod
    async def list_verifications(self) -> list[VerificationRecord]:
        """The latest version of each, by name."""

    @abc.abstractmethod
    async def delete_verification(
        self, name: str, *, audit: AuditOf[VerificationRecord] | None = None
    ) -> bool:
        """Every version of ``name`` (``audit``: of the latest)."""


class Store(
    TaskStore, SecretStore, AccessStore, AuditStore, RetentionStore, DataKeyStore, VerificationStore
):
    """The whole store: every concern, over one database."""

    # Whether writes succeed; a backend reports each full-volume failure and each write.
    health: WriteHealth

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and run pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...


# Both stores run these before any SQL: a caller's mistake, not a database's.
def check_first_version(secret: SecretRecord, first: SecretVersionRecord) -> None:
    if (first.secret_id, first.version, secret.current_version) != (secret.id, 1, 1):
        raise ValueError(f"a new secret starts at version 1 of itself, not {first!r}")


def check_next_version(secret: SecretRecord, version: SecretVersionRecord) -> None:
    if (version.secret_id, version.version) != (secret.id, secret.current_version + 1):
        raise ValueError(
            f"the version after {secret.id} {secret.current_version} is"
            f" {secret.current_version + 1}, not {version.secret_id} {version.version}"
        )


def check_envelope_versions(secret: SecretRecord, envelopes: dict[int, str]) -> None:
    stray = sorted(n for n in envelopes if not 1 <= n <= secret.current_version)
    if stray:
        raise ValueError(f"{secret.id} has no version {stray}")

"""The schema, as one list of numbered migrations applied in order at start, on either store.

A migration is one text for both dialects, written with the ``{NAME}`` fragments of
:mod:`manager.store.sql.dialect` where their types differ (``{REAL}``, ``{JSON}``,
``{BOOL}``...), or a ``(sqlite, postgres)`` pair where the statements themselves differ. A
new migration is one entry appended here; ``schema_version`` means the same on both stores.

On PostgreSQL times are ``DOUBLE PRECISION`` seconds since the epoch (the records' floats,
unchanged) and JSON columns are ``JSONB``; on SQLite they are ``REAL`` and ``TEXT``.
"""

from __future__ import annotations

from collections.abc import Sequence

from manager.store.base import StoreError
from manager.store.sql.dialect import Dialect, fragments

__all__ = [
    "MIGRATIONS",
    "Migration",
    "MigrationFailed",
    "SchemaTooNew",
    "failed",
    "for_dialect",
    "pending",
]

# A version, and its text for both dialects or its (sqlite, postgres) pair.
Migration = tuple[int, str | tuple[str, str]]

MIGRATIONS: list[Migration] = [
    (
        1,
        """
        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);

        CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            created_at {REAL} NOT NULL,
            revoked_at {REAL}{TOKENS_SEQ}
        );
        -- One live token per name; revoked ones stay for the record.
        CREATE UNIQUE INDEX tokens_live_name ON tokens(name) WHERE revoked_at IS NULL;

        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            created_at {REAL} NOT NULL,
            revoked_at {REAL}
        );

        CREATE TABLE delegates (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            token_id TEXT NOT NULL,
            hostname TEXT NOT NULL,
            version TEXT NOT NULL,
            protocol_version INTEGER NOT NULL,
            selectors {JSON} NOT NULL,
            task_types {JSON} NOT NULL,
            capacity INTEGER NOT NULL,
            public_key TEXT NOT NULL UNIQUE,
            created_at {REAL} NOT NULL,
            last_seen {REAL} NOT NULL
        );

        CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            state TEXT NOT NULL,
            payload {JSON} NOT NULL,
            selectors {JSON} NOT NULL,
            timeout_s {REAL} NOT NULL,
            queue_timeout_s {REAL} NOT NULL,
            max_attempts INTEGER NOT NULL,
            created_at {REAL} NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            delegate_id TEXT,
            idempotency_key TEXT UNIQUE,
            secret_env_sealed TEXT,
            secret_env_names {JSON} NOT NULL DEFAULT '[]',
            started_at {REAL},
            finished_at {REAL},
            exit_code INTEGER,
            outputs {JSON} NOT NULL DEFAULT '{}',
            error TEXT,
            cancel_requested {BOOL} NOT NULL DEFAULT {FALSE},
            deployment {JSON}
        );
        -- Serves the queue (claims, sweeps) without walking finished rows.
        CREATE INDEX tasks_open ON tasks(state, created_at)
            WHERE state IN ('queued', 'running');
        CREATE INDEX tasks_created ON tasks(created_at);

        CREATE TABLE task_attempts (
            task_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            delegate_id TEXT NOT NULL,
            started_at {REAL} NOT NULL,
            finished_at {REAL},
            status TEXT,
            PRIMARY KEY (task_id, attempt)
        );

        CREATE TABLE task_logs (
            task_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            seq {BIGINT} NOT NULL,
            stream TEXT NOT NULL,
            ts {REAL} NOT NULL,
            text TEXT NOT NULL,
            PRIMARY KEY (task_id, attempt, seq)
        ){WITHOUT_ROWID};
        """,
    ),
    (2, "ALTER TABLE tasks ADD COLUMN queued_at {REAL}"),
    (
        3,
        """
        ALTER TABLE tasks ADD COLUMN lease_until {REAL};
        CREATE INDEX tasks_leases ON tasks(lease_until) WHERE state = 'running';
        """,
    ),
    (
        4,
        """
        -- Each replica's own heartbeat, and where each live delegate was last heard: so
        -- every replica can list delegates held by the others, and those of a dead one.
        CREATE TABLE replicas (
            id TEXT PRIMARY KEY,
            started_at {REAL} NOT NULL,
            heartbeat_at {REAL} NOT NULL
        );
        CREATE TABLE delegate_presence (
            delegate_id TEXT PRIMARY KEY,
            replica_id TEXT NOT NULL,
            mode TEXT NOT NULL,
            last_heartbeat {REAL} NOT NULL
        );
        """,
    ),
    (5, "ALTER TABLE delegates ADD COLUMN draining {BOOL} NOT NULL DEFAULT {FALSE}"),
    (
        6,
        """
        -- Startup scripts for delegates whose selectors (or name) match.
        CREATE TABLE profiles (
            name TEXT PRIMARY KEY,
            selectors TEXT NOT NULL,
            script TEXT NOT NULL,
            interpreter TEXT NOT NULL,
            updated_at {REAL} NOT NULL
        );
        """,
    ),
    (
        7,
        """
        -- Where secrets are kept. The builtin row is written here, with literal values, so
        -- that every database has it from this version on and the text never changes.
        CREATE TABLE secret_managers (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            settings {JSON} NOT NULL,
            credentials_secret TEXT,
            selectors {JSON} NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            created_at {REAL} NOT NULL,
            updated_at {REAL} NOT NULL
        );
        INSERT INTO secret_managers(id, name, kind, settings, selectors, created_at, updated_at)
            VALUES ('sm_builtin', 'builtin', 'builtin', '{}', '[]', 0, 0);

        -- No ON DELETE for manager_id: a manager that still keeps secrets stays.
        CREATE TABLE secrets (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            manager_id TEXT NOT NULL REFERENCES secret_managers(id),
            type TEXT NOT NULL,
            mode TEXT NOT NULL,
            current_version INTEGER NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            created_by TEXT,
            created_at {REAL} NOT NULL,
            updated_at {REAL} NOT NULL
        );
        CREATE INDEX secrets_manager ON secrets(manager_id);

        CREATE TABLE secret_versions (
            secret_id TEXT NOT NULL REFERENCES secrets(id) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            envelope TEXT,
            ref {JSON},
            size INTEGER,
            created_by TEXT,
            created_at {REAL} NOT NULL,
            PRIMARY KEY (secret_id, version)
        );
        """,
    ),
    (
        8,
        """
        -- The audit trail: one row per change, chained by hash (core.audit_chain). seq is the
        -- order of the chain; the head row holds the newest seq and hash, so appends take
        -- turns on it and a deleted tail shows against it.
        CREATE TABLE audit_events (
            seq {BIGINT} PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            ts {REAL} NOT NULL,
            actor_kind TEXT NOT NULL,
            actor_id TEXT NOT NULL,
            actor_name TEXT NOT NULL,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            client_ip TEXT NOT NULL,
            resource_type TEXT NOT NULL,
            resource_id TEXT NOT NULL,
            resource_name TEXT NOT NULL,
            app TEXT,
            action TEXT NOT NULL,
            summary TEXT NOT NULL,
            diff TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX audit_events_ts ON audit_events(ts);
        CREATE INDEX audit_events_resource ON audit_events(resource_type, resource_id);
        CREATE INDEX audit_events_actor ON audit_events(actor_id);
        CREATE TABLE audit_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq {BIGINT} NOT NULL,
            hash TEXT NOT NULL
        );
        -- Before the first event: seq 0, and the genesis hash (64 zeros, manager.core.audit_chain).
        INSERT INTO audit_head(id, seq, hash) VALUES (1, 0, {GENESIS});

        -- Saved audit queries, each user's own.
        CREATE TABLE audit_filters (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            name TEXT NOT NULL,
            query {JSON} NOT NULL,
            created_at {REAL} NOT NULL,
            UNIQUE (owner, name)
        );
        """,
    ),
    (
        9,
        """
        -- API keys: an owner, a group scope, a rate limit, an expiry and a last use.
        ALTER TABLE api_keys ADD COLUMN owner TEXT NOT NULL DEFAULT '';
        -- The owning user, once users exist; until then only the free-text owner.
        ALTER TABLE api_keys ADD COLUMN owner_user_id TEXT;
        ALTER TABLE api_keys ADD COLUMN service_account {BOOL} NOT NULL DEFAULT {FALSE};
        ALTER TABLE api_keys ADD COLUMN groups {JSON} NOT NULL DEFAULT '[]';
        ALTER TABLE api_keys ADD COLUMN max_qps {REAL} NOT NULL DEFAULT 1.0;
        ALTER TABLE api_keys ADD COLUMN burst INTEGER NOT NULL DEFAULT 10;
        ALTER TABLE api_keys ADD COLUMN expires_at {REAL};
        ALTER TABLE api_keys ADD COLUMN last_used_at {REAL};
        -- Until now the only keys were the admin keys made at first start: they keep the
        -- admin key's high limit (manager.access.tokens.ADMIN_MAX_QPS) rather than 1 QPS.
        UPDATE api_keys SET owner = 'admin', service_account = {TRUE}, max_qps = 10000.0,
            burst = 10000;
        -- Remaking admin-api-key left several live keys named "admin": older ones get their
        -- id in their name, so that names can be unique (revoke them by that name).
        UPDATE api_keys SET name = name || '-' || id
        WHERE revoked_at IS NULL AND EXISTS (
            SELECT 1 FROM api_keys AS newer
            WHERE newer.name = api_keys.name AND newer.revoked_at IS NULL
                AND (newer.created_at, newer.id) > (api_keys.created_at, api_keys.id)
        );
        -- One live key per name (revocation goes by name); revoked ones stay for the record.
        CREATE UNIQUE INDEX api_keys_live_name ON api_keys(name) WHERE revoked_at IS NULL;

        -- The IP allowlist: CIDRs in normalised form, each enabled or not.
        CREATE TABLE allowlist (
            id TEXT PRIMARY KEY,
            cidr TEXT NOT NULL UNIQUE,
            description TEXT NOT NULL DEFAULT '',
            enabled {BOOL} NOT NULL DEFAULT {TRUE},
            created_at {REAL} NOT NULL
        );
        -- The install's access settings, one row: the allowlist's switch, the proxies whose
        -- X-Forwarded-For is believed, and what a new API key gets by default.
        CREATE TABLE access_settings (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            allowlist_enabled {BOOL} NOT NULL DEFAULT {FALSE},
            trusted_proxies {JSON} NOT NULL DEFAULT '[]',
            api_key_max_qps {REAL} NOT NULL DEFAULT 1.0,
            api_key_burst INTEGER NOT NULL DEFAULT 10,
            updated_at {REAL} NOT NULL DEFAULT 0
        );
        INSERT INTO access_settings(id) VALUES (1);
        """,
    ),
    (
        10,
        """
        -- Users, user groups, applications, environments and sessions: low-traffic
        -- configuration kept as JSON documents (manager.access.directory). The key is unique per
        -- kind (an email, a name, a token hash); the version guards updates.
        CREATE TABLE entities (
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            key TEXT NOT NULL,
            body {JSON} NOT NULL,
            version INTEGER NOT NULL,
            created_at {REAL} NOT NULL,
            updated_at {REAL} NOT NULL,
            PRIMARY KEY (kind, id),
            UNIQUE (kind, key)
        );
        -- A task's application and environment, and who submitted it.
        ALTER TABLE tasks ADD COLUMN app_id TEXT;
        ALTER TABLE tasks ADD COLUMN env_id TEXT;
        ALTER TABLE tasks ADD COLUMN submitted_by TEXT;
        CREATE INDEX tasks_app_env ON tasks(app_id, env_id, created_at);
        -- Keys act through groups now: the admin keys, and the keys they made (owned by
        -- "admin"), keep acting as the administrators they were.
        UPDATE api_keys SET groups = '["Account Administrators"]'
        WHERE owner = 'admin' AND groups = '[]';
        """,
    ),
    (
        11,
        """
        -- A delegate token's scope (manager.core.eligibility.DelegateScope as JSON); NULL
        -- keeps the account-wide behaviour of the tokens made before scopes.
        ALTER TABLE tokens ADD COLUMN scope TEXT;
        -- Registration checks a delegate's name against the tokens it was registered with.
        CREATE INDEX delegates_name ON delegates(name);
        """,
    ),
    (
        12,
        """
        -- Idempotency keys are each principal's, in each place (manager.tasks.idempotency):
        -- the unique column holds the key behind its scope, the submitter, application and
        -- environment, joined by the unit separator. Existing keys are scoped to their
        -- task's submitter and place, so a replay by that submitter still finds its task.
        UPDATE tasks SET idempotency_key = coalesce(submitted_by, '') || {UNIT_SEP}
            || coalesce(app_id, '') || {UNIT_SEP} || coalesce(env_id, '') || {UNIT_SEP}
            || idempotency_key
        WHERE idempotency_key IS NOT NULL;
        -- Who made a key (a service account's keys are owned by the account itself).
        ALTER TABLE api_keys ADD COLUMN created_by TEXT;
        """,
    ),
    (
        13,
        """
        -- The audit chain is keyed (manager.core.audit_chain): each event names the key of
        -- its HMAC. NULL for the events written before, hashed with plain SHA-256.
        ALTER TABLE audit_events ADD COLUMN key_id TEXT;
        """,
    ),
    # How the delegate runs its tasks; a delegate registered before it said nothing.
    (14, "ALTER TABLE delegates ADD COLUMN isolation TEXT NOT NULL DEFAULT 'shared_user'"),
    # The holder's key for the acquire that started the attempt (manager.core.taskstate.
    # on_acquire): asking again with it after a lost answer hands out the same attempt.
    (15, "ALTER TABLE tasks ADD COLUMN acquire_key TEXT"),
    # A log line's exact bytes when they are not text (a NUL, invalid UTF-8): PostgreSQL's
    # text holds neither. ``text`` keeps the display form; the lines stored before were all
    # text, and stay as they are.
    (16, "ALTER TABLE task_logs ADD COLUMN data {BYTES}"),
    (
        17,
        """
        -- Retention (manager.retention): the tasks whose log lines were purged, their
        -- records kept longer. A table of its own, not a column of tasks: nothing on the
        -- task path reads or writes it.
        CREATE TABLE task_logs_purged (
            task_id TEXT PRIMARY KEY,
            purged_at {REAL} NOT NULL
        );
        -- Signed checkpoints of the audit chain at each purge's cut (core.audit_checkpoint).
        CREATE TABLE audit_checkpoints (
            seq {BIGINT} PRIMARY KEY,
            hash TEXT NOT NULL,
            key_id TEXT NOT NULL,
            created_at {REAL} NOT NULL,
            signature TEXT NOT NULL
        );
        """,
    ),
    # The data key of each owner of sealed records ("task:<id>", "incident:<id>",
    # "run:<id>"), wrapped by the master key (manager.keys.data_keys). Rows written before
    # this migration stay plaintext and are told apart by their format (docs/operations.md).
    (
        18,
        """
        CREATE TABLE data_keys (
            owner TEXT PRIMARY KEY,
            wrapped {BYTES} NOT NULL,
            created_at {REAL} NOT NULL
        )
        """,
    ),
    # A task's name and labels (tether task run --name --label k=v), to find it by.
    (
        19,
        """
        ALTER TABLE tasks ADD COLUMN name TEXT;
        ALTER TABLE tasks ADD COLUMN labels {JSON} NOT NULL DEFAULT '{}';
        CREATE INDEX tasks_name ON tasks(name) WHERE name IS NOT NULL;
        """,
    ),
]


def for_dialect(dialect: Dialect, migrations: list[Migration]) -> list[tuple[int, str]]:
    """Each migration's text as ``dialect`` runs it."""
    out = []
    for version, text in migrations:
        if isinstance(text, tuple):
            sqlite, postgres = text
            text = sqlite if dialect is Dialect.SQLITE else postgres
        out.append((version, fragments(text, dialect)))
    return out


# What the runners of both stores agree on: which migrations are pending, and refusing a
# database that a newer release has already migrated. An older manager on a newer schema
# would write rows the newer code's invariants do not expect (or miss columns it relies
# on), so it stops before its first write.


class SchemaTooNew(StoreError):
    """The database was migrated by a newer release than this one: nothing was written."""


class MigrationFailed(StoreError):
    """A migration failed; its transaction was rolled back, earlier ones stay applied."""


def pending(current: int, migrations: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """The migrations above ``current``, in order; SchemaTooNew when ``current`` is above
    every migration this release knows."""
    known = max((v for v, _ in migrations), default=0)
    if current > known:
        raise SchemaTooNew(
            f"the database is at schema version {current}, newer than this tether-manager"
            f" knows (up to {known}): run the release that migrated it, or a later one;"
            " nothing was written"
        )
    return [(v, sql) for v, sql in migrations if v > current]


def failed(version: int, current: int, exc: BaseException) -> MigrationFailed:
    """The error for migration ``version`` failing over a database at ``current``."""
    # The driver's message names the statement's problem, never row data.
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return MigrationFailed(
        f"migration {version} failed and was rolled back; the database stays at schema"
        f" version {current}: {reason}"
    )

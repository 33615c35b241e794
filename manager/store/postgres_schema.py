"""PostgreSQL schema, as numbered migrations applied in order at start.

The version numbers match :mod:`manager.store.sqlite_schema`, so ``schema_version`` means the
same thing on both stores. Times are ``DOUBLE PRECISION`` seconds since the epoch (the
records' floats, unchanged); JSON columns are ``JSONB``.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "OPEN_STATES"]

# The states the partial index ``tasks_open`` covers. A query must name them as literals (not
# as a bound array) for the planner to prove that the index applies.
OPEN_STATES = ("queued", "running")

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);

        CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION,
            -- Insertion order, to break ties on created_at as SQLite's rowid does.
            seq BIGINT GENERATED ALWAYS AS IDENTITY
        );
        -- One live token per name; revoked ones stay for the record.
        CREATE UNIQUE INDEX tokens_live_name ON tokens(name) WHERE revoked_at IS NULL;

        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION
        );

        CREATE TABLE delegates (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            token_id TEXT NOT NULL,
            hostname TEXT NOT NULL,
            version TEXT NOT NULL,
            protocol_version INTEGER NOT NULL,
            selectors JSONB NOT NULL,
            task_types JSONB NOT NULL,
            capacity INTEGER NOT NULL,
            public_key TEXT NOT NULL UNIQUE,
            created_at DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL
        );

        CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            state TEXT NOT NULL,
            payload JSONB NOT NULL,
            selectors JSONB NOT NULL,
            timeout_s DOUBLE PRECISION NOT NULL,
            queue_timeout_s DOUBLE PRECISION NOT NULL,
            max_attempts INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            delegate_id TEXT,
            idempotency_key TEXT UNIQUE,
            secret_env_sealed TEXT,
            secret_env_names JSONB NOT NULL DEFAULT '[]',
            started_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            exit_code INTEGER,
            outputs JSONB NOT NULL DEFAULT '{}',
            error TEXT,
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
            deployment JSONB
        );
        -- Serves the queue (claims, sweeps) without walking finished rows. Queries order by
        -- created_at, which this index covers: ordering by the primary key alone made the
        -- planner walk the whole key index, ten times slower over 20,000 tasks.
        CREATE INDEX tasks_open ON tasks(state, created_at)
            WHERE state IN ('queued', 'running');
        CREATE INDEX tasks_created ON tasks(created_at);

        CREATE TABLE task_attempts (
            task_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            delegate_id TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            finished_at DOUBLE PRECISION,
            status TEXT,
            PRIMARY KEY (task_id, attempt)
        );

        CREATE TABLE task_logs (
            task_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            seq BIGINT NOT NULL,
            stream TEXT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            text TEXT NOT NULL,
            PRIMARY KEY (task_id, attempt, seq)
        );
        """,
    ),
    (2, "ALTER TABLE tasks ADD COLUMN queued_at DOUBLE PRECISION"),
    (
        3,
        """
        ALTER TABLE tasks ADD COLUMN lease_until DOUBLE PRECISION;
        CREATE INDEX tasks_leases ON tasks(lease_until) WHERE state = 'running';
        """,
    ),
    (
        4,
        """
        CREATE TABLE replicas (
            id TEXT PRIMARY KEY,
            started_at DOUBLE PRECISION NOT NULL,
            heartbeat_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE delegate_presence (
            delegate_id TEXT PRIMARY KEY,
            replica_id TEXT NOT NULL,
            mode TEXT NOT NULL,
            last_heartbeat DOUBLE PRECISION NOT NULL
        );
        """,
    ),
    (5, "ALTER TABLE delegates ADD COLUMN draining BOOLEAN NOT NULL DEFAULT FALSE"),
    (
        6,
        """
        -- Startup scripts for delegates whose selectors (or name) match.
        CREATE TABLE profiles (
            name TEXT PRIMARY KEY,
            selectors TEXT NOT NULL,
            script TEXT NOT NULL,
            interpreter TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        """,
    ),
]

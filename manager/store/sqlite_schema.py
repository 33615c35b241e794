"""SQLite schema, as numbered migrations applied in order at start."""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);

        CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            revoked_at REAL
        );
        -- One live token per name; revoked ones stay for the record.
        CREATE UNIQUE INDEX tokens_live_name ON tokens(name) WHERE revoked_at IS NULL;

        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            revoked_at REAL
        );

        CREATE TABLE delegates (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            token_id TEXT NOT NULL,
            hostname TEXT NOT NULL,
            version TEXT NOT NULL,
            protocol_version INTEGER NOT NULL,
            selectors TEXT NOT NULL,
            task_types TEXT NOT NULL,
            capacity INTEGER NOT NULL,
            public_key TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            last_seen REAL NOT NULL
        );

        CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            state TEXT NOT NULL,
            payload TEXT NOT NULL,
            selectors TEXT NOT NULL,
            timeout_s REAL NOT NULL,
            queue_timeout_s REAL NOT NULL,
            max_attempts INTEGER NOT NULL,
            created_at REAL NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            delegate_id TEXT,
            idempotency_key TEXT UNIQUE,
            secret_env_sealed TEXT,
            secret_env_names TEXT NOT NULL DEFAULT '[]',
            started_at REAL,
            finished_at REAL,
            exit_code INTEGER,
            outputs TEXT NOT NULL DEFAULT '{}',
            error TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            deployment TEXT
        );
        -- Serves the queue (claims, sweeps) without walking finished rows.
        CREATE INDEX tasks_open ON tasks(state, created_at)
            WHERE state IN ('queued', 'running');
        CREATE INDEX tasks_created ON tasks(created_at);

        CREATE TABLE task_attempts (
            task_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            delegate_id TEXT NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL,
            status TEXT,
            PRIMARY KEY (task_id, attempt)
        );

        CREATE TABLE task_logs (
            task_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            stream TEXT NOT NULL,
            ts REAL NOT NULL,
            text TEXT NOT NULL,
            PRIMARY KEY (task_id, attempt, seq)
        ) WITHOUT ROWID;
        """,
    ),
    (2, "ALTER TABLE tasks ADD COLUMN queued_at REAL"),
    (
        3,
        """
        ALTER TABLE tasks ADD COLUMN lease_until REAL;
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
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL
        );
        CREATE TABLE delegate_presence (
            delegate_id TEXT PRIMARY KEY,
            replica_id TEXT NOT NULL,
            mode TEXT NOT NULL,
            last_heartbeat REAL NOT NULL
        );
        """,
    ),
    (5, "ALTER TABLE delegates ADD COLUMN draining INTEGER NOT NULL DEFAULT 0"),
    (
        6,
        """
        -- Startup scripts for delegates whose selectors (or name) match.
        CREATE TABLE profiles (
            name TEXT PRIMARY KEY,
            selectors TEXT NOT NULL,
            script TEXT NOT NULL,
            interpreter TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        """,
    ),
]

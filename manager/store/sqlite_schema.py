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
    (
        7,
        """
        -- Where secrets are kept. The builtin row is written here, with literal values, so
        -- that every database has it from this version on and the text never changes.
        CREATE TABLE secret_managers (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            settings TEXT NOT NULL,
            credentials_secret TEXT,
            selectors TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
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
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX secrets_manager ON secrets(manager_id);

        CREATE TABLE secret_versions (
            secret_id TEXT NOT NULL REFERENCES secrets(id) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            envelope TEXT,
            ref TEXT,
            size INTEGER,
            created_by TEXT,
            created_at REAL NOT NULL,
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
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            ts REAL NOT NULL,
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
            seq INTEGER NOT NULL,
            hash TEXT NOT NULL
        );
        -- Before the first event: seq 0, and the genesis hash (64 zeros, manager.core.audit_chain).
        INSERT INTO audit_head(id, seq, hash) VALUES (1, 0, hex(zeroblob(32)));

        -- Saved audit queries, each user's own.
        CREATE TABLE audit_filters (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            name TEXT NOT NULL,
            query TEXT NOT NULL,
            created_at REAL NOT NULL,
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
        ALTER TABLE api_keys ADD COLUMN service_account INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE api_keys ADD COLUMN groups TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE api_keys ADD COLUMN max_qps REAL NOT NULL DEFAULT 1.0;
        ALTER TABLE api_keys ADD COLUMN burst INTEGER NOT NULL DEFAULT 10;
        ALTER TABLE api_keys ADD COLUMN expires_at REAL;
        ALTER TABLE api_keys ADD COLUMN last_used_at REAL;
        -- Until now the only keys were the admin keys made at first start: they keep the
        -- admin key's high limit (manager.access.tokens.ADMIN_MAX_QPS) rather than 1 QPS.
        UPDATE api_keys SET owner = 'admin', service_account = 1, max_qps = 10000.0,
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
            enabled INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL
        );
        -- The install's access settings, one row: the allowlist's switch, the proxies whose
        -- X-Forwarded-For is believed, and what a new API key gets by default.
        CREATE TABLE access_settings (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            allowlist_enabled INTEGER NOT NULL DEFAULT 0,
            trusted_proxies TEXT NOT NULL DEFAULT '[]',
            api_key_max_qps REAL NOT NULL DEFAULT 1.0,
            api_key_burst INTEGER NOT NULL DEFAULT 10,
            updated_at REAL NOT NULL DEFAULT 0
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
            body TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
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
]

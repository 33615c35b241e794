--
-- PostgreSQL database dump
--

\restrict inyRdqn9IYVTUnxzAE2bWIjJ9TCmZycoWJLjRuyEIMlFRXYsZkOFFTNWRRr9IHg

-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: @SCHEMA@; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA @SCHEMA@;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: access_settings; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.access_settings (
    id integer NOT NULL,
    allowlist_enabled boolean DEFAULT false NOT NULL,
    trusted_proxies jsonb DEFAULT '[]'::jsonb NOT NULL,
    api_key_max_qps double precision DEFAULT 1.0 NOT NULL,
    api_key_burst integer DEFAULT 10 NOT NULL,
    updated_at double precision DEFAULT 0 NOT NULL,
    CONSTRAINT access_settings_id_check CHECK ((id = 1))
);


--
-- Name: allowlist; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.allowlist (
    id text NOT NULL,
    cidr text NOT NULL,
    description text DEFAULT ''::text NOT NULL,
    enabled boolean DEFAULT true NOT NULL,
    created_at double precision NOT NULL
);


--
-- Name: api_keys; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.api_keys (
    id text NOT NULL,
    name text NOT NULL,
    prefix text NOT NULL,
    key_hash text NOT NULL,
    created_at double precision NOT NULL,
    revoked_at double precision,
    owner text DEFAULT ''::text NOT NULL,
    owner_user_id text,
    service_account boolean DEFAULT false NOT NULL,
    groups jsonb DEFAULT '[]'::jsonb NOT NULL,
    max_qps double precision DEFAULT 1.0 NOT NULL,
    burst integer DEFAULT 10 NOT NULL,
    expires_at double precision,
    last_used_at double precision
);


--
-- Name: audit_events; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.audit_events (
    seq bigint NOT NULL,
    id text NOT NULL,
    ts double precision NOT NULL,
    actor_kind text NOT NULL,
    actor_id text NOT NULL,
    actor_name text NOT NULL,
    method text NOT NULL,
    path text NOT NULL,
    client_ip text NOT NULL,
    resource_type text NOT NULL,
    resource_id text NOT NULL,
    resource_name text NOT NULL,
    app text,
    action text NOT NULL,
    summary text NOT NULL,
    diff text NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL
);


--
-- Name: audit_filters; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.audit_filters (
    id text NOT NULL,
    owner text NOT NULL,
    name text NOT NULL,
    query jsonb NOT NULL,
    created_at double precision NOT NULL
);


--
-- Name: audit_head; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.audit_head (
    id integer NOT NULL,
    seq bigint NOT NULL,
    hash text NOT NULL,
    CONSTRAINT audit_head_id_check CHECK ((id = 1))
);


--
-- Name: delegate_presence; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.delegate_presence (
    delegate_id text NOT NULL,
    replica_id text NOT NULL,
    mode text NOT NULL,
    last_heartbeat double precision NOT NULL
);


--
-- Name: delegates; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.delegates (
    id text NOT NULL,
    name text NOT NULL,
    token_id text NOT NULL,
    hostname text NOT NULL,
    version text NOT NULL,
    protocol_version integer NOT NULL,
    selectors jsonb NOT NULL,
    task_types jsonb NOT NULL,
    capacity integer NOT NULL,
    public_key text NOT NULL,
    created_at double precision NOT NULL,
    last_seen double precision NOT NULL,
    draining boolean DEFAULT false NOT NULL
);


--
-- Name: entities; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.entities (
    kind text NOT NULL,
    id text NOT NULL,
    key text NOT NULL,
    body jsonb NOT NULL,
    version integer NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);


--
-- Name: profiles; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.profiles (
    name text NOT NULL,
    selectors text NOT NULL,
    script text NOT NULL,
    interpreter text NOT NULL,
    updated_at double precision NOT NULL
);


--
-- Name: replicas; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.replicas (
    id text NOT NULL,
    started_at double precision NOT NULL,
    heartbeat_at double precision NOT NULL
);


--
-- Name: schema_version; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.schema_version (
    version integer NOT NULL,
    applied_at double precision DEFAULT EXTRACT(epoch FROM now()) NOT NULL
);


--
-- Name: secret_managers; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.secret_managers (
    id text NOT NULL,
    name text NOT NULL,
    kind text NOT NULL,
    settings jsonb NOT NULL,
    credentials_secret text,
    selectors jsonb NOT NULL,
    description text DEFAULT ''::text NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);


--
-- Name: secret_versions; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.secret_versions (
    secret_id text NOT NULL,
    version integer NOT NULL,
    envelope text,
    ref jsonb,
    size integer,
    created_by text,
    created_at double precision NOT NULL
);


--
-- Name: secrets; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.secrets (
    id text NOT NULL,
    name text NOT NULL,
    manager_id text NOT NULL,
    type text NOT NULL,
    mode text NOT NULL,
    current_version integer NOT NULL,
    description text DEFAULT ''::text NOT NULL,
    created_by text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);


--
-- Name: settings; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.settings (
    key text NOT NULL,
    value text NOT NULL
);


--
-- Name: task_attempts; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.task_attempts (
    task_id text NOT NULL,
    attempt integer NOT NULL,
    delegate_id text NOT NULL,
    started_at double precision NOT NULL,
    finished_at double precision,
    status text
);


--
-- Name: task_logs; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.task_logs (
    task_id text NOT NULL,
    attempt integer NOT NULL,
    seq bigint NOT NULL,
    stream text NOT NULL,
    ts double precision NOT NULL,
    text text NOT NULL
);


--
-- Name: tasks; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.tasks (
    id text NOT NULL,
    type text NOT NULL,
    state text NOT NULL,
    payload jsonb NOT NULL,
    selectors jsonb NOT NULL,
    timeout_s double precision NOT NULL,
    queue_timeout_s double precision NOT NULL,
    max_attempts integer NOT NULL,
    created_at double precision NOT NULL,
    attempt integer DEFAULT 0 NOT NULL,
    delegate_id text,
    idempotency_key text,
    secret_env_sealed text,
    secret_env_names jsonb DEFAULT '[]'::jsonb NOT NULL,
    started_at double precision,
    finished_at double precision,
    exit_code integer,
    outputs jsonb DEFAULT '{}'::jsonb NOT NULL,
    error text,
    cancel_requested boolean DEFAULT false NOT NULL,
    deployment jsonb,
    queued_at double precision,
    lease_until double precision,
    app_id text,
    env_id text,
    submitted_by text
);


--
-- Name: tokens; Type: TABLE; Schema: @SCHEMA@; Owner: -
--

CREATE TABLE @SCHEMA@.tokens (
    id text NOT NULL,
    name text NOT NULL,
    token_hash text NOT NULL,
    created_at double precision NOT NULL,
    revoked_at double precision,
    seq bigint NOT NULL
);


--
-- Name: tokens_seq_seq; Type: SEQUENCE; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE @SCHEMA@.tokens ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME @SCHEMA@.tokens_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Data for Name: access_settings; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.access_settings (id, allowlist_enabled, trusted_proxies, api_key_max_qps, api_key_burst, updated_at) FROM stdin;
1	f	[]	1	10	0
\.


--
-- Data for Name: allowlist; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.allowlist (id, cidr, description, enabled, created_at) FROM stdin;
\.


--
-- Data for Name: api_keys; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.api_keys (id, name, prefix, key_hash, created_at, revoked_at, owner, owner_user_id, service_account, groups, max_qps, burst, expires_at, last_used_at) FROM stdin;
key_01a24c632d790c1cd16550552015	admin	tak_Jy9l	36d643188b80db68e8ca340e4ba3200f3eb5cf85425495d607947a1e1b79b6d2	1796577897.8496463	\N	admin	\N	t	["Account Administrators"]	10000	10000	\N	1796577900.3775725
\.


--
-- Data for Name: audit_events; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.audit_events (seq, id, ts, actor_kind, actor_id, actor_name, method, path, client_ip, resource_type, resource_id, resource_name, app, action, summary, diff, prev_hash, hash) FROM stdin;
1	aud_01a24c632d809ac803c4c4e6b993	1796577897.8565683	system	system	system	START	tether-manager serve (admin-api-key)	local	api_key	key_01a24c632d790c1cd16550552015	admin	\N	create	created admin API key admin	before: null\nafter:\n  id: key_01a24c632d790c1cd16550552015\n  name: admin\n  prefix: tak_Jy9l\n  owner: admin\n  service_account: true\n  groups:\n  - Account Administrators\n  max_qps: 10000.0\n	0000000000000000000000000000000000000000000000000000000000000000	f28b65416036a8c3081e685086835fb58767589feafbd8d50d2a370787e16d23
2	aud_01a24c63377c3a938b8d37a379b3	1796577900.412003	api_key	key_01a24c632d790c1cd16550552015	admin	POST	/api/v1/users	127.0.0.1	user	usr_01a24c633778e7b2c371d432275e	alice@example.com	\N	create	invited user alice@example.com	before: null\nafter:\n  id: usr_01a24c633778e7b2c371d432275e\n  email: alice@example.com\n  name: Alice\n  status: invited\n  source: local\n  groups: []\n  totp_enabled: false\n  created_at: 1796577900.4081306\n  invite_expires_at: 1797182700.4006479\n	f28b65416036a8c3081e685086835fb58767589feafbd8d50d2a370787e16d23	a0a414faff17f2d70b237a23a7e00f9e7cb9b7a95b5718dd537742b5edbff2f6
3	aud_01a24c633f34bc47ddc99eb4d039	1796577902.3884995	api_key	key_01a24c632d790c1cd16550552015	admin	POST	/api/v1/secrets	127.0.0.1	secret	sec_01a24c633f0c5fb69201505cd748	db-password	\N	create	created secret db-password in builtin (inline)	before: null\nafter:\n  id: sec_01a24c633f0c5fb69201505cd748\n  name: db-password\n  manager: builtin\n  manager_kind: builtin\n  type: text\n  mode: inline\n  current_version: 1\n  description: ''\n  created_by: null\n  created_at: 1796577902.348996\n  updated_at: 1796577902.348996\n  scope: null\n	a0a414faff17f2d70b237a23a7e00f9e7cb9b7a95b5718dd537742b5edbff2f6	d673cb53eb5b7132c7a0486f1d85bc94a6e0a66dc56f16306b19b08981ce057a
4	aud_01a24c634befaa700e505ff0b4f9	1796577905.6473145	system	system	system	CLI	tether-manager token create d1	local	token	tok_01a24c634be26a3c115b8290a485	d1	\N	create	created delegate token d1 on the manager host	before: null\nafter:\n  id: tok_01a24c634be26a3c115b8290a485\n  name: d1\n  created_at: 1796577905.634417\n  revoked_at: null\n	d673cb53eb5b7132c7a0486f1d85bc94a6e0a66dc56f16306b19b08981ce057a	90d7c65cbc65e09110f129618fcd400771b5925fee76f1acf9e6dd6d502680f3
5	aud_01a24c6358941afe427d655f6962	1796577908.884841	api_key	key_01a24c632d790c1cd16550552015	admin	POST	/api/v1/tasks	127.0.0.1	task	task_01a24c63588b702f0a99f6efcde5	shell task	\N	create	submitted shell task task_01a24c63588b702f0a99f6efcde5	before: null\nafter:\n  id: task_01a24c63588b702f0a99f6efcde5\n  type: shell\n  state: queued\n  payload:\n    type: shell\n    script: sh -c 'echo "hello from the old release"; printf %s "$PW" | sha256sum'\n    interpreter: bash\n    env:\n      PW: ${secrets.getValue("db-password")}\n    working_dir: null\n    credential_secrets: []\n  selectors:\n  - upgrade\n  secret_env_names: []\n  timeout_s: 600.0\n  queue_timeout_s: 300.0\n  max_attempts: 1\n  idempotency_key: null\n  deployment: null\n  app_id: null\n  env_id: null\n	90d7c65cbc65e09110f129618fcd400771b5925fee76f1acf9e6dd6d502680f3	7d2d1b30cf23d63cd528e5ae5d5e8c72743af5cb50469670a7e0fd774a138519
\.


--
-- Data for Name: audit_filters; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.audit_filters (id, owner, name, query, created_at) FROM stdin;
\.


--
-- Data for Name: audit_head; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.audit_head (id, seq, hash) FROM stdin;
1	5	7d2d1b30cf23d63cd528e5ae5d5e8c72743af5cb50469670a7e0fd774a138519
\.


--
-- Data for Name: delegate_presence; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.delegate_presence (delegate_id, replica_id, mode, last_heartbeat) FROM stdin;
\.


--
-- Data for Name: delegates; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.delegates (id, name, token_id, hostname, version, protocol_version, selectors, task_types, capacity, public_key, created_at, last_seen, draining) FROM stdin;
dlg_01a24c635307d07caf4f48ea2982	d1	tok_01a24c634be26a3c115b8290a485	vm	0.1.0	1	["upgrade"]	["shell", "http", "capability", "secret_op"]	4	htCcs6Mow7cmFl82QJJnM2GNnoYvV6iGnrwzPOKYOFM=	1796577907.463054	1796577907.463054	f
\.


--
-- Data for Name: entities; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.entities (kind, id, key, body, version, created_at, updated_at) FROM stdin;
group	grp_admins	Account Administrators	{"name": "Account Administrators", "description": "every account permission, every action on every application", "app_permissions": [{"apps": "all", "envs": "all", "actions": ["create", "read", "update", "delete", "execute"]}], "account_permissions": ["manage_users", "manage_user_groups", "manage_delegates", "manage_secrets", "manage_secret_managers", "manage_api_keys", "manage_applications", "manage_governance", "view_audit"]}	1	1796577897.8691676	1796577897.8691676
user	usr_01a24c633778e7b2c371d432275e	alice@example.com	{"name": "Alice", "email": "alice@example.com", "groups": [], "source": "local", "status": "invited", "invite_hash": "2e590db49301244b8920cb15a8eb6dcd320dd39d2529f2ac034d035e70231238", "totp_sealed": null, "locked_until": null, "totp_enabled": false, "failed_logins": 0, "last_login_at": null, "password_hash": null, "totp_last_step": null, "recovery_hashes": [], "invite_expires_at": 1797182700.4006479, "password_changed_at": null, "totp_pending_sealed": null}	1	1796577900.4081306	1796577900.4081306
\.


--
-- Data for Name: profiles; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.profiles (name, selectors, script, interpreter, updated_at) FROM stdin;
\.


--
-- Data for Name: replicas; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.replicas (id, started_at, heartbeat_at) FROM stdin;
rep_01a24c632da236c87ddf1160f079	1796577897.8904603	1796577899.6742053
\.


--
-- Data for Name: schema_version; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.schema_version (version, applied_at) FROM stdin;
1	1796577897.536865
2	1796577897.536865
3	1796577897.536865
4	1796577897.536865
5	1796577897.536865
6	1796577897.536865
7	1796577897.536865
8	1796577897.536865
9	1796577897.536865
10	1796577897.536865
\.


--
-- Data for Name: secret_managers; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.secret_managers (id, name, kind, settings, credentials_secret, selectors, description, created_at, updated_at) FROM stdin;
sm_builtin	builtin	builtin	{}	\N	[]		0	0
\.


--
-- Data for Name: secret_versions; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.secret_versions (secret_id, version, envelope, ref, size, created_by, created_at) FROM stdin;
sec_01a24c633f0c5fb69201505cd748	1	{"blob":"AXyUW+qaO1esqHH1aowQU+N91nRsr/UxpHPHPXJNYb/2qKsEdwu5IN0dNkvhXwD+gwcoIP8zZerQHLJB9/UQx9Qz","format":1,"kek_id":"k1","kek_kind":"builtin","wrapped_key":"AwJrMcV3STPZ9UirKlesiyrfNfws9iSa0TosW15P3sjCzyJIyVlDcTET7EHEUNnA2T16Qou76vK1VQWjXc94hQ=="}	\N	37	\N	1796577902.3496554
\.


--
-- Data for Name: secrets; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.secrets (id, name, manager_id, type, mode, current_version, description, created_by, created_at, updated_at) FROM stdin;
sec_01a24c633f0c5fb69201505cd748	db-password	sm_builtin	text	inline	1		\N	1796577902.348996	1796577902.348996
\.


--
-- Data for Name: settings; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.settings (key, value) FROM stdin;
session_key	552d912911b0aa31a7d41b962b5c3a6f223f26c97d9e1669df91eb0bfbe80143
\.


--
-- Data for Name: task_attempts; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.task_attempts (task_id, attempt, delegate_id, started_at, finished_at, status) FROM stdin;
task_01a24c63588b702f0a99f6efcde5	1	dlg_01a24c635307d07caf4f48ea2982	1796577908.888997	1796577909.0278168	succeeded
\.


--
-- Data for Name: task_logs; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.task_logs (task_id, attempt, seq, stream, ts, text) FROM stdin;
task_01a24c63588b702f0a99f6efcde5	1	0	stdout	1796577908.9773262	hello from the old release
task_01a24c63588b702f0a99f6efcde5	1	1	stdout	1796577908.9825969	fc66322bb60d37d6138db386c3d664a34790b0833d12112b6a438731dd867353  -
\.


--
-- Data for Name: tasks; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.tasks (id, type, state, payload, selectors, timeout_s, queue_timeout_s, max_attempts, created_at, attempt, delegate_id, idempotency_key, secret_env_sealed, secret_env_names, started_at, finished_at, exit_code, outputs, error, cancel_requested, deployment, queued_at, lease_until, app_id, env_id, submitted_by) FROM stdin;
task_01a24c63588b702f0a99f6efcde5	shell	succeeded	{"env": {"PW": "${secrets.getValue(\\"db-password\\")}"}, "type": "shell", "script": "sh -c 'echo \\"hello from the old release\\"; printf %s \\"$PW\\" | sha256sum'", "interpreter": "bash", "working_dir": null, "credential_secrets": []}	["upgrade"]	600	300	1	1796577908.8754404	1	dlg_01a24c635307d07caf4f48ea2982	\N	\N	[]	1796577908.888997	1796577909.0277908	0	{}	\N	f	\N	1796577908.8754404	1796577938.888997	\N	\N	key_01a24c632d790c1cd16550552015
\.


--
-- Data for Name: tokens; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.tokens (id, name, token_hash, created_at, revoked_at, seq) FROM stdin;
tok_01a24c634be26a3c115b8290a485	d1	a3f24bf75f56fb21d90376cb6e4cef4e9c48095cdbab78ffea9b6d1ba78f871f	1796577905.634417	\N	1
\.


--
-- Name: tokens_seq_seq; Type: SEQUENCE SET; Schema: @SCHEMA@; Owner: -
--

SELECT pg_catalog.setval('@SCHEMA@.tokens_seq_seq', 1, true);


--
-- Name: access_settings access_settings_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.access_settings
    ADD CONSTRAINT access_settings_pkey PRIMARY KEY (id);


--
-- Name: allowlist allowlist_cidr_key; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.allowlist
    ADD CONSTRAINT allowlist_cidr_key UNIQUE (cidr);


--
-- Name: allowlist allowlist_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.allowlist
    ADD CONSTRAINT allowlist_pkey PRIMARY KEY (id);


--
-- Name: api_keys api_keys_key_hash_key; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.api_keys
    ADD CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash);


--
-- Name: api_keys api_keys_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (id);


--
-- Name: audit_events audit_events_id_key; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.audit_events
    ADD CONSTRAINT audit_events_id_key UNIQUE (id);


--
-- Name: audit_events audit_events_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.audit_events
    ADD CONSTRAINT audit_events_pkey PRIMARY KEY (seq);


--
-- Name: audit_filters audit_filters_owner_name_key; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.audit_filters
    ADD CONSTRAINT audit_filters_owner_name_key UNIQUE (owner, name);


--
-- Name: audit_filters audit_filters_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.audit_filters
    ADD CONSTRAINT audit_filters_pkey PRIMARY KEY (id);


--
-- Name: audit_head audit_head_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.audit_head
    ADD CONSTRAINT audit_head_pkey PRIMARY KEY (id);


--
-- Name: delegate_presence delegate_presence_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.delegate_presence
    ADD CONSTRAINT delegate_presence_pkey PRIMARY KEY (delegate_id);


--
-- Name: delegates delegates_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.delegates
    ADD CONSTRAINT delegates_pkey PRIMARY KEY (id);


--
-- Name: delegates delegates_public_key_key; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.delegates
    ADD CONSTRAINT delegates_public_key_key UNIQUE (public_key);


--
-- Name: entities entities_kind_key_key; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.entities
    ADD CONSTRAINT entities_kind_key_key UNIQUE (kind, key);


--
-- Name: entities entities_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.entities
    ADD CONSTRAINT entities_pkey PRIMARY KEY (kind, id);


--
-- Name: profiles profiles_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.profiles
    ADD CONSTRAINT profiles_pkey PRIMARY KEY (name);


--
-- Name: replicas replicas_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.replicas
    ADD CONSTRAINT replicas_pkey PRIMARY KEY (id);


--
-- Name: schema_version schema_version_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.schema_version
    ADD CONSTRAINT schema_version_pkey PRIMARY KEY (version);


--
-- Name: secret_managers secret_managers_name_key; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.secret_managers
    ADD CONSTRAINT secret_managers_name_key UNIQUE (name);


--
-- Name: secret_managers secret_managers_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.secret_managers
    ADD CONSTRAINT secret_managers_pkey PRIMARY KEY (id);


--
-- Name: secret_versions secret_versions_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.secret_versions
    ADD CONSTRAINT secret_versions_pkey PRIMARY KEY (secret_id, version);


--
-- Name: secrets secrets_name_key; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.secrets
    ADD CONSTRAINT secrets_name_key UNIQUE (name);


--
-- Name: secrets secrets_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.secrets
    ADD CONSTRAINT secrets_pkey PRIMARY KEY (id);


--
-- Name: settings settings_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.settings
    ADD CONSTRAINT settings_pkey PRIMARY KEY (key);


--
-- Name: task_attempts task_attempts_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.task_attempts
    ADD CONSTRAINT task_attempts_pkey PRIMARY KEY (task_id, attempt);


--
-- Name: task_logs task_logs_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.task_logs
    ADD CONSTRAINT task_logs_pkey PRIMARY KEY (task_id, attempt, seq);


--
-- Name: tasks tasks_idempotency_key_key; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.tasks
    ADD CONSTRAINT tasks_idempotency_key_key UNIQUE (idempotency_key);


--
-- Name: tasks tasks_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.tasks
    ADD CONSTRAINT tasks_pkey PRIMARY KEY (id);


--
-- Name: tokens tokens_pkey; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.tokens
    ADD CONSTRAINT tokens_pkey PRIMARY KEY (id);


--
-- Name: tokens tokens_token_hash_key; Type: CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.tokens
    ADD CONSTRAINT tokens_token_hash_key UNIQUE (token_hash);


--
-- Name: api_keys_live_name; Type: INDEX; Schema: @SCHEMA@; Owner: -
--

CREATE UNIQUE INDEX api_keys_live_name ON @SCHEMA@.api_keys USING btree (name) WHERE (revoked_at IS NULL);


--
-- Name: audit_events_actor; Type: INDEX; Schema: @SCHEMA@; Owner: -
--

CREATE INDEX audit_events_actor ON @SCHEMA@.audit_events USING btree (actor_id);


--
-- Name: audit_events_resource; Type: INDEX; Schema: @SCHEMA@; Owner: -
--

CREATE INDEX audit_events_resource ON @SCHEMA@.audit_events USING btree (resource_type, resource_id);


--
-- Name: audit_events_ts; Type: INDEX; Schema: @SCHEMA@; Owner: -
--

CREATE INDEX audit_events_ts ON @SCHEMA@.audit_events USING btree (ts);


--
-- Name: secrets_manager; Type: INDEX; Schema: @SCHEMA@; Owner: -
--

CREATE INDEX secrets_manager ON @SCHEMA@.secrets USING btree (manager_id);


--
-- Name: tasks_app_env; Type: INDEX; Schema: @SCHEMA@; Owner: -
--

CREATE INDEX tasks_app_env ON @SCHEMA@.tasks USING btree (app_id, env_id, created_at);


--
-- Name: tasks_created; Type: INDEX; Schema: @SCHEMA@; Owner: -
--

CREATE INDEX tasks_created ON @SCHEMA@.tasks USING btree (created_at);


--
-- Name: tasks_leases; Type: INDEX; Schema: @SCHEMA@; Owner: -
--

CREATE INDEX tasks_leases ON @SCHEMA@.tasks USING btree (lease_until) WHERE (state = 'running'::text);


--
-- Name: tasks_open; Type: INDEX; Schema: @SCHEMA@; Owner: -
--

CREATE INDEX tasks_open ON @SCHEMA@.tasks USING btree (state, created_at) WHERE (state = ANY (ARRAY['queued'::text, 'running'::text]));


--
-- Name: tokens_live_name; Type: INDEX; Schema: @SCHEMA@; Owner: -
--

CREATE UNIQUE INDEX tokens_live_name ON @SCHEMA@.tokens USING btree (name) WHERE (revoked_at IS NULL);


--
-- Name: secret_versions secret_versions_secret_id_fkey; Type: FK CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.secret_versions
    ADD CONSTRAINT secret_versions_secret_id_fkey FOREIGN KEY (secret_id) REFERENCES @SCHEMA@.secrets(id) ON DELETE CASCADE;


--
-- Name: secrets secrets_manager_id_fkey; Type: FK CONSTRAINT; Schema: @SCHEMA@; Owner: -
--

ALTER TABLE ONLY @SCHEMA@.secrets
    ADD CONSTRAINT secrets_manager_id_fkey FOREIGN KEY (manager_id) REFERENCES @SCHEMA@.secret_managers(id);


--
-- PostgreSQL database dump complete
--

\unrestrict inyRdqn9IYVTUnxzAE2bWIjJ9TCmZycoWJLjRuyEIMlFRXYsZkOFFTNWRRr9IHg


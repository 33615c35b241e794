--
-- PostgreSQL database dump
--

\restrict UMJ0sJZesjKHusH0aIwbVaDvifD2HO5dkXBqDKdtGpv1d2e71MFdFNhhlQs6Y2u

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
key_01a24c6f152fd2f8f7aa7af02dac	admin	tak_Zip9	1b60496a370a6e38aa7b0ae3bb24bc94ebe0e930f54a4cf3166338b71d847414	1796578678.0632396	\N	admin	\N	t	["Account Administrators"]	10000	10000	\N	1796578680.3932085
\.


--
-- Data for Name: audit_events; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.audit_events (seq, id, ts, actor_kind, actor_id, actor_name, method, path, client_ip, resource_type, resource_id, resource_name, app, action, summary, diff, prev_hash, hash) FROM stdin;
1	aud_01a24c6f15362a6c3a703a3000e0	1796578678.0705276	system	system	system	START	tether-manager serve (admin-api-key)	local	api_key	key_01a24c6f152fd2f8f7aa7af02dac	admin	\N	create	created admin API key admin	before: null\nafter:\n  id: key_01a24c6f152fd2f8f7aa7af02dac\n  name: admin\n  prefix: tak_Zip9\n  owner: admin\n  service_account: true\n  groups:\n  - Account Administrators\n  max_qps: 10000.0\n	0000000000000000000000000000000000000000000000000000000000000000	e550967c5cd6d6828a8e3b5127810a47acb7f057af37641dcd272b947e7b8208
2	aud_01a24c6f1e6a9e594b298acc6d77	1796578680.4260476	api_key	key_01a24c6f152fd2f8f7aa7af02dac	admin	POST	/api/v1/users	127.0.0.1	user	usr_01a24c6f1e5a3435cd7c8b9cbc4a	alice@example.com	\N	create	invited user alice@example.com	before: null\nafter:\n  id: usr_01a24c6f1e5a3435cd7c8b9cbc4a\n  email: alice@example.com\n  name: Alice\n  status: invited\n  source: local\n  groups: []\n  totp_enabled: false\n  created_at: 1796578680.4108033\n  invite_expires_at: 1797183480.4050465\n	e550967c5cd6d6828a8e3b5127810a47acb7f057af37641dcd272b947e7b8208	6cad0b2714087e4bd373353c4202cbe9fa9ca8644fd5a1a32ebba3531e54bd55
3	aud_01a24c6f26f54353122f2f5426d6	1796578682.6131809	api_key	key_01a24c6f152fd2f8f7aa7af02dac	admin	POST	/api/v1/secrets	127.0.0.1	secret	sec_01a24c6f26e95de3f936d2196a57	db-password	\N	create	created secret db-password in builtin (inline)	before: null\nafter:\n  id: sec_01a24c6f26e95de3f936d2196a57\n  name: db-password\n  manager: builtin\n  manager_kind: builtin\n  type: text\n  mode: inline\n  current_version: 1\n  description: ''\n  created_by: null\n  created_at: 1796578682.6014147\n  updated_at: 1796578682.6014147\n  scope: null\n	6cad0b2714087e4bd373353c4202cbe9fa9ca8644fd5a1a32ebba3531e54bd55	da198b6c3f0a383c240abdff272c5feaba4cd24309bbf40f2a4cecc7b4e7fe22
4	aud_01a24c6f308d654b23d520570428	1796578685.069551	system	system	system	CLI	tether-manager token create d1	local	token	tok_01a24c6f308756ebff1e66c14a5e	d1	\N	create	created delegate token d1 on the manager host	before: null\nafter:\n  id: tok_01a24c6f308756ebff1e66c14a5e\n  name: d1\n  created_at: 1796578685.0634255\n  revoked_at: null\n	da198b6c3f0a383c240abdff272c5feaba4cd24309bbf40f2a4cecc7b4e7fe22	2f51a2fef9ce8ded35dd7d7d95997ddd64193e65bc4d0aa151a99fe4ec206fe1
5	aud_01a24c6f431889ee7bd2e002db40	1796578689.8169274	api_key	key_01a24c6f152fd2f8f7aa7af02dac	admin	POST	/api/v1/tasks	127.0.0.1	task	task_01a24c6f42fb9ba6757881773079	shell task	\N	create	submitted shell task task_01a24c6f42fb9ba6757881773079	before: null\nafter:\n  id: task_01a24c6f42fb9ba6757881773079\n  type: shell\n  state: queued\n  payload:\n    type: shell\n    script: sh -c 'echo "hello from the old release"; printf %s "$PW" | sha256sum'\n    interpreter: bash\n    env:\n      PW: ${secrets.getValue("db-password")}\n    working_dir: null\n    credential_secrets: []\n  selectors:\n  - upgrade\n  secret_env_names: []\n  timeout_s: 600.0\n  queue_timeout_s: 300.0\n  max_attempts: 1\n  idempotency_key: null\n  deployment: null\n  app_id: null\n  env_id: null\n	2f51a2fef9ce8ded35dd7d7d95997ddd64193e65bc4d0aa151a99fe4ec206fe1	bdca1679f718ec4d28e4434792f94040ad5899e4b120b48149cb931a10c124c2
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
1	5	bdca1679f718ec4d28e4434792f94040ad5899e4b120b48149cb931a10c124c2
\.


--
-- Data for Name: delegate_presence; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.delegate_presence (delegate_id, replica_id, mode, last_heartbeat) FROM stdin;
dlg_01a24c6f3b04f48170164119a9ff	rep_01a24c6f154be20381f792fc94fd	stream	1796578690.0050902
\.


--
-- Data for Name: delegates; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.delegates (id, name, token_id, hostname, version, protocol_version, selectors, task_types, capacity, public_key, created_at, last_seen, draining) FROM stdin;
dlg_01a24c6f3b04f48170164119a9ff	d1	tok_01a24c6f308756ebff1e66c14a5e	vm	0.1.0	1	["upgrade"]	["shell", "http", "capability", "secret_op"]	4	AwJHZKZgSPPttJXWk87V9/2bU0rdWxsup9MSCJ4hTxM=	1796578687.7485785	1796578687.7485785	f
\.


--
-- Data for Name: entities; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.entities (kind, id, key, body, version, created_at, updated_at) FROM stdin;
group	grp_admins	Account Administrators	{"name": "Account Administrators", "description": "every account permission, every action on every application", "app_permissions": [{"apps": "all", "envs": "all", "actions": ["create", "read", "update", "delete", "execute"]}], "account_permissions": ["manage_users", "manage_user_groups", "manage_delegates", "manage_secrets", "manage_secret_managers", "manage_api_keys", "manage_applications", "manage_governance", "view_audit"]}	1	1796578678.0852804	1796578678.0852804
user	usr_01a24c6f1e5a3435cd7c8b9cbc4a	alice@example.com	{"name": "Alice", "email": "alice@example.com", "groups": [], "source": "local", "status": "invited", "invite_hash": "3449385b9936b1135170ae82fd21acbcc90b7a5859782097d749ac4d4ff32faf", "totp_sealed": null, "locked_until": null, "totp_enabled": false, "failed_logins": 0, "last_login_at": null, "password_hash": null, "totp_last_step": null, "recovery_hashes": [], "invite_expires_at": 1797183480.4050465, "password_changed_at": null, "totp_pending_sealed": null}	1	1796578680.4108033	1796578680.4108033
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
rep_01a24c6f154be20381f792fc94fd	1796578678.0916283	1796578690.0580633
\.


--
-- Data for Name: schema_version; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.schema_version (version, applied_at) FROM stdin;
1	1796578677.684321
2	1796578677.684321
3	1796578677.684321
4	1796578677.684321
5	1796578677.684321
6	1796578677.684321
7	1796578677.684321
8	1796578677.684321
9	1796578677.684321
10	1796578677.684321
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
sec_01a24c6f26e95de3f936d2196a57	1	{"blob":"AeedEnB7QGIsS4BQEYCoWEJh54ar/DXBgxhfTPdqC3bLS9lM1PbDHjOpswmRBBLKrAMU83H+ufoWFXe4hJyGF3GA","format":1,"kek_id":"k1","kek_kind":"builtin","wrapped_key":"AwJrMaL7vsyHn+j2iSkuJHoSE+9gObfh4+g3+QtQAv5meuDcru0GoeWt+ULqYdnwEEKYfqTrxDTlA0JGwemZpA=="}	\N	37	\N	1796578682.6037662
\.


--
-- Data for Name: secrets; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.secrets (id, name, manager_id, type, mode, current_version, description, created_by, created_at, updated_at) FROM stdin;
sec_01a24c6f26e95de3f936d2196a57	db-password	sm_builtin	text	inline	1		\N	1796578682.6014147	1796578682.6014147
\.


--
-- Data for Name: settings; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.settings (key, value) FROM stdin;
session_key	53b5dcfdfb66f94c446491f26451b471c952541f94e1f03e5606ffa926c756a0
\.


--
-- Data for Name: task_attempts; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.task_attempts (task_id, attempt, delegate_id, started_at, finished_at, status) FROM stdin;
task_01a24c6f42fb9ba6757881773079	1	dlg_01a24c6f3b04f48170164119a9ff	1796578689.8024998	1796578690.0052083	succeeded
\.


--
-- Data for Name: task_logs; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.task_logs (task_id, attempt, seq, stream, ts, text) FROM stdin;
task_01a24c6f42fb9ba6757881773079	1	0	stdout	1796578689.9017904	hello from the old release
task_01a24c6f42fb9ba6757881773079	1	1	stdout	1796578689.9117038	fc66322bb60d37d6138db386c3d664a34790b0833d12112b6a438731dd867353  -
\.


--
-- Data for Name: tasks; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.tasks (id, type, state, payload, selectors, timeout_s, queue_timeout_s, max_attempts, created_at, attempt, delegate_id, idempotency_key, secret_env_sealed, secret_env_names, started_at, finished_at, exit_code, outputs, error, cancel_requested, deployment, queued_at, lease_until, app_id, env_id, submitted_by) FROM stdin;
task_01a24c6f42fb9ba6757881773079	shell	succeeded	{"env": {"PW": "${secrets.getValue(\\"db-password\\")}"}, "type": "shell", "script": "sh -c 'echo \\"hello from the old release\\"; printf %s \\"$PW\\" | sha256sum'", "interpreter": "bash", "working_dir": null, "credential_secrets": []}	["upgrade"]	600	300	1	1796578689.787076	1	dlg_01a24c6f3b04f48170164119a9ff	\N	\N	[]	1796578689.8024998	1796578690.0051825	0	{}	\N	f	\N	1796578689.787076	1796578719.8024998	\N	\N	key_01a24c6f152fd2f8f7aa7af02dac
\.


--
-- Data for Name: tokens; Type: TABLE DATA; Schema: @SCHEMA@; Owner: -
--

COPY @SCHEMA@.tokens (id, name, token_hash, created_at, revoked_at, seq) FROM stdin;
tok_01a24c6f308756ebff1e66c14a5e	d1	a8630a370c2de912e28d327b0c39c0b3fde8b86773fe9e936d2f5c4057a605e1	1796578685.0634255	\N	1
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

\unrestrict UMJ0sJZesjKHusH0aIwbVaDvifD2HO5dkXBqDKdtGpv1d2e71MFdFNhhlQs6Y2u


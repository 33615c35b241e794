"""Wiring and lifecycle of the manager: build, start, serve, shut down.

Start-up runs in explicit phases (data dir, store and migrations, keys, TLS, recovery of the
in-memory view, then the listener) so a failure says which phase failed. Shutdown closes
every delegate stream with the *restart* code, so delegates reconnect at once to whatever
replaces this process instead of waiting out a backoff.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client.core import Metric

from manager.access.allowlist import Allowlist
from manager.access.api_keys import ApiKeys
from manager.access.delegate_tokens import REVOCATION_STAMP, DelegateTokens
from manager.access.directory import Directory
from manager.access.login import LOGINS, Logins
from manager.access.passwords import Passwords
from manager.access.session_signer import SessionSigner
from manager.access.tokens import (
    ADMIN_BURST,
    ADMIN_MAX_QPS,
    ApiKeyInUse,
    Tokens,
    create_api_key,
)
from manager.api.access import add_access_routes
from manager.api.audit import add_audit_routes
from manager.api.audit_record import AUDIT, AuditRecorder, Change, audit_middleware, key_the_chain
from manager.api.auth import add_auth_routes
from manager.api.context import CTX, Context
from manager.api.delegate_check import add_delegate_check_routes
from manager.api.delegate_plane import add_delegate_routes
from manager.api.delegates import add_delegate_list_routes
from manager.api.directory import add_directory_routes
from manager.api.failed_logins import FAILED_LOGINS, FailedLogins
from manager.api.freezes import add_freeze_routes
from manager.api.guards import ACCESS, Access, access_middlewares
from manager.api.http import Route, RouteTable, error_middleware
from manager.api.id_tokens import ID_TOKENS, add_id_token_routes
from manager.api.incident_services import INCIDENT_SERVICES
from manager.api.incidents import add_incident_routes
from manager.api.ldap import add_ldap_routes
from manager.api.openapi import openapi_document
from manager.api.permissions import check_routes
from manager.api.profiles import add_profile_routes
from manager.api.retention import PURGER, add_retention_routes
from manager.api.runbooks import add_runbook_routes, runbook_trigger_audit
from manager.api.saml import add_saml_routes
from manager.api.scim_routes import add_scim_routes
from manager.api.secrets import add_secret_routes
from manager.api.sso import add_sso_routes
from manager.api.tasks import add_task_routes
from manager.api.tokens import add_token_routes
from manager.api.verifications import VERIFICATIONS, add_verification_routes
from manager.api.webhooks import add_webhook_routes
from manager.audit.trail import AuditTrail
from manager.console.routes import add_console_routes, console_middleware, install_console
from manager.core.audit_chain import AuditAppend
from manager.core.identity import SYSTEM
from manager.keys.audit_key import AuditKeys
from manager.keys.data_keys import DataKeys
from manager.keys.masterkey import MasterKey
from manager.keys.oidc_keys import OidcKeys
from manager.keys.signing import DELEGATE_SESSION_KEY, ID_TOKEN_REQUEST_KEY, signing_key
from manager.metrics import CONTENT_TYPE, Metrics, gauge
from manager.records import ApiKeyRecord
from manager.retention.purge import Purger
from manager.runbooks.service import RunbookService
from manager.schemas.grants import ADMIN_GROUP
from manager.secrets.delivery import SecretDeliveries
from manager.secrets.ops import SecretOps
from manager.secrets.service import SecretService
from manager.server.connections import (
    CONNECTIONS,
    ConnectionLimits,
    Connections,
    GuardedSite,
    credential_accepted,
)
from manager.server.housekeeping import PRUNER, pruner
from manager.server.incident_wiring import install_incident_services, retention_loop
from manager.store.base import DiskFull, Store
from manager.store.factory import open_store
from manager.store.health import DISK_FULL
from manager.store.postgres import PostgresStore
from manager.tasks.bus import Bus, EventKind, LocalBus, PostgresBus
from manager.tasks.delegates import Delegates
from manager.tasks.envs import EnvIndex
from manager.tasks.events import TaskEvents
from manager.tasks.handout import Handout
from manager.tasks.hub import Hub
from manager.tasks.id_tokens import IdTokens
from manager.tasks.profiles import Profiles
from manager.tasks.prune import DEFAULT_PRUNE_AFTER
from manager.tasks.reads import TaskReads
from manager.tasks.sealing import sealed_tasks
from manager.tasks.service import TaskService
from manager.verify.service import Verifications
from shared import __version__
from shared.datadir import secure_data_dir
from shared.limits import MAX_API_BODY_BYTES, Timings
from shared.masking import Masker
from shared.protocol import CloseCode, TaskState
from shared.repeats import RepeatedErrors
from shared.startup import listen_problem, load_server_tls
from shared.tls import ensure_manager_certificates, server_context

__all__ = ["ADMIN_KEY_FILE", "ROUTES", "ManagerConfig", "build_app", "open_store", "serve"]

log = structlog.get_logger("tether.manager")

ADMIN_KEY_FILE = "admin-api-key"
ROUTES: web.AppKey[RouteTable] = web.AppKey("tether_routes", RouteTable)
# On a request once it is counted (counting).
_COUNTED: web.RequestKey[bool] = web.RequestKey("tether_counted", bool)


@dataclass
class ManagerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8443
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Names the self-made certificate carries besides the defaults (--tls-san).
    tls_names: tuple[str, ...] = ()
    # Delegates not heard for this long are deleted (manager.tasks.prune); 0: never.
    prune_delegates_after: float = DEFAULT_PRUNE_AFTER
    timings: Timings = field(default_factory=Timings)
    # postgresql://... for several replicas; None keeps SQLite in the data dir.
    database: str | None = field(default=None, repr=False)
    # Dates what users read (created, started, audit times); never a duration.
    clock: Callable[[], float] = time.time
    # Every duration: leases, liveness, timeouts, unanswered assignments, the sweep.
    monotonic: Callable[[], float] = time.monotonic
    # The masker behind this process's log output (shared.logging.configure_logging).
    masker: Masker | None = None
    # argon2id's cost; tests pass a cheap one (manager.access.passwords).
    passwords: Passwords | None = None
    # Header and idle timeouts, the cap on unauthenticated connections, the fd-limit watch.
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    # The ``iss`` of task tokens and the base of their discovery URLs (manager.tasks.
    # id_tokens); None: the URL the manager listens on.
    oidc_issuer: str | None = None
    # How often the retention purge runs (manager.retention); nothing goes unless set.
    purge_interval: float = 3600.0


async def _ensure_admin_key(store: Store, data_dir: Path) -> Path:
    path = data_dir / ADMIN_KEY_FILE
    if path.exists():
        return path

    recorder = AuditRecorder(store, AuditKeys(MasterKey.load_or_create(data_dir / "master.key")))

    def created(record: ApiKeyRecord) -> AuditAppend:
        # The manager made it, at start: the system's change, like a host-side command's.
        after = {
            "id": record.id,
            "name": record.name,
            "prefix": record.prefix,
            "owner": record.owner,
            "service_account": record.service_account,
            "groups": list(record.groups),
            "max_qps": record.max_qps,
        }
        return recorder.entry(
            SYSTEM,
            Change(
                record.id,
                record.name,
                "create",
                f"created admin API key {record.name}",
                after=after,
            ),
            resource_type="api_key",
            method="START",
            path=f"tether-manager serve ({path.name})",
            client_ip="local",
        )

    async def make(name: str) -> str:
        # A high limit, not the account default: see manager.access.tokens.ADMIN_MAX_QPS.
        _, key = await create_api_key(
            store,
            name,
            owner="admin",
            service_account=True,
            groups=(ADMIN_GROUP,),
            max_qps=ADMIN_MAX_QPS,
            burst=ADMIN_BURST,
            audit=created,
        )
        return key

    try:
        key = await make("admin")
    except ApiKeyInUse:
        # The file was deleted to rotate the key: the live "admin" key stays usable until
        # it is revoked by name (tether api-key revoke admin), so the new one gets a date.
        key = await make(time.strftime("admin-%Y%m%d-%H%M%S", time.gmtime()))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    log.info("admin API key created", path=str(path))
    return path


async def _healthz(_request: web.Request) -> web.Response:
    # The release, so an operator can check what each replica runs during an upgrade.
    return web.json_response({"status": "ok", "version": __version__})


async def _readyz(request: web.Request) -> web.Response:
    c = request.app[CTX]
    if c.stopping:
        return web.json_response({"status": "stopping"}, status=503)
    try:
        if c.store.health.problem is None:
            await c.store.get_setting("session_key")
        else:
            # Writes failed last: a probe write (this replica's heartbeat row) says whether
            # they succeed now, so readiness comes back without waiting for a user's write.
            await c.store.record_presence(c.replica_id, c.started_at, c.clock(), [])
    except DiskFull:
        return web.json_response({"status": "disk full", "reason": DISK_FULL}, status=503)
    except Exception:
        return web.json_response({"status": "database unavailable"}, status=503)
    return web.json_response({"status": "ready"})


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[CTX].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def counting(metrics: Metrics) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """The hook that counts each request once, as its answer starts (on_response_prepare),
    not after its handler: a middleware would stay suspended as long as its request, for
    days on a stream. Once: a handler that raises after its answer started gets the error
    middleware's answer prepared too, which never reaches the client."""

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        if request.get(_COUNTED):
            return
        request[_COUNTED] = True
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics.api_requests.labels(route, request.method, str(response.status)).inc()

    return count


def _live_metrics(c: Context) -> Iterator[Metric]:
    modes: dict[tuple[str, ...], float] = {("stream",): 0, ("polling",): 0}
    reported: dict[tuple[str, ...], float] = {}
    for session in c.hub.sessions.values():
        status = c.hub.status(session.id)
        if status != "disconnected":
            key = ("stream",) if status == "connected" else ("polling",)
            modes[key] += 1
            for name, value in session.metrics.items():
                reported[(session.delegate.name, session.id, name)] = value
    yield gauge("tether_delegates_connected", "Delegates heard from, by mode", ["mode"], modes)
    running = sum(1 for t in c.tasks.open_tasks() if t.state is TaskState.RUNNING)
    yield gauge(
        "tether_tasks",
        "Open tasks by state (finished ones: tether_tasks_finished_total)",
        ["state"],
        {("queued",): c.handout.queued_count(), ("running",): running},
    )
    yield gauge(
        "tether_delegate_metric",
        "What each delegate reports about itself in its heartbeats",
        ["delegate", "delegate_id", "name"],
        reported,
    )


async def build_app(config: ManagerConfig, store: Store) -> tuple[web.Application, Context]:
    """Everything but the listener; the store must be open."""
    t = config.timings
    master_key = MasterKey.load_or_create(config.data_dir / "master.key")
    session_key = await signing_key(store, master_key, DELEGATE_SESSION_KEY)
    await Directory(store).ensure_admin_group()
    hub = Hub(
        lost_after=t.lost_after,
        clock=config.monotonic,
        wall=config.clock,
        heartbeat_interval=t.heartbeat_interval,
        tick=t.sweep_interval,
    )
    envs = EnvIndex(store)
    handout = Handout(
        hub,
        # An assignment unanswered this long goes to another delegate. A live delegate acks
        # at once, and one whose heartbeats stop is dropped after lost_after (its unanswered
        # assignments requeued then); twice that leaves a loaded machine room for the claim,
        # the push and the ack, since a withdrawn attempt that was running is fenced out.
        ack_within=2 * t.lost_after,
        tick=t.sweep_interval,
        clock=config.monotonic,
        envs=envs.facts,
    )
    hub.on_dropped = handout.disconnected
    events = TaskEvents()
    metrics = Metrics()
    bus: Bus = PostgresBus(store) if isinstance(store, PostgresStore) else LocalBus()
    # Delivery needs no task service, and the secret service runs its operations through
    # one: so delivery, then tasks, then the secret service, each built once and whole.
    deliveries = SecretDeliveries(store=store, master_key=master_key, masker=config.masker)
    # One set of data keys (and its cache) for every service that seals records at rest.
    data_keys = DataKeys(store, master_key, clock=config.clock)
    task_store = sealed_tasks(store, data_keys)
    tasks = TaskService(
        store=task_store,
        hub=hub,
        handout=handout,
        events=events,
        master_key=master_key,
        timings=t,
        metrics=metrics,
        bus=bus,
        clock=config.monotonic,
        wall=config.clock,
        envs=envs,
        secrets=deliveries,
        adopt_claims=not isinstance(store, PostgresStore),
    )
    ops = SecretOps(store=task_store, tasks=tasks, events=events, timeout=t.secret_op_timeout)
    secrets = SecretService(
        store=store, master_key=master_key, ops=ops, deliveries=deliveries, masker=config.masker
    )
    sessions = DelegateTokens(
        store,
        hub.revoked_tokens,
        stamp=config.data_dir / REVOCATION_STAMP if config.database is None else None,
    )

    def token_revoked(token_id: str) -> None:
        # Committed: every replica refuses its credentials from here (manager.access.
        # delegate_tokens); this one at once, the others on the event or their next read.
        sessions.forget(token_id)
        hub.revoke(token_id)
        bus.publish("revoked", token_id)

    c = Context(
        store=store,
        api_keys=ApiKeys(store, config.clock),
        allowlist=Allowlist(store, config.clock),
        audit=AuditTrail(store),
        hub=hub,
        handout=handout,
        events=events,
        tasks=tasks,
        task_reads=TaskReads(task_store),
        delegates=Delegates(store, hub, handout, lost_after=t.lost_after, clock=config.clock),
        signer=SessionSigner(session_key, ttl=t.session_ttl, clock=config.clock),
        timings=t,
        clock=config.clock,
        metrics=metrics,
        profiles=Profiles(store, tasks, hub, lost_after=t.lost_after),
        tokens=sessions,
        delegate_tokens=Tokens(store, token_revoked),
        bus=bus,
        secrets=secrets,
        monotonic=config.monotonic,
    )
    await tasks.recover()
    c.runbooks = RunbookService(
        store=task_store,
        directory=Directory(store),
        tasks=tasks,
        events=events,
        master_key=master_key,
        data_keys=data_keys,
        secrets=secrets,
        clock=config.clock,
    )

    async def on_remote(kind: EventKind, ident: str) -> None:
        if kind == "revoked":  # a delegate token, revoked through another replica
            c.tokens.forget(ident)
            hub.revoke(ident)
        elif kind == "env":  # an environment another replica changed
            await envs.reread(ident)
        else:
            await tasks.on_remote(kind, ident)

    await bus.start(on_remote)
    metrics.add_live(lambda: _live_metrics(c))

    table = RouteTable()
    table.add(Route("GET", "/healthz", _healthz, "Liveness", "none"))
    table.add(Route("GET", "/readyz", _readyz, "Readiness", "none", errors=(503,)))
    table.add(Route("GET", "/metrics", _metrics, "Prometheus metrics", "user", streaming="text"))
    add_task_routes(table)
    add_delegate_list_routes(table)
    add_token_routes(table)
    add_profile_routes(table)
    add_secret_routes(table)
    add_audit_routes(table)
    add_access_routes(table)
    add_sso_routes(table)
    add_ldap_routes(table)
    add_scim_routes(table)
    add_saml_routes(table)
    add_auth_routes(table)
    add_directory_routes(table)
    add_delegate_routes(table)
    add_id_token_routes(table)
    add_retention_routes(table)
    add_delegate_check_routes(table)
    add_freeze_routes(table)
    add_webhook_routes(table)
    add_incident_routes(table)
    add_verification_routes(table)
    add_runbook_routes(table)
    doc: dict[str, object] = {}

    async def openapi(_request: web.Request) -> web.Response:
        # Made at the first ask, not at start: it builds the schema of every model (each
        # is built at its first use, defer_build), a cost each start paid for a page few
        # read. No await in between: two first asks cannot both build it.
        if not doc:
            doc.update(openapi_document([r for r in table.routes if not r.console]))
        return web.json_response(doc)

    table.add(Route("GET", "/api/v1/openapi.json", openapi, "This OpenAPI document", "user"))
    add_console_routes(table)  # after the API's: each console route takes its mirror's rules
    check_routes(table.routes)
    connections = Connections(config.connections, credential_accepted=credential_accepted(table))
    app = web.Application(
        client_max_size=MAX_API_BODY_BYTES,
        # The connection's guard first: a request's handling has begun (its header timeout
        # ends). The access guards (allowlist, API key, rate limit: manager.api.guards) run
        # before any handler. Audit innermost: it sees the actor authentication set, and a
        # handler's error before the error middleware answers it (a failed request records
        # nothing).
        middlewares=[
            connections.middleware,
            error_middleware,
            console_middleware(table),
            *access_middlewares(table),
            audit_middleware(table),  # type: ignore[list-item]
        ],
    )
    app[CTX] = c
    install_incident_services(app, c, master_key, data_keys, config.clock)
    c.runbooks.freezes = app[INCIDENT_SERVICES].freezes
    app[VERIFICATIONS] = Verifications(store, config.clock)
    app[CONNECTIONS] = connections
    app.on_response_prepare.append(connections.on_response_prepare)
    app.on_response_prepare.append(counting(metrics))
    metrics.add_live(connections.gauges)
    access = app[ACCESS] = Access(store, clock=config.clock)
    # Another replica's change to keys, grants or settings reaches this one's caches.
    await store.watch_changes(access.heard)
    app[LOGINS] = Logins(
        access.directory,
        master_key,
        access.principals,
        passwords=config.passwords,
        clock=config.clock,
    )
    app[AUDIT] = AuditRecorder(
        store, AuditKeys(master_key), masker=config.masker, clock=config.clock
    )
    await key_the_chain(app[AUDIT])
    recorder = app[AUDIT]
    c.runbooks.system_audit = runbook_trigger_audit(recorder)

    async def failed_logins(change: Change, address: str) -> object:
        return await recorder.write(
            SYSTEM,
            change,
            resource_type="user",
            method="POST",
            path="/api/v1/auth/login",
            client_ip=address,
        )

    app[FAILED_LOGINS] = FailedLogins(failed_logins, clock=config.clock)
    app[ID_TOKENS] = IdTokens(
        store,
        OidcKeys(store, master_key, config.clock),
        request_key=await signing_key(store, master_key, ID_TOKEN_REQUEST_KEY),
        issuer=config.oidc_issuer or f"https://{_url_host(config.host)}:{config.port}",
        clock=config.clock,
    )
    # Every assignment of a task with an application carries its request credential.
    c.tasks.id_tokens = app[ID_TOKENS]

    async def purged(counts: dict[str, int]) -> object:
        return await recorder.write(
            SYSTEM,
            Change(
                "retention",
                "retention",
                "purge",
                "purged " + ", ".join(f"{n} {kind}" for kind, n in counts.items()),
                after=counts,
            ),
            resource_type="retention",
            method="PURGE",
            path="retention purge",
            client_ip="local",
        )

    app[PURGER] = Purger(store, AuditKeys(master_key).current, purged, clock=config.clock)
    app[PRUNER] = pruner(config.prune_delegates_after, c, recorder)
    table.install(app)
    app[ROUTES] = table
    runbooks = c.runbooks

    async def stop_runs(_app: web.Application) -> None:
        # Runs are followed by tasks of this process: they end with it (a restart resumes).
        await runbooks.close()

    app.on_cleanup.append(stop_runs)
    install_console(app, table)
    return app, c


async def _loops(c: Context) -> None:
    """Sweeps (lost delegates, leases, timeouts) and the check for tokens revoked on the host.

    Every interval is measured on the monotonic clock. A pass that comes late (the process
    was frozen, or starved) is a stall: nothing is judged until the delegates' heartbeats
    were counted again (manager.core.liveness).
    """
    t = c.timings
    now = c.monotonic
    last_revocation_check = float("-inf")
    last_reconcile = now()
    # A database that is away fails every pass alike: one traceback, then counts.
    failures = RepeatedErrors(log, "sweep failed")
    judging = False
    while True:
        await asyncio.sleep(t.sweep_interval)
        c.last_sweep = time.monotonic()
        stalled = c.hub.liveness.tick(now())
        if stalled is not None:
            # A starved machine makes many short ones; a stall near a lease is an incident.
            say = log.warning if stalled > t.lost_after / 2 else log.info
            say(
                "manager stalled; judging no lease until heartbeats are counted",
                stalled_s=round(stalled, 3),
                grace_s=round(c.hub.liveness.grace, 3),
            )
        if c.hub.liveness.judging(now()) != judging:
            judging = not judging
            if judging:
                # After the start or a stall: the heartbeats were counted, leases are
                # judged from here (what the fault tests measure the bounds from).
                log.info("judging leases again")
        await _renew(c)
        try:
            # With other replicas, repair what a lost notification may have left behind.
            if c.bus.shared and now() - last_reconcile >= 10 * t.heartbeat_interval:
                last_reconcile = now()
                await c.tasks.reconcile()
            for delegate_id in c.hub.liveness.lost(now()):
                # When it was last heard, on the wall clock: what an operator (and the
                # fault tests) measure the time to the rerun from.
                log.warning(
                    "delegate lost",
                    delegate_id=delegate_id,
                    last_heartbeat=c.hub.last_heartbeat(delegate_id),
                )
                c.hub.drop(delegate_id, CloseCode.LOST, "no heartbeat")
            await c.tasks.sweep()
            if c.runbooks is not None:
                await c.runbooks.tick()
            if now() - last_revocation_check >= t.revocation_check:
                last_revocation_check = now()
                live = {s.delegate.token_id for s in c.hub.sessions.values()}
                for token_id in await c.store.revoked_token_ids(live - c.hub.revoked_tokens):
                    c.tokens.forget(token_id)
                    c.hub.revoke(token_id)
                    log.info("token revoked on the host", token_id=token_id)
        except DiskFull:
            pass  # told once when it starts and once when it ends (manager.store.health)
        except Exception as exc:
            failures.error(exc)


async def _renew(c: Context) -> None:
    """The batched lease renewal when it is due; one that fails is tried again at the next
    pass (a second, at the default timings), not an interval later."""
    renewals = c.hub.renewals
    at = c.monotonic()
    if not renewals.due(at):
        return
    try:
        await c.tasks.renew_leases()
        await c.store.record_presence(
            c.replica_id, c.started_at, c.clock(), c.hub.presence(c.replica_id)
        )
    except Exception as exc:
        renewals.failed()
        if renewals.failures == 1:
            log.warning("lease renewal failed; retrying at every pass", error=str(exc))
    else:
        failed = renewals.done(at)
        if failed:
            log.info("lease renewal written again", failed_passes=failed)


def _loops_alive(c: Context) -> bool:
    """The sweep loop made a pass lately. A pass that fails (say, the database is away) still
    counts: the watchdog restarts a manager whose loop is stuck, not one waiting out an
    outage, which a restart would not cure."""
    return time.monotonic() - c.last_sweep < max(30.0, 10 * c.timings.sweep_interval)


async def serve(
    config: ManagerConfig, *, ready: Callable[[str, Callable[[], bool]], None] | None = None
) -> int:
    """Run until SIGINT/SIGTERM. Returns the process exit status. ``ready`` is told the URL,
    and a check that says whether the manager's own loops are still turning (what feeds the
    systemd watchdog)."""
    secure_data_dir(config.data_dir)
    if config.tls_cert and config.tls_key:
        ssl_ctx = load_server_tls(config.tls_cert, config.tls_key)
        ca_file: Path | None = None
    else:
        paths = ensure_manager_certificates(
            config.data_dir / "tls", [config.host, *config.tls_names]
        )
        ssl_ctx = server_context(paths.server_cert, paths.server_key)
        ca_file = paths.ca_cert
    store = open_store(config.data_dir, config.database)
    await store.open()
    try:
        admin_key_path = await _ensure_admin_key(store, config.data_dir)
        app, c = await build_app(config, store)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=5,
            keepalive_timeout=config.connections.idle_timeout,
        )
        await runner.setup()
        sock = _bind(config.host, config.port)
        site = GuardedSite(runner, sock, app[CONNECTIONS], ssl_context=ssl_ctx, backlog=1024)
        await site.start()
        port = sock.getsockname()[1]
        url = f"https://{_url_host(config.host)}:{port}"
        if config.oidc_issuer is None:
            app[ID_TOKENS].issuer = url
        log.info(
            "manager listening",
            url=url,
            ca_file=str(ca_file) if ca_file else None,
            admin_key_file=str(admin_key_path),
        )
        # Before the sweep starts: the delegates' grace runs from here, where they can
        # connect, not from the recovery before the listener.
        await c.tasks.grant_start_grace()
        background = [
            asyncio.create_task(c.handout.run(), name="handout"),
            asyncio.create_task(_loops(c), name="sweep"),
            asyncio.create_task(app[LOGINS].expire_forever(), name="expire-sessions"),
            asyncio.create_task(app[FAILED_LOGINS].flush_forever(), name="failed-logins"),
            asyncio.create_task(app[CONNECTIONS].watch_forever(), name="connections"),
            asyncio.create_task(app[PURGER].run_forever(config.purge_interval), name="purge"),
            asyncio.create_task(app[PRUNER].run_forever(), name="prune-delegates"),
            asyncio.create_task(retention_loop(app, config.clock), name="incident-retention"),
        ]
        if c.runbooks is not None:
            # Open runs carry on where they stopped (manager.runbooks.service).
            await c.runbooks.recover()
        if ready is not None:
            ready(url, lambda: _loops_alive(c))
        await _wait_for_signal()
        log.info("manager stopping")
        c.stopping = True
        await c.hub.close_all(CloseCode.RESTART, "manager restarting")
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await runner.cleanup()
        await c.bus.close()
    finally:
        await store.close()
    return 0


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # A second signal during shutdown forces the exit.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: os._exit(1))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise listen_problem(host, port, exc) from None
    sock.setblocking(False)
    return sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding it
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host

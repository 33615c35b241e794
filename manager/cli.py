"""``tether-manager``: serve, and the host-side admin commands that work on the data dir.

Exit statuses: 0 done, 1 failed at run time, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import structlog
from pydantic import ValidationError

from manager.access.tokens import ScopeError, TokenInUse, create_token, resolve_scope, scope_views
from manager.audit.recorder import AuditRecorder, Change
from manager.core.audit_chain import AuditAppend
from manager.core.identity import SYSTEM
from manager.host_commands import add_host_parsers, purge, rotate_oidc
from manager.keys.audit_key import AuditKeys
from manager.keys.data_keys import RewrapReport as DataKeysReport
from manager.keys.data_keys import rewrap_data_keys
from manager.keys.masterkey import MasterKey, MasterKeyError
from manager.keys.oidc_keys import OIDC_KEYS, OidcKeys
from manager.keys.rotation import RewrapReport, rewrap_builtin
from manager.keys.signing import reseal
from manager.records import TokenRecord
from manager.schemas.token_flags import add_scope_arguments, token_request
from manager.server.backup import BackupError, backup
from manager.server.connections import ConnectionLimits
from manager.server.first_start import FirstStart, first_start_text
from manager.store.base import Store, StoreError
from manager.store.factory import open_store
from manager.store.migrations import SchemaTooNew
from manager.store.postgres import PostgresStore
from manager.store.upgrade import migration_plan
from manager.tasks.bus import CHANNEL as BUS_CHANNEL
from manager.tasks.prune import DEFAULT_PRUNE_AFTER
from shared import __version__, sdnotify
from shared import service_install as svc
from shared.datadir import DataDirError
from shared.limits import Timings
from shared.logging import LEVELS, configure_logging
from shared.runtime import run
from shared.startup import ConfigProblem, debug_wanted, report_unexpected
from shared.tls import san_problem

if TYPE_CHECKING:
    from manager.server.app import ManagerConfig

# The server (manager.server.app, over a second to import) is imported by `serve` alone:
# the host commands (`token create` above all, which scripts and tests run often) and
# `--help` do without it.

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_USAGE = 2
_PROG = "tether-manager"


def _default_data_dir() -> Path:
    return Path(os.environ.get("TETHER_DATA_DIR") or ".tether-data")


def _backup(data_dir: Path, output: Path, database: str | None) -> int:
    try:
        names = backup(data_dir, output, include_store=database is None)
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Backed up {', '.join(names)} to {output} (mode 0600).")
    if database is not None:
        print("The database is PostgreSQL: back it up with pg_dump as well.")
    return 0


def _database(args: argparse.Namespace) -> str | None:
    return getattr(args, "database", None) or os.environ.get("TETHER_DATABASE_URL") or None


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


# The ConnectionLimits an operator sets on serve: field, type, metavar, help.
_CONNECTION_FLAGS: tuple[tuple[str, type, str, str], ...] = (
    (
        "header_timeout",
        float,
        "SECONDS",
        "a client must send a whole request head within this (a TLS handshake: at least 10 s)",
    ),
    (
        "idle_timeout",
        float,
        "SECONDS",
        "close a kept-alive connection idle this long; a stream in flight is never idle",
    ),
    (
        "max_unauthenticated",
        int,
        "N",
        "connections not yet authenticated, at most; beyond, new ones are answered 503",
    ),
    (
        "fd_check_interval",
        float,
        "SECONDS",
        "how often open files are compared with their limit; at most one warning each",
    ),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tether-manager", description="The Tether manager server.")
    p.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    debug_help = "show the traceback of an unexpected error ($TETHER_DEBUG=1)"
    p.add_argument("--debug", action="store_true", help=debug_help)
    common = argparse.ArgumentParser(add_help=False)
    # Also after the command (`serve --debug`); SUPPRESS keeps the top-level one's value.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory (default: $TETHER_DATA_DIR, else ./.tether-data)",
    )
    common.add_argument(
        "--database",
        default=None,
        metavar="URL",
        help="postgresql://... to share one database between replicas"
        " (default: $TETHER_DATABASE_URL, else SQLite in the data dir)",
    )
    common.add_argument("--log-level", choices=LEVELS, default="info")
    common.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="auto: readable on a terminal, JSON otherwise (under a service manager)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", parents=[common], help="run the manager")
    s.add_argument("--listen", type=_listen, default=("127.0.0.1", 8443), metavar="HOST:PORT")
    s.add_argument("--tls-cert", type=Path, help="server certificate (PEM); default: self-made")
    s.add_argument("--tls-key", type=Path, help="server key (PEM)")
    s.add_argument(
        "--tls-san",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or IP address the self-made certificate also names (repeat); the"
        " name clients and delegates connect to, e.g. manager.example.com",
    )
    s.add_argument(
        "--prune-delegates-after",
        type=float,
        default=DEFAULT_PRUNE_AFTER / 86400,
        metavar="DAYS",
        help="delete delegates not heard for this long, each with an audit event; 0: never"
        " (default %(default)g)",
    )
    s.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply every protocol timing (heartbeats, leases, polls); for tests and demos",
    )
    s.add_argument(
        "--oidc-issuer",
        help="the iss of task tokens and base of their discovery URLs (default: the URL"
        " the manager listens on; docs/secrets.md)",
    )

    c = s.add_argument_group("connections (docs/operations.md)")
    defaults = ConnectionLimits()
    for field, kind, metavar, text in _CONNECTION_FLAGS:
        default = getattr(defaults, field)
        c.add_argument(
            "--" + field.replace("_", "-"),
            dest=field,
            type=kind,
            default=default,
            metavar=metavar,
            help=f"{text} (default {default:g})",
        )

    d = sub.add_parser(
        "dev",
        help="a throwaway manager and one delegate in a temporary dir, removed on Ctrl-C",
    )
    d.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT", type=_listen)
    d.add_argument("--time-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    d.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    d.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    m = sub.add_parser("migrate", parents=[common], help="apply pending store migrations and exit")
    m.add_argument(
        "--dry-run", action="store_true", help="list the migrations that would run; change nothing"
    )

    b = sub.add_parser(
        "backup", parents=[common], help="a consistent copy of the data dir, while it runs"
    )
    b.add_argument("--output", type=Path, required=True, metavar="FILE.tar.gz")

    t = sub.add_parser("token", help="manage delegate tokens on the data dir")
    tsub = t.add_subparsers(dest="token_command", required=True)
    tc = tsub.add_parser("create", parents=[common], help="create a token; printed once")
    tc.add_argument("name")
    add_scope_arguments(tc)
    tl = tsub.add_parser("list", parents=[common], help="list tokens")
    tl.add_argument("--output", choices=("text", "json"), default="text")
    tr = tsub.add_parser("revoke", parents=[common], help="revoke a token")
    tr.add_argument("name")

    k = sub.add_parser("keys", help="the master keys that encrypt secrets and task values")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    ksub.add_parser(
        "rotate",
        parents=[common],
        help="make a new current key, then re-wrap the builtin secrets' data keys with it",
    )
    ksub.add_parser(
        "rewrap",
        parents=[common],
        help="re-wrap the builtin secrets still under an older key (after a failed rotate)",
    )
    kl = ksub.add_parser("list", parents=[common], help="list the keys; * marks the current one")
    kl.add_argument("--output", choices=("text", "json"), default="text")
    al = sub.add_parser("allowlist", help="the IP allowlist, from the manager host")
    alsub = al.add_subparsers(dest="allowlist_command", required=True)
    alsub.add_parser(
        "disable",
        parents=[common],
        help="turn the IP allowlist off: the way back in after a lock-out",
    )
    add_host_parsers(sub, ksub, common)
    _service_parsers(sub)
    return p


# -- install-service / uninstall-service ------------------------------------------------------


def _service_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    i = sub.add_parser("install-service", help="install and start the systemd service")
    i.add_argument("--root", type=Path, help="write every file under DIR; run no systemctl")
    i.add_argument(
        "--listen",
        type=_listen,
        default=("0.0.0.0", 8443),  # noqa: S104 - a service is for delegates on other hosts
        metavar="HOST:PORT",
        help="default 0.0.0.0:8443",
    )
    i.add_argument("--data-dir", default="/var/lib/tether", help="a directory in /var/lib")
    i.add_argument("--tls-cert", type=Path, help="server certificate (PEM); default: self-made")
    i.add_argument("--tls-key", type=Path, help="server key (PEM)")
    i.add_argument(
        "--tls-san",
        action="append",
        default=[],
        metavar="NAME",
        help="a name the self-made certificate also carries (repeat)",
    )
    i.add_argument("--executable", help="path systemd starts (default: this installation's)")
    u = sub.add_parser("uninstall-service", help="stop the service and remove its unit")
    u.add_argument("--root", type=Path, help="remove the files under DIR; run no systemctl")


def _service(args: argparse.Namespace) -> int:
    if args.command == "install-service" and (problem := san_problem(args.tls_san)):
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "uninstall-service":
            removal = svc.manager_removal()
            for path in svc.uninstall(removal, args.root):
                print(f"removed {path}")
            print(removal.kept)
            return 0
        host, port = args.listen
        plan = svc.manager_plan(
            command=[args.executable] if args.executable else svc.find_executable(_PROG),
            listen=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            data_dir=PurePosixPath(args.data_dir),
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_names=args.tls_san,
        )
        for path in svc.install(plan, args.root):
            print(f"wrote {path}")
    except svc.InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, svc.CommandFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


async def _serve_notified(
    config: ManagerConfig, first_start: Callable[[str], str] | None = None
) -> int:
    """serve(), telling systemd: READY once listening, the watchdog fed from the event loop
    while serving, STOPPING on the way out. ``first_start``, on a new data dir, gives the
    lines to paste for the URL served."""
    watchdog: asyncio.Task[None] | None = None

    def ready(url: str, alive: Callable[[], bool]) -> None:
        nonlocal watchdog
        # One plain line on stdout, for people and for scripts that wait for it.
        print(f"tether-manager listening on {url}", flush=True)
        if first_start is not None:
            print(first_start(url), flush=True)
        sdnotify.ready(f"listening on {url}")
        watchdog = sdnotify.start_watchdog(alive)

    from manager.server.app import serve

    try:
        return await serve(config, ready=ready)
    finally:
        sdnotify.stopping()
        await sdnotify.stop_watchdog(watchdog)


def _dev(args: argparse.Namespace) -> int:
    # Here, not at the top: it brings the client and the delegate's command, which no other
    # host command needs.
    from manager.server.dev import DevError, run_dev

    host, port = args.listen
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return run(run_dev(listen, args.time_scale, args.log_format), prefer_uvloop=False)
    except DevError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _first_start(config: ManagerConfig, args: argparse.Namespace) -> Callable[[str], str] | None:
    """The first-start text's maker when this data dir has never served (no admin key yet)."""
    from manager.server.app import ADMIN_KEY_FILE

    if (config.data_dir / ADMIN_KEY_FILE).exists():
        return None
    own_cert = config.tls_cert is not None
    return lambda url: first_start_text(
        FirstStart(
            url=url,
            data_dir=config.data_dir,
            ca_file=None if own_cert else config.data_dir / "tls" / "ca.pem",
            tls_names=config.tls_names,
            postgres=config.database is not None,
        )
    )


async def _migrate(data_dir: Path, args: argparse.Namespace) -> int:
    if _no_store(data_dir, args):
        return EXIT_USAGE
    current, todo = await migration_plan(_database(args), data_dir)
    if not todo:
        print(f"schema version {current}: up to date")
        return 0
    if args.dry_run:
        print(f"schema version {current}; would apply: {', '.join(map(str, todo))}")
        return 0
    store: Store = open_store(data_dir, _database(args))
    await store.open()  # opening migrates, one transaction per migration
    await store.close()
    print(f"schema version {todo[-1]}; applied: {', '.join(map(str, todo))}")
    return 0


def _no_store(data_dir: Path, args: argparse.Namespace) -> bool:
    """True (and says so) when there is no store to open: never make one in the wrong dir."""
    if _database(args) is None and not (data_dir / "tether.db").exists():
        print(f"error: no manager data in {data_dir} (pass --data-dir)", file=sys.stderr)
        return True
    return False


async def _with_store(data_dir: Path, fn_name: str, args: argparse.Namespace) -> int:
    if _no_store(data_dir, args):
        return EXIT_USAGE
    keys = None if fn_name == "list" else _host_audit_keys(data_dir)
    if keys is None and fn_name != "list":
        return EXIT_USAGE
    store: Store = open_store(data_dir, _database(args))
    await store.open()
    try:
        if fn_name == "create":
            try:
                request = token_request(args)
                scope = await resolve_scope(
                    store, request.scope, request.scope_env_types, request.selectors
                )
                # The event goes in the insert's transaction: no outage keeps one alone.
                record, token = await create_token(
                    store,
                    args.name,
                    scope,
                    audit=lambda t: _host_entry(
                        store,
                        keys,
                        "token",
                        f"{_PROG} token create {args.name}",
                        Change(
                            t.id,
                            t.name,
                            "create",
                            f"created delegate token {t.name} on the manager host",
                            after=_token_fields(t),
                        ),
                    ),
                )
            except ValidationError as exc:
                print(f"error: {exc.errors()[0]['msg']}", file=sys.stderr)
                return EXIT_USAGE
            except (TokenInUse, ScopeError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_FAILED
            print(f"Created delegate token {record.name!r} ({record.id}). It is shown only once:")
            print(token, flush=True)
        elif fn_name == "list":
            from manager.client.cli import output

            tokens = await store.list_tokens()
            _, scopes = await scope_views(store)
            if args.output == "json":
                print(
                    json.dumps(
                        [
                            {
                                "id": t.id,
                                "name": t.name,
                                "created_at": t.created_at,
                                "revoked_at": t.revoked_at,
                                "scope": scopes[t.id].model_dump(mode="json"),
                            }
                            for t in tokens
                        ],
                        indent=2,
                    )
                )
            else:
                print(f"{'NAME':24} {'ID':34} {'CREATED':20} {'STATUS':8} SCOPE")
                for t in tokens:
                    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.created_at))
                    status = "revoked" if t.revoked_at else "active"
                    where = output.scope_text(scopes[t.id])
                    print(f"{t.name:24} {t.id:34} {created:20} {status:8} {where}")
        elif fn_name == "revoke":
            revoked = await store.revoke_token(
                args.name,
                time.time(),
                audit=lambda t: _host_entry(
                    store,
                    keys,
                    "token",
                    f"{_PROG} token revoke {args.name}",
                    Change(
                        t.id,
                        t.name,
                        "revoke",
                        f"revoked delegate token {t.name} on the manager host",
                        before={**_token_fields(t), "revoked_at": None},
                        after=_token_fields(t),
                    ),
                ),
            )
            if revoked is None:
                print(f"error: no live token named {args.name!r}", file=sys.stderr)
                return EXIT_FAILED
            if isinstance(store, PostgresStore):
                # Running replicas hear of it now rather than at their next periodic check.
                await store.notify(BUS_CHANNEL, f"host|revoked:{revoked.id}")
            else:
                from manager.access.delegate_tokens import stamp_revocation

                # The manager on this data dir checks the stamp on every delegate call.
                stamp_revocation(data_dir)
            print(f"Revoked token {revoked.name!r}.")
            print("A running manager ends the sessions that use it within seconds.")
    finally:
        await store.close()
    return 0


def _host_audit_keys(data_dir: Path) -> AuditKeys | None:
    """The audit chain's keys for a host-side change, loaded before the change is made;
    None (and says why) when the data dir has no key ring: an event the server cannot
    check would break the chain."""
    try:
        return AuditKeys(MasterKey.load(data_dir / "master.key"))
    except MasterKeyError as exc:
        print(f"error: the audit trail's key: {exc} (pass --data-dir)", file=sys.stderr)
        return None


async def _audit(
    store: Store, keys: AuditKeys | None, resource_type: str, command: str, change: Change
) -> None:
    """Host-side changes are recorded as the system's: no API key or user made them."""
    assert keys is not None  # loaded by the caller before its change
    await AuditRecorder(store, keys).write(
        SYSTEM, change, resource_type=resource_type, method="CLI", path=command, client_ip="local"
    )


def _host_entry(
    store: Store, keys: AuditKeys | None, resource_type: str, command: str, change: Change
) -> AuditAppend:
    """A host-side change's event (the system's), for the store to chain in its change's
    transaction."""
    assert keys is not None  # loaded by the caller before its change
    return AuditRecorder(store, keys).entry(
        SYSTEM, change, resource_type=resource_type, method="CLI", path=command, client_ip="local"
    )


def _token_fields(t: TokenRecord) -> dict[str, object]:
    return {
        "id": t.id,
        "name": t.name,
        "created_at": t.created_at,
        "revoked_at": t.revoked_at,
        "scope": t.scope,
    }


# -- keys -------------------------------------------------------------------------------------


def _keys(data_dir: Path, args: argparse.Namespace) -> int:
    master = data_dir / "master.key"
    if not master.exists():
        print(f"error: no master key in {data_dir} (pass --data-dir)", file=sys.stderr)
        return EXIT_USAGE
    try:
        # load, not load_or_create: a host-side command must not make keys in a wrong dir.
        key = MasterKey.load(master)
        if args.keys_command == "list":
            return _list_keys(key, args.output)
        if _no_store(data_dir, args):
            return EXIT_USAGE
        if args.keys_command == "rotate-oidc":
            return run(rotate_oidc(data_dir, _database(args), key))
        return run(_rotate(key, data_dir, args))
    except MasterKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _list_keys(key: MasterKey, output: str) -> int:
    infos = key.list_keys()
    if output == "json":
        print(
            json.dumps(
                [{"id": i.id, "current": i.current, "created_at": i.created_at} for i in infos],
                indent=2,
            )
        )
        return 0
    print(f"{'ID':12} {'CURRENT':8} CREATED")
    for i in infos:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.created_at))
        print(f"{i.id:12} {'*' if i.current else '':8} {created}")
    return 0


async def _rotate(key: MasterKey, data_dir: Path, args: argparse.Namespace) -> int:
    # The store is opened before rotating, so that a wrong --database fails with nothing
    # changed rather than with a new key and nothing re-wrapped.
    store: Store = open_store(data_dir, _database(args))
    await store.open()
    try:
        previous = key.current_id
        if args.keys_command == "rotate":
            print(f"Rotated: {key.rotate()} is the current key (was {previous}).")
            print("A running manager uses it from its next encryption; old keys are kept.")
        try:
            report = await rewrap_builtin(store, key)
            # The signing keys kept in the store follow the master key too.
            resealed = await reseal(store, key)
            if await OidcKeys(store, key).reseal():
                resealed.append(OIDC_KEYS)
            # And the data keys of records sealed at rest (the records stay as they are).
            data = await rewrap_data_keys(store, key)
        except StoreError as exc:
            print(f"error: re-wrapping failed: {exc}", file=sys.stderr)
            print(f"Run `{_PROG} keys rewrap` to finish.", file=sys.stderr)
            return EXIT_FAILED
        verb = args.keys_command
        await _audit(
            store,
            AuditKeys(key),
            "master_key",
            f"{_PROG} keys {verb}",
            Change(
                key.current_id,
                key.current_id,
                verb,
                f"{'rotated the master key to' if verb == 'rotate' else 're-wrapped under'}"
                f" {key.current_id}: {report.rewrapped} builtin secret version(s) re-wrapped,"
                f" {len(report.failed)} failed",
                before={"current": previous},
                after={
                    "current": key.current_id,
                    "rewrapped": report.rewrapped,
                    "already_current": report.already_current,
                    "failed": len(report.failed),
                    "signing_keys_resealed": resealed,
                    "data_keys_rewrapped": data.rewrapped,
                    "data_keys_failed": len(data.failed),
                },
            ),
        )
    finally:
        await store.close()
    _print_report(key.current_id, report)
    if resealed:
        print(f"Signing keys re-sealed under {key.current_id}: {', '.join(resealed)}.")
    _print_data_keys(key.current_id, data)
    return EXIT_FAILED if report.failed or data.failed else 0


def _print_report(current: str, report: RewrapReport) -> None:
    print(
        f"Builtin secrets under {current}: {report.rewrapped} re-wrapped,"
        f" {report.already_current} already current, {len(report.failed)} failed"
        f" ({report.changed_meanwhile} changed meanwhile, {report.gone} deleted meanwhile)."
    )
    for f in report.failed:
        print(f"failed: secret {f.secret_id} version {f.version}: {f.reason}", file=sys.stderr)
    if report.failed:
        print(
            f"They still open with their old key. Fix the cause and run `{_PROG} keys rewrap`.",
            file=sys.stderr,
        )


def _print_data_keys(current: str, report: DataKeysReport) -> None:
    print(
        f"Data keys under {current}: {report.rewrapped} re-wrapped,"
        f" {report.already_current} already current, {len(report.failed)} failed"
        f" ({report.changed_meanwhile} changed meanwhile)."
    )
    for f in report.failed:
        print(f"failed: data key of {f.owner}: {f.reason}", file=sys.stderr)


# -- allowlist --------------------------------------------------------------------------------


async def _allowlist_disable(data_dir: Path, args: argparse.Namespace) -> int:
    """Recovery from a lock-out: the API refuses the caller, the host does not ask."""
    if _no_store(data_dir, args) or (keys := _host_audit_keys(data_dir)) is None:
        return EXIT_USAGE
    store: Store = open_store(data_dir, _database(args))
    await store.open()
    try:
        before = await store.access_settings()
        if not before.allowlist_enabled:
            print("The IP allowlist is already disabled.")
            return 0
        # The event goes in the update's transaction: when it cannot be written, the
        # allowlist stays on and the command fails.
        await store.update_access_settings(
            time.time(),
            allowlist_enabled=False,
            audit=lambda _settings: _host_entry(
                store,
                keys,
                "allowlist",
                f"{_PROG} allowlist disable",
                Change(
                    "allowlist",
                    "allowlist",
                    "disable",
                    "disabled the IP allowlist on the manager host",
                    before={"enabled": True},
                    after={"enabled": False},
                ),
            ),
        )
    finally:
        await store.close()
    print("Disabled the IP allowlist; its entries are kept.")
    print("Running managers let every address in again within seconds.")
    return 0


def _serve_usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``serve``'s flags among themselves, before anything is set up."""
    if bool(args.tls_cert) != bool(args.tls_key):
        return "--tls-cert and --tls-key go together"
    if args.tls_san and args.tls_cert:
        return (
            "--tls-san names the self-made certificate; with --tls-cert, put the name in"
            " your certificate"
        )
    if problem := san_problem(args.tls_san):
        return problem
    if args.time_scale <= 0:
        return "--time-scale must be positive"
    if not 0 <= args.prune_delegates_after < float("inf"):
        return "--prune-delegates-after takes days, 0 (never) or more"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("install-service", "uninstall-service"):
        return _service(args)
    if args.command == "dev":
        return _dev(args)
    # What this process writes (store, keys, TLS, backups) is for this user alone; the
    # systemd unit sets the same (UMask=0077), this covers a manager started by hand.
    os.umask(0o077)
    data_dir: Path = (args.data_dir or _default_data_dir()).absolute()
    fmt = {"auto": None, "json": True, "console": False}[args.log_format]
    database = _database(args)
    if database is not None and not database.startswith(("postgresql://", "postgres://")):
        print("error: --database takes a postgresql:// URL", file=sys.stderr)
        return EXIT_USAGE
    limits = ConnectionLimits()
    if args.command == "serve":
        # Before logging is set up: a usage error changes nothing of the process.
        limits = ConnectionLimits(**{f: getattr(args, f) for f, *_ in _CONNECTION_FLAGS})
        if problem := limits.problem() or _serve_usage_problem(args):
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_USAGE
    masker = configure_logging(level=args.log_level, json_output=fmt)
    try:
        if args.command == "serve":
            host, port = args.listen
            issuer = args.oidc_issuer
            if issuer is not None and (not issuer.startswith("https://") or "?" in issuer):
                print("error: --oidc-issuer takes an https:// URL", file=sys.stderr)
                return EXIT_USAGE
            from manager.server.app import ManagerConfig

            config = ManagerConfig(
                data_dir=data_dir,
                host=host,
                port=port,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                tls_names=tuple(args.tls_san),
                prune_delegates_after=args.prune_delegates_after * 86400,
                timings=Timings().scaled(args.time_scale),
                database=_database(args),
                masker=masker,
                connections=limits,
                oidc_issuer=None if issuer is None else issuer.rstrip("/"),
            )
            return run(_serve_notified(config, _first_start(config, args)))
        if args.command == "migrate":
            return run(_migrate(data_dir, args))
        if args.command == "backup":
            return _backup(data_dir, args.output, database)
        if args.command == "allowlist":
            return run(_allowlist_disable(data_dir, args))
        if args.command == "keys":
            return _keys(data_dir, args)
        if args.command == "purge":
            return run(purge(data_dir, database, dry_run=args.dry_run))
        return run(_with_store(data_dir, args.token_command, args))
    except KeyboardInterrupt:
        return 130
    except (ConfigProblem, DataDirError, MasterKeyError, SchemaTooNew) as exc:
        # A certificate, an address or a master key this process cannot use as it is, or a
        # downgrade (the wrong release, refused before any write): configuration, not to be
        # retried (systemd's RestartPreventExitStatus=2).
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, StoreError) as exc:
        structlog.get_logger("tether.manager").error("manager failed", error=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        report_unexpected(exc, _PROG, debug=debug_wanted(args.debug))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

"""``tether-delegate run``: the daemon customers install on hosts in their network.

Exit statuses (``delegate.exit_codes``): 0 stopped cleanly, 1 failed, 2 bad configuration,
3 the manager refused the token (revoked, unknown) or another process took over this
delegate, 4 the manager no longer speaks this delegate's protocol. A service manager should
not restart on 2, 3 or 4.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from delegate.agent import Agent
from delegate.config import DEFAULT_TASK_USER_PREFIX, ConfigError, DelegateConfig, resolve
from delegate.doctor import run_doctor
from delegate.exit_codes import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED
from delegate.link.api import ManagerApi
from delegate.link.policy import LinkPolicy
from delegate.link.stream import Channel
from delegate.outbox.spool_key import SPOOL_KEY_FILE
from delegate.run import isolation
from delegate.run.launcher_client import LauncherError, ThroughLauncher, fetch_pool
from delegate.run.switch import InProcess, Switcher
from delegate.selfmetrics import self_metrics
from shared import __version__, sdnotify
from shared import service_install as svc
from shared.datadir import DataDirError, secure_data_dir
from shared.limits import Timings
from shared.logging import LEVELS, configure_logging
from shared.masking import Masker
from shared.protocol import PROTOCOL_VERSION, RegisterRequest
from shared.runtime import run
from shared.sealing import (
    SealError,
    load_or_create_private_key,
    public_from_private,
    public_key_b64,
)
from shared.startup import debug_wanted, report_unexpected
from shared.tls import client_context

__all__ = ["main"]

_PROG = "tether-delegate"

log = structlog.get_logger("tether.delegate")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tether-delegate", description="The Tether delegate.")
    p.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    debug_help = "show the traceback of an unexpected error ($TETHER_DEBUG=1)"
    p.add_argument("--debug", action="store_true", help=debug_help)
    sub = p.add_subparsers(dest="command", required=True)
    # The settings, shared by run and doctor (which checks the delegate run would be).
    r = argparse.ArgumentParser(add_help=False)
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    r.add_argument("--config", type=Path, help="YAML file of settings (lowest precedence)")
    r.add_argument("--manager-url", help="https://HOST:PORT ($TETHER_MANAGER_URL)")
    r.add_argument("--token", help="delegate token ($TETHER_TOKEN); prefer --token-file")
    r.add_argument("--token-file", help="file holding the token ($TETHER_TOKEN_FILE)")
    r.add_argument(
        "--ca-file", help="CA bundle the manager's certificate chains to ($TETHER_CA_FILE)"
    )
    r.add_argument("--name", help="delegate name ($TETHER_DELEGATE_NAME; default: hostname)")
    r.add_argument(
        "--selector",
        action="append",
        dest="selectors",
        help="a selector tasks can ask for; repeat, or comma-separate ($TETHER_SELECTORS)",
    )
    r.add_argument("--max-tasks", type=int, help="tasks run at once ($TETHER_MAX_TASKS; default 4)")
    r.add_argument("--data-dir", help="keys and work files ($TETHER_DELEGATE_DATA_DIR)")
    r.add_argument("--log-level", choices=LEVELS)
    r.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    r.add_argument(
        "--time-scale", type=float, help="multiply the delegate's own timings; for tests"
    )
    r.add_argument("--client-cert", help="client certificate for mTLS ($TETHER_CLIENT_CERT)")
    r.add_argument("--client-key", help="its private key ($TETHER_CLIENT_KEY)")
    r.add_argument(
        "--secret-cache-ttl",
        type=float,
        help="seconds fetched secret values stay cached in memory; 0 turns the cache off"
        " ($TETHER_SECRET_CACHE_TTL; default 1800)",
    )
    r.add_argument(
        "--shared-user",
        action="store_true",
        default=None,
        help="run tasks as this delegate's own user, which lets a task read its token, key"
        " and spool; for a delegate that cannot switch users ($TETHER_SHARED_USER)",
    )
    r.add_argument(
        "--task-users",
        help="comma-separated accounts tasks run as, one per slot ($TETHER_TASK_USERS;"
        f" default {DEFAULT_TASK_USER_PREFIX}0 .. N-1)",
    )
    r.add_argument(
        "--task-user-prefix",
        help="task users are PREFIX0 .. PREFIX<max-tasks - 1> ($TETHER_TASK_USER_PREFIX;"
        f" default {DEFAULT_TASK_USER_PREFIX})",
    )
    r.add_argument(
        "--launcher-socket",
        help="the task launcher's socket: it starts tasks as task users, so this delegate"
        " needs no capability ($TETHER_LAUNCHER_SOCKET)",
    )
    r.add_argument(
        "--work-dir",
        help="where tasks' private directories are made ($TETHER_WORK_DIR; default: next"
        " to the data dir, DATA_DIR-tasks)",
    )
    sub.add_parser("run", parents=[r], help="connect to the manager and run tasks")
    sub.add_parser(
        "doctor",
        parents=[r],
        help="check DNS, proxy, TLS, clock, token, secret managers, isolation and spool;"
        " one line each, exit 1 on a failure",
    )
    _service_parsers(sub)
    return p


# -- install-service / uninstall-service ------------------------------------------------------


def _service_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    i = sub.add_parser("install-service", help="install and start the systemd service")
    i.add_argument("--root", type=Path, help="write every file under DIR; run no systemctl")
    i.add_argument("--user", default="tether", help="account the service runs as (tether)")
    i.add_argument("--manager-url", required=True, help="https://HOST:PORT")
    token = i.add_mutually_exclusive_group()
    token.add_argument("--token-file", type=Path, help="file holding the token")
    token.add_argument("--token", help="the token (default: $TETHER_TOKEN); prefer --token-file")
    i.add_argument("--ca-file", type=Path, help="CA bundle the manager's certificate chains to")
    i.add_argument("--name", help="delegate name (default: the host's name, at each start)")
    i.add_argument(
        "--selector", action="append", dest="selectors", help="repeat, or comma-separate"
    )
    i.add_argument("--max-tasks", type=int, help="tasks run at once (default 4)")
    i.add_argument(
        "--task-user-prefix",
        default=DEFAULT_TASK_USER_PREFIX,
        help="accounts made for the task slots: PREFIX0 .. (default %(default)s)",
    )
    i.add_argument("--executable", help="path systemd starts (default: this installation's)")
    u = sub.add_parser("uninstall-service", help="stop the service and remove its files")
    u.add_argument("--root", type=Path, help="remove the files under DIR; run no systemctl")


def _service(args: argparse.Namespace) -> int:
    try:
        if args.command == "uninstall-service":
            removal = svc.delegate_removal()
            for path in svc.uninstall(removal, args.root):
                print(f"removed {path}")
            print(removal.kept)
            return 0
        if args.token_file is not None:
            token = svc.read_input(args.token_file).decode()
        else:
            token = args.token or os.environ.get("TETHER_TOKEN", "")
        plan = svc.delegate_plan(
            manager_url=args.manager_url,
            token=token,
            command=[args.executable] if args.executable else svc.find_executable(_PROG),
            user=args.user,
            ca_pem=svc.read_input(args.ca_file) if args.ca_file else None,
            name=args.name,
            selectors=[s for item in args.selectors or () for s in item.split(",") if s.strip()],
            max_tasks=args.max_tasks,
            task_user_prefix=args.task_user_prefix,
        )
        for path in svc.install(plan, args.root):
            print(f"wrote {path}")
    except svc.InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, svc.CommandFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


# -- systemd notify: READY once the channel holds, watchdog while heartbeats are acked ------


def _notify_channel(channel: Channel, lost_after: Callable[[], float]) -> asyncio.Task[None] | None:
    previous = channel.on_mode_change
    ready = False

    def on_mode_change(mode: str) -> None:
        nonlocal ready
        if previous is not None:
            previous(mode)
        text = {
            "stream": "connected (stream)",
            "polling": "connected (polling over HTTPS)",
        }.get(mode, "connecting to the manager")
        if mode in ("stream", "polling") and not ready:
            ready = True
            sdnotify.ready(text)
        else:
            sdnotify.status(text)

    def healthy() -> bool:
        ack = channel.last_ack  # the channel's clock is time.monotonic
        return ack is not None and time.monotonic() - ack < lost_after()

    channel.on_mode_change = on_mode_change
    return sdnotify.start_watchdog(healthy)


def _switcher(config: DelegateConfig) -> Switcher | None:
    """Who starts tasks as task users: the task launcher when one is configured, else this
    process; None when tasks run as this process's user. IsolationError when none of
    these is possible as configured; LauncherError when the launcher cannot be asked."""
    if config.shared_user:
        return None
    switcher: Switcher
    if config.launcher_socket is not None:
        users, work_dir = fetch_pool(config.launcher_socket)
        if len(users) < config.max_tasks:
            raise isolation.IsolationError(
                f"the task launcher has {len(users)} slots; {config.max_tasks} tasks at once"
                " need as many"
            )
        users = users[: config.max_tasks]
        # The same checks as for accounts named here, and the same accounts seen from here.
        if isolation.lookup_users([u.name for u in users], own_uid=os.geteuid()) != users:
            raise isolation.IsolationError(
                "the task launcher's task users are not the accounts of those names here"
            )
        if work_dir != config.work_root:
            raise isolation.IsolationError(
                f"the task launcher's work directory is {work_dir}, this delegate's"
                f" {config.work_root}: set work_dir to the launcher's"
            )
        switcher = ThroughLauncher(config.launcher_socket, users)
    else:
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                status = f.read()
        except OSError:
            status = ""  # no /proc: nothing shows the capabilities, so none are counted
        missing = isolation.missing_capabilities(status)
        if missing:
            raise isolation.IsolationError(
                "this delegate cannot run tasks as other users (it lacks "
                f"{', '.join(missing)}): give it the task launcher's socket"
                " (--launcher-socket; the service install-service writes does), or run it"
                " as root, or pass --shared-user to run tasks as its own user"
            )
        switcher = InProcess(isolation.lookup_users(config.task_users, own_uid=os.geteuid()))
    if config.token_file is not None:
        _check_private(config.token_file, "token file", switcher.users)
    return switcher


def _check_private(path: Path, what: str, users: Sequence[isolation.TaskUser]) -> None:
    """IsolationError when a task user could read ``path`` by its owner, group or mode.

    Group bits alone do not count: under systemd a credential file carries an ACL for the
    service's user, which shows as group bits, and no task user is in that group.
    """
    try:
        st = path.stat()
    except OSError:
        return  # read already, by resolve(); a credential that went away since is fine
    readable = (
        st.st_mode & 0o004
        or st.st_uid in {u.uid for u in users}
        or (st.st_mode & 0o040 and st.st_gid in {u.gid for u in users})
    )
    if readable:
        raise isolation.IsolationError(
            f"{what} {path} can be read by the task users (mode {st.st_mode & 0o777:04o},"
            f" uid {st.st_uid}, gid {st.st_gid}); make it 0600 and the delegate's"
        )


async def _run(config: DelegateConfig, masker: Masker, switcher: Switcher | None) -> int:
    try:
        # work/ is the tasks' scratch space, emptied at start; its files are theirs.
        secure_data_dir(config.data_dir, scratch=("work",))
        private = load_or_create_private_key(config.data_dir / "delegate.key")
        # The spool's own key, made and checked like the X25519 key beside it (0600).
        spool_key = load_or_create_private_key(config.data_dir / SPOOL_KEY_FILE)
    except (DataDirError, SealError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # Made 0700 by the key's creation; an older or hand-made one is brought back to it.
    config.data_dir.chmod(0o700)
    timings = Timings().scaled(config.time_scale)
    registration = RegisterRequest(
        name=config.name,
        hostname=socket.gethostname(),
        version=__version__,
        protocol_version=PROTOCOL_VERSION,
        selectors=list(config.selectors),
        capacity=config.max_tasks,
        task_types=list(config.task_types),
        public_key=public_key_b64(public_from_private(private)),
        instance=secrets.token_hex(8),
        isolation="shared_user" if switcher is None else "task_users",
    )
    try:
        ssl_ctx = client_context(
            config.ca_file, client_cert=config.client_cert, client_key=config.client_key
        )
    except (ssl.SSLError, OSError, ValueError) as exc:
        print(f"error: {tls_problem(config)}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    stop = asyncio.Event()
    force = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: cancelling running tasks now")
            force.set()
        else:
            log.info("stopping: finishing running tasks", grace_s=timings.shutdown_grace)
            sdnotify.stopping()
            stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    async with ManagerApi(
        config.manager_url, token=config.token, registration=registration, ssl_context=ssl_ctx
    ) as api:
        channel = Channel(
            api,
            policy=LinkPolicy(
                reconnect_base=timings.reconnect_base, reconnect_max=timings.reconnect_max
            ),
        )
        agent = Agent(
            config,
            api,
            link=channel,
            private_key=private,
            timings=timings,
            process_masker=masker,
            switcher=switcher,
            spool_key=spool_key,
            transport=channel.requests,
        )
        channel.metrics_source = self_metrics(agent.heartbeat_state, started=time.monotonic())
        log.info(
            "delegate starting",
            name=config.name,
            manager=config.manager_url,
            selectors=list(config.selectors),
            max_tasks=config.max_tasks,
        )
        if switcher is None:
            log.warning(
                "tasks run as this delegate's own user (--shared-user): a task can read its"
                " token, private key and spool",
                isolation=registration.isolation,
            )
        else:
            log.info(
                "tasks run as task users",
                isolation=registration.isolation,
                task_users=[u.name for u in switcher.users],
                work_dir=str(config.work_root),
                launcher=str(config.launcher_socket) if config.launcher_socket else None,
            )
        watchdog = _notify_channel(
            channel,
            lambda: api.registered.lost_after_s if api.registered else timings.lost_after,
        )
        try:
            status = await agent.run(stop, force)
        finally:
            sdnotify.stopping()
            await sdnotify.stop_watchdog(watchdog)
    log.info("delegate stopped", status=status)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command not in ("run", "doctor"):
        return _service(args)
    flags = {
        "manager_url": args.manager_url,
        "token": args.token,
        "token_file": args.token_file,
        "ca_file": args.ca_file,
        "name": args.name,
        "selectors": [s for item in args.selectors or () for s in item.split(",") if s.strip()],
        "max_tasks": args.max_tasks,
        "data_dir": args.data_dir,
        "log_level": args.log_level,
        "time_scale": args.time_scale,
        "client_cert": args.client_cert,
        "client_key": args.client_key,
        "secret_cache_ttl": args.secret_cache_ttl,
        "shared_user": args.shared_user,
        "task_users": args.task_users,
        "task_user_prefix": args.task_user_prefix,
        "work_dir": args.work_dir,
        "launcher_socket": args.launcher_socket,
    }
    try:
        config = resolve(flags, os.environ, args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "doctor":
        return _doctor(config)
    # The token is a secret of this process: it never shows in its own log output.
    masker = Masker([config.token])
    fmt = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(level=config.log_level, json_output=fmt, masker=masker)
    if config.time_scale <= 0:
        print("error: --time-scale must be positive", file=sys.stderr)
        return EXIT_CONFIG
    try:
        switcher = _switcher(config)
    except isolation.IsolationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except LauncherError as exc:
        # Restartable: the launcher may be starting, or restarting.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    isolation.harden_process(task_users=switcher is not None)
    # No child (a task, a custom secret provider) inherits the token through the
    # environment; /proc/<pid>/environ is closed by harden_process.
    for variable in ("TETHER_TOKEN", "TETHER_TOKEN_FILE"):
        os.environ.pop(variable, None)
    try:
        # asyncio's own loop: a delegate holds a handful of connections, so uvloop saves it
        # little, and under a storm of connection resets uvloop with aiohttp was seen to
        # keep a transport on a file descriptor the kernel reused, which killed the process
        # (tests/faults/test_network_cut.py).
        return _profiled(lambda: run(_run(config, masker, switcher), prefer_uvloop=False))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        report_unexpected(exc, _PROG, debug=debug_wanted(args.debug))
        return EXIT_FAILED


def _profiled(main: Callable[[], int]) -> int:
    """``main()``, under cProfile when ``TETHER_DELEGATE_PROFILE`` names a file to write the
    profile to, ``{pid}`` in it replaced by this process's id (several delegates may share
    one environment). For measuring the delegate's own cost per task; cProfile sees this
    thread only, and times on the wall clock."""
    target = os.environ.pop("TETHER_DELEGATE_PROFILE", None)
    if not target:
        return main()
    target = target.replace("{pid}", str(os.getpid()))
    import cProfile

    profile = cProfile.Profile()
    try:
        return profile.runcall(main)
    finally:
        profile.dump_stats(target)


def _doctor(config: DelegateConfig) -> int:
    def task_users() -> list[str] | None:
        switcher = _switcher(config)
        return None if switcher is None else [u.name for u in switcher.users]

    # Quiet logs: the doctor's lines are the output.
    configure_logging(level="error", json_output=False)
    return run(run_doctor(config, task_users), prefer_uvloop=False)


def tls_problem(config: DelegateConfig) -> str:
    """What failed when the TLS files would not load, naming them and their flags."""
    if config.client_cert is not None:
        return (
            f"cannot load the CA file {config.ca_file or '(system store)'} (--ca-file) or the"
            f" client certificate {config.client_cert} and key {config.client_key}"
            " (--client-cert, --client-key)"
        )
    return f"cannot load the CA file {config.ca_file} (check --ca-file: PEM certificates)"


if __name__ == "__main__":
    sys.exit(main())

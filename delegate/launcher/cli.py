"""``tether-task-launcher``: the root-side service that starts the delegate's tasks as their
slots' users (delegate/launcher/server.py says what it will and will not do).

Listens on the socket systemd passes it (``tether-task-launcher.socket``), or, run by hand,
on ``--socket PATH``, made 0600 and the client user's. Exit statuses: 0 stopped, 2 cannot
work as configured (not root, a bad account, no socket).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import signal
import socket
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from delegate.launcher.server import Launcher, LauncherConfig
from delegate.run.isolation import (
    IsolationError,
    harden_process,
    lookup_users,
    missing_capabilities,
)
from shared import __version__
from shared.logging import LEVELS, configure_logging
from shared.runtime import run

__all__ = ["main"]

EXIT_CONFIG = 2
# sd_listen_fds(3): the first socket systemd passes is descriptor 3.
_LISTEN_FD = 3

log = structlog.get_logger("tether.launcher")


class _Unusable(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tether-task-launcher",
        description="Start a Tether delegate's tasks as their slots' users.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--client-user", required=True, help="the delegate's account, the only client")
    p.add_argument(
        "--task-users", required=True, help="comma-separated accounts, one per slot, in order"
    )
    p.add_argument("--work-dir", type=Path, required=True, help="where tasks' directories are")
    p.add_argument("--socket", type=Path, help="listen here (default: the socket systemd passes)")
    p.add_argument("--log-level", choices=LEVELS, default="info")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    return p


def _config(args: argparse.Namespace) -> LauncherConfig:
    try:
        client = pwd.getpwnam(args.client_user)
    except KeyError:
        raise _Unusable(f"client user {args.client_user} does not exist") from None
    if client.pw_uid == 0:
        raise _Unusable("the client user must not be root: a root delegate switches itself")
    names = [n.strip() for n in args.task_users.split(",") if n.strip()]
    if not names:
        raise _Unusable("--task-users names no account")
    try:
        users = lookup_users(names, own_uid=client.pw_uid)
    except IsolationError as exc:
        raise _Unusable(str(exc)) from None
    if not args.work_dir.is_absolute() or not args.work_dir.is_dir():
        raise _Unusable(f"work directory {args.work_dir} is not an absolute path to a directory")
    return LauncherConfig(client_uid=client.pw_uid, users=users, work_root=args.work_dir)


def _passed_socket() -> socket.socket | None:
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(variable, None)
    sock = socket.socket(fileno=_LISTEN_FD)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        raise _Unusable(
            "the socket passed is not a Unix SOCK_SEQPACKET one (ListenSequentialPacket=)"
        )
    os.set_inheritable(sock.fileno(), False)
    return sock


def _bound_socket(path: Path, client_uid: int) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise _Unusable(f"{path} exists and is not a socket")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    # Only the client user may connect (and root, whom SO_PEERCRED then turns away).
    os.chown(path, client_uid, -1)
    sock.listen(64)
    return sock


async def _serve(launcher: Launcher, listener: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    serving = asyncio.create_task(launcher.serve(listener))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, serving.cancel)
    log.info(
        "task launcher ready",
        slots=[u.name for u in launcher.config.users],
        work_dir=str(launcher.config.work_root),
    )
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    log.info("task launcher stopped")
    return 0


def _setup(args: argparse.Namespace) -> tuple[LauncherConfig, socket.socket]:
    with open("/proc/self/status", encoding="ascii") as f:
        missing = missing_capabilities(f.read())
    if missing or os.geteuid() != 0:
        raise _Unusable(
            "the task launcher runs as root with CAP_SETUID, CAP_SETGID, CAP_CHOWN and"
            f" CAP_KILL (lacking: {', '.join(missing) or 'root'})"
        )
    config = _config(args)
    listener = _passed_socket()
    if listener is None:
        if args.socket is None:
            raise _Unusable("no socket: pass --socket PATH, or start it from its .socket unit")
        listener = _bound_socket(args.socket, config.client_uid)
    return config, listener


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    fmt = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(level=args.log_level, json_output=fmt)
    try:
        config, listener = _setup(args)
    except (_Unusable, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # Tasks' environments pass through this process: its memory is kept from ptrace and
    # /proc/PID/mem, and no task gains a privilege through a setuid program.
    harden_process(task_users=True)
    return run(_serve(Launcher(config), listener), prefer_uvloop=False)


if __name__ == "__main__":
    sys.exit(main())

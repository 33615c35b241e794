"""A small client of systemd's notify protocol, for services run with ``Type=notify``.

The protocol is one datagram per message, ``KEY=VALUE`` lines, sent to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a leading ``@`` names the abstract namespace). Outside systemd
the variable is unset and every call here is a no-op that returns False, so both services
call these unconditionally.

The watchdog is fed only while the caller's ``healthy()`` says so: a process whose event loop
is alive but whose link is dead stops feeding it, and systemd restarts it after
``WatchdogSec=``. Children never see ``$NOTIFY_SOCKET`` because the executor passes tasks an
allow-listed environment, and ``NotifyAccess=main`` makes systemd ignore them anyway.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

import structlog

__all__ = [
    "notify",
    "ready",
    "start_watchdog",
    "status",
    "stop_watchdog",
    "stopping",
    "watchdog",
    "watchdog_interval",
    "watchdog_loop",
]

log = structlog.get_logger("tether.sdnotify")


def _address(environ: Mapping[str, str]) -> str | None:
    path = environ.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    # vsock: and other transports of newer systemd versions are not for a host service.
    return None


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (one or more ``KEY=VALUE`` lines); True when a datagram went out."""
    address = _address(os.environ if environ is None else environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode(), address)
    except OSError as exc:
        # Never fatal: a service that cannot reach systemd still does its work, and a
        # missed READY shows as a start timeout, which is the right place to see it.
        log.debug("sd_notify failed", state=state.split("\n", 1)[0], error=str(exc))
        return False
    return True


def ready(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """Start-up is complete; ``status`` goes with it, in the same datagram."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""), environ=environ)


def stopping(*, environ: Mapping[str, str] | None = None) -> bool:
    return notify("STOPPING=1", environ=environ)


def status(text: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """A one-line status that ``systemctl status`` shows."""
    return notify(f"STATUS={text}", environ=environ)


def watchdog(*, environ: Mapping[str, str] | None = None) -> bool:
    return notify("WATCHDOG=1", environ=environ)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds when this process is the one expected to feed it."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    # Set for another process (a wrapper that exec'd us keeps its PID; a child does not).
    if pid and pid != str(os.getpid()):
        return None
    return usec / 1_000_000


async def watchdog_loop(
    healthy: Callable[[], bool],
    interval: float,
    *,
    ping: Callable[[], bool] = watchdog,
) -> None:
    """Send WATCHDOG=1 every ``interval`` seconds while ``healthy()``; runs until cancelled."""
    was_healthy: bool | None = None
    while True:
        ok = healthy()
        if ok:
            ping()
        if ok != was_healthy and was_healthy is not None:
            # Both ends of an outage in the log, once each, rather than a line per tick.
            if ok:
                log.info("watchdog resumed")
            else:
                log.warning("watchdog withheld: service unhealthy")
        was_healthy = ok
        await asyncio.sleep(interval)


def start_watchdog(
    healthy: Callable[[], bool], *, environ: Mapping[str, str] | None = None
) -> asyncio.Task[None] | None:
    """Run :func:`watchdog_loop` at half the timeout systemd set, as sd_watchdog_enabled(3)
    advises; None when no watchdog is configured for this process."""
    timeout = watchdog_interval(environ)
    if timeout is None or _address(os.environ if environ is None else environ) is None:
        return None

    def ping() -> bool:
        return watchdog(environ=environ)

    return asyncio.get_running_loop().create_task(
        watchdog_loop(healthy, timeout / 2, ping=ping), name="sd-watchdog"
    )


async def stop_watchdog(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        # Our own cancel: swallow it, unless the caller is itself being cancelled.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise

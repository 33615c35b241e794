"""The manager's connections: how long a client may take, how many may wait unauthenticated,
and how close the process is to its limit of open files.

aiohttp closes a kept-alive connection that has been idle for its ``keepalive_timeout``, but
it has no bound on a client that sends its request head slowly (a byte a second holds a
connection, and a file descriptor, for ever). So each connection's protocol is wrapped in a
guard (``_Guard``) that the listener (``GuardedSite``) puts in front of aiohttp's own:

- **header timeout**: from the end of the TLS handshake (which has as long, and at least
  10 s, of its own), and from the first byte of each later request on a kept-alive
  connection, the request head must be whole within ``header_timeout``, or the connection
  is closed. The outermost middleware tells the guard when a request's handling begins and
  ends.
- **idle timeout**: aiohttp's ``keepalive_timeout``, applied between requests. A request in
  flight is never idle: a long-poll, a followed log or a delegate's WebSocket stream (which
  has heartbeats of its own) lives as long as its handler does.
- **a cap on unauthenticated connections**: a connection counts as authenticated from its
  first request that needed a credential and succeeded. Beyond ``max_unauthenticated``
  others, a new connection is answered 503 with Retry-After and closed.
- **the file-descriptor limit**: open descriptors are compared with the soft limit every
  ``fd_check_interval``; near it, one warning per interval.

Closures and refusals are counted, and logged once per interval with their counts rather
than once each (a slow-client attack would otherwise flood the log).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client.core import Metric

from manager.api.http import Handler, RouteTable
from manager.metrics import gauge

__all__ = [
    "CONNECTIONS",
    "ConnectionLimits",
    "Connections",
    "GuardedSite",
    "credential_accepted",
    "open_files",
]

log = structlog.get_logger("tether.connections")

# After its 503 a refused connection is closed once the client's request arrives (so the
# answer is not lost to a reset), or after this long.
_REFUSED_LINGER_S = 1.0
_HANDSHAKE_S = 10.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    # From connecting (or from a request's first byte on a kept-alive connection) to the
    # end of the request head; bounds the TLS handshake too (never below 10 s).
    header_timeout: float = 15.0
    # A kept-alive connection with no request in flight is closed after this long: above
    # the 60 s nginx keeps idle upstream connections and the 75 s of deploy/loadbalancer/,
    # so a balancer that pools connections closes them first and never reuses one the
    # manager has just closed.
    idle_timeout: float = 90.0
    # Connections that have not yet carried an authenticated request, at most.
    max_unauthenticated: int = 512
    # How often open file descriptors are compared with the limit; a warning from this
    # share of it.
    fd_check_interval: float = 10.0
    fd_warn_at: float = 0.8

    def problem(self) -> str | None:
        """Why these limits cannot be used, or None."""
        if min(self.header_timeout, self.idle_timeout, self.fd_check_interval) <= 0:
            return "--header-timeout, --idle-timeout and --fd-check-interval must be positive"
        if self.max_unauthenticated < 1:
            return "--max-unauthenticated must be at least 1"
        return None


def open_files() -> int | None:
    """This process's open file descriptors, or None where the system does not say."""
    for where in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(where))
        except OSError:
            continue
    return None


def credential_accepted(
    table: RouteTable,
) -> Callable[[web.Request, web.StreamResponse], bool]:
    """Whether an answer shows the caller authenticated: a route that needs a credential
    (a user's, a delegate token or a delegate session) answered with success. The WebSocket
    stream's 101 counts: its credential is checked before the upgrade."""

    def accepted(request: web.Request, response: web.StreamResponse) -> bool:
        return response.status < 400 and table.auth_for(request) in _CREDENTIALED

    return accepted


_CREDENTIALED = frozenset({"user", "delegate", "delegate_token", "scim"})


class Connections:
    """The guards of one listener, and what they count."""

    def __init__(
        self,
        limits: ConnectionLimits,
        *,
        credential_accepted: Callable[[web.Request, web.StreamResponse], bool],
    ) -> None:
        self.limits = limits
        self._credential_accepted = credential_accepted
        self._guards: dict[RequestHandler, _Guard] = {}
        self.unauthenticated = 0
        # What was closed or refused since the last report, by reason.
        self._tally: Counter[str] = Counter()
        self._reported = -float("inf")

    @property
    def open(self) -> int:
        return len(self._guards)

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guard(self, server)

    def full(self) -> bool:
        return self.unauthenticated >= self.limits.max_unauthenticated

    def admit(self, inner: RequestHandler, guard: _Guard) -> None:
        self._guards[inner] = guard
        self.unauthenticated += 1

    def authenticated(self) -> None:
        self.unauthenticated -= 1

    def left(self, inner: RequestHandler, *, authenticated: bool) -> None:
        del self._guards[inner]
        if not authenticated:
            self.unauthenticated -= 1

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Outermost: a request's handling begins once its head is whole."""
        guard = self._guards.get(request.protocol)
        if guard is None:  # not through a GuardedSite (an in-process test server)
            return await handler(request)
        guard.begun()
        try:
            return await handler(request)
        finally:
            guard.ended()

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        guard = self._guards.get(request.protocol)
        if guard is not None and self._credential_accepted(request, response):
            guard.authenticated()

    def gauges(self) -> Iterator[Metric]:
        authenticated = self.open - self.unauthenticated
        yield gauge(
            "tether_connections",
            "Open connections, by whether one of their requests has authenticated",
            ["state"],
            {("authenticated",): authenticated, ("unauthenticated",): self.unauthenticated},
        )

    def count(self, reason: str) -> None:
        """A connection closed or refused for ``reason``; the first of a quiet spell is
        logged at once, the rest once per interval (``report``)."""
        self._tally[reason] += 1
        if time.monotonic() - self._reported >= self.limits.fd_check_interval:
            self.report()

    def report(self) -> None:
        if self._tally:
            log.warning(
                "connections closed or refused",
                **dict(self._tally),
                open=self.open,
                unauthenticated=self.unauthenticated,
                max_unauthenticated=self.limits.max_unauthenticated,
            )
            self._tally.clear()
            self._reported = time.monotonic()

    def check_files(self) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        used = open_files()
        if used is None or soft == resource.RLIM_INFINITY:
            return
        if used >= self.limits.fd_warn_at * soft:
            log.warning(
                "open files near the limit: new clients will be refused by the system",
                open_files=used,
                limit=soft,
                connections=self.open,
                unauthenticated=self.unauthenticated,
                hint="raise LimitNOFILE (systemd) or ulimit -n",
            )

    async def watch_forever(self) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and self.limits.max_unauthenticated > soft // 2:
            log.warning(
                "the open-file limit is low for the cap on unauthenticated connections",
                limit=soft,
                max_unauthenticated=self.limits.max_unauthenticated,
            )
        while True:
            await asyncio.sleep(self.limits.fd_check_interval)
            self.check_files()
            self.report()


CONNECTIONS: web.AppKey[Connections] = web.AppKey("tether_connections", Connections)


class _Guard(asyncio.Protocol):
    """One connection: aiohttp's protocol behind it, made once the connection is admitted."""

    def __init__(self, connections: Connections, server: web.Server) -> None:
        self._c = connections
        self._server = server
        self._inner: RequestHandler | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False
        self._authenticated = False

    # -- asyncio's calls -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no subclasses of asyncio's, but they are transports.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        if self._c.full():
            self._refuse(transport)
            return
        self._inner = self._server()
        self._c.admit(self._inner, self)
        self._inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:  # refused: its request arrived, the 503 went before it
            if self._transport is not None:
                self._transport.close()
            return
        if not self._busy and self._timer is None:
            self._arm()  # the first byte of a request on a kept-alive connection
        self._inner.data_received(data)

    def eof_received(self) -> None:
        # None: the transport closes itself, as it does under aiohttp's own protocol.
        if self._inner is not None:
            self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._inner is None:
            return
        self._c.left(self._inner, authenticated=self._authenticated)
        self._inner.connection_lost(exc)

    # -- what the app tells it ---------------------------------------------------------------

    def begun(self) -> None:
        self._busy = True
        self._disarm()

    def ended(self) -> None:
        self._busy = False

    def authenticated(self) -> None:
        if not self._authenticated:
            self._authenticated = True
            self._c.authenticated()

    # -- its own -----------------------------------------------------------------------------

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._c.limits.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        if self._busy or self._transport is None:
            return
        self._c.count("header_timeout")
        # No answer and no TLS goodbye: a client this slow would hold the descriptor through
        # both.
        self._transport.abort()

    def _refuse(self, transport: asyncio.Transport) -> None:
        self._c.count("refused_unauthenticated")
        transport.write(_BUSY)
        asyncio.get_running_loop().call_later(_REFUSED_LINGER_S, transport.close)


def _busy_answer() -> bytes:
    body = json.dumps(
        {
            "error": {
                "code": "busy",
                "message": "too many connections are waiting to authenticate; try again",
                "field": None,
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


_BUSY = _busy_answer()


class GuardedSite(web.BaseSite):
    """aiohttp's SockSite, with each connection's protocol behind a guard, and the TLS
    handshake and shutdown bounded by the header timeout."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        connections: Connections,
        *,
        ssl_context: Any = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._sock = sock
        self._connections = connections
        host, port = sock.getsockname()[:2]
        self._name = f"{'https' if ssl_context else 'http'}://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        # A handshake is the first part of a request head, but never given less than
        # _HANDSHAKE_S: on a busy manager, the handshakes of many new clients queue.
        tls = self._ssl_context is not None
        bound = max(self._connections.limits.header_timeout, _HANDSHAKE_S) if tls else None
        self._server = await asyncio.get_running_loop().create_server(
            self._connections.protocol_factory(server),
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=bound,
            ssl_shutdown_timeout=bound,
        )

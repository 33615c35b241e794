"""The delegate plane under /api/v1/delegate: register, stream, poll, acquire, logs, result.

On the stream a delegate says hello (its process key), heartbeats, and acks or declines
the assignments pushed to it (manager.tasks.handout); a polling delegate is answered its
assignment by the long-poll.

Delegates authenticate with their token only to register; every other call carries the
signed session credential that registration returns. The user API's guards (API keys, and
later the IP allowlist and rate limits) do not apply here.
"""

from __future__ import annotations

import base64
import binascii
import math
import re

import structlog
from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from manager.access.session_signer import AuthError, bearer
from manager.api.context import Context, ctx
from manager.api.http import (
    ApiProblem,
    Route,
    RouteTable,
    client_gone,
    json_response,
    parse_body,
)
from manager.api.stream_requests import StreamRequests
from manager.core.eligibility import disallowed_selectors
from manager.records import DelegateRecord, TokenRecord
from manager.tasks.hub import Session
from shared import __version__
from shared.ids import new_id
from shared.limits import MAX_FRAME_BYTES, MAX_LOG_BATCH_BYTES
from shared.protocol import (
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
    AcquireResponse,
    CloseCode,
    Heartbeat,
    HeartbeatAck,
    Hello,
    LogBatch,
    LogBatchAck,
    ProtocolError,
    RegisterRequest,
    RegisterResponse,
    ResultAck,
    StreamLogs,
    StreamResult,
    TaskAck,
    TaskDecline,
    TaskResult,
    parse_delegate_frame,
)

__all__ = ["add_delegate_routes", "presented_token"]

log = structlog.get_logger("tether.delegate_plane")

# Cap on the long-poll wait a delegate may ask for, whatever it sends.
MAX_POLL_WAIT_S = 60.0
# The delegate's name for its process (long-poll) or for one acquire, repeated when it asks
# again after a lost answer.
LINK_KEY = re.compile(r"[A-Za-z0-9_-]{8,64}")


async def _session(request: web.Request) -> Session:
    """The caller's session, once its credential and the token behind it hold (revoked
    tokens: manager.access.delegate_tokens)."""
    c = ctx(request)
    credential = bearer(request.headers.get("Authorization"))
    if credential is None:
        raise ApiProblem(401, "unauthenticated", "missing delegate session credential")
    try:
        claims = c.signer.verify(credential)
    except AuthError as exc:
        raise ApiProblem(401, exc.code, exc.message) from None
    if claims.token_id in c.hub.revoked_tokens:
        raise ApiProblem(401, "token_revoked", "the delegate token was revoked")
    token = await c.tokens.get(claims.token_id)
    if token is None or token.revoked:
        c.hub.revoke(claims.token_id)
        raise ApiProblem(401, "token_revoked", "the delegate token was revoked")
    session = c.hub.sessions.get(claims.delegate_id)
    if session is not None and session.delegate.token_id == claims.token_id:
        c.hub.seen(session)
        session.scope = token.scope
        return session
    record = await c.delegates.get(claims.delegate_id)
    if record is None or record.token_id != claims.token_id:
        raise ApiProblem(401, "invalid_credential", "unknown delegate; register again")
    session = c.hub.session(record)
    session.scope = token.scope
    return session


def _check_public_key(encoded: str) -> None:
    """A 32-byte X25519 key that is not of low order. A low-order key makes every shared
    secret all-zero, which ``cryptography`` refuses to return: sealing to such a key would
    fail at acquire, after the task was already handed out."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ApiProblem(
            400, "invalid", "public_key: expected 32 bytes in base64", field="public_key"
        )
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        raise ApiProblem(
            400,
            "invalid",
            "public_key: not a usable X25519 key (a low-order point)",
            field="public_key",
        ) from None


async def presented_token(request: web.Request) -> TokenRecord:
    """The live delegate token the request carries; 401 when there is none."""
    token = bearer(request.headers.get("Authorization"))
    if token is None:
        raise ApiProblem(401, "unauthenticated", "missing delegate token")
    record = await ctx(request).delegate_tokens.by_token(token)
    if record is None:
        raise ApiProblem(401, "invalid_token", "the delegate token is not known to this manager")
    if record.revoked_at is not None:
        raise ApiProblem(401, "token_revoked", "the delegate token was revoked")
    return record


async def register(request: web.Request) -> web.Response:
    c = ctx(request)
    record = await presented_token(request)
    req = await parse_body(request, RegisterRequest)
    if req.protocol_version not in SUPPORTED_PROTOCOL_VERSIONS:
        accepted = ", ".join(map(str, SUPPORTED_PROTOCOL_VERSIONS))
        raise ApiProblem(
            426,
            "unsupported_version",
            f"this delegate speaks protocol {req.protocol_version}; the manager accepts"
            f" {accepted}. Upgrade the delegate to tether {__version__} or later.",
        )
    _check_public_key(req.public_key)
    scope = c.tokens.remember(record).scope
    refused = disallowed_selectors(scope, req.selectors)
    if refused:
        raise ApiProblem(
            403,
            "forbidden",
            f"the delegate token {record.name!r} does not allow selector(s) {', '.join(refused)}",
            field="selectors",
        )
    others = [d for d in await c.delegates.named(req.name) if d.token_id != record.id]
    if others:
        raise ApiProblem(
            409,
            "conflict",
            f"delegate name {req.name!r} belongs to delegates of another token;"
            " delete them first (tether delegate delete)",
            field="name",
        )
    now = c.clock()
    delegate = await c.delegates.upsert(
        DelegateRecord(
            id=new_id("dlg"),
            name=req.name,
            token_id=record.id,
            hostname=req.hostname,
            version=req.version,
            protocol_version=req.protocol_version,
            selectors=tuple(dict.fromkeys(req.selectors)),
            task_types=tuple(t.value for t in req.task_types),
            capacity=req.capacity,
            public_key=req.public_key,
            created_at=now,
            last_seen=now,
            isolation=req.isolation,
        )
    )
    if delegate is None:
        raise ApiProblem(
            409,
            "conflict",
            "this public key belongs to a delegate of another token; delete it first"
            " (tether delegate delete)",
            field="public_key",
        )
    c.hub.session(delegate).scope = scope
    await c.profiles.on_register(delegate, req.instance, scope)
    log.info(
        "delegate registered",
        delegate_id=delegate.id,
        name=delegate.name,
        version=req.version,
        isolation=req.isolation,
    )
    t = c.timings
    return json_response(
        RegisterResponse(
            delegate_id=delegate.id,
            session_token=c.signer.issue(delegate.id, record.id),
            session_expires_in_s=t.session_ttl,
            heartbeat_interval_s=t.heartbeat_interval,
            lost_after_s=t.lost_after,
            poll_wait_s=t.poll_wait,
            stream_retry_s=t.stream_retry,
            protocol_version=PROTOCOL_VERSION,
        )
    )


async def stream(request: web.Request) -> web.StreamResponse:
    c = ctx(request)
    # Checked before the upgrade, so a bad credential is a plain 401 the delegate can read.
    session = await _session(request)
    # No permessage-deflate: a client that offered it would cost a zlib stream each way
    # (hundreds of KiB), and hub.send relies on frames written whole in call order.
    ws = web.WebSocketResponse(
        max_msg_size=MAX_FRAME_BYTES, autoping=True, heartbeat=None, compress=False
    )
    await ws.prepare(request)
    await c.hub.attach_stream(session, ws, request.transport)
    # Log batches and results (stream_requests.py); made at the first one.
    requests: StreamRequests | None = None
    log.info("stream opened", delegate_id=session.id)
    said_hello = False
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                await ws.close(code=CloseCode.BAD_FRAME, message=b"text frames only")
                break
            try:
                frame = parse_delegate_frame(msg.data)
            except ProtocolError as exc:
                log.warning("bad frame", delegate_id=session.id, error=str(exc))
                await ws.close(code=CloseCode.BAD_FRAME, message=str(exc).encode()[:120])
                break
            if isinstance(frame, StreamLogs | StreamResult):
                if requests is None:
                    requests = StreamRequests(c, session, ws)
                await requests.take(frame, msg.data)  # waits only past the in-flight bound
            else:
                if isinstance(frame, Hello):
                    if said_hello:
                        # One hello per stream: each would re-judge every assignment and add
                        # what it lists to the delegate's load (a peer churning keys or
                        # listing made-up tasks). A new process opens a new stream.
                        log.warning("second hello on a stream", delegate_id=session.id)
                        await ws.close(code=CloseCode.BAD_FRAME, message=b"one hello per stream")
                        break
                    said_hello = True
                _on_frame(c, session, frame)
            # Nothing of the last frame is kept while the stream waits for the next one (a
            # parsed heartbeat is most of a KiB, a log batch up to MAX_LOG_BATCH_BYTES).
            del msg, frame
    finally:
        # Only the stream still attached counts: a newer one has said hello already.
        if session.ws is ws:
            c.handout.stream_lost(session.id)
        c.hub.detach_stream(session, ws)
        log.info("stream closed", delegate_id=session.id, code=ws.close_code)
    return ws


def _on_frame(
    c: Context, session: Session, frame: Hello | Heartbeat | TaskAck | TaskDecline
) -> None:
    """One control frame from a delegate's stream, by its type (log batches and results
    are requests, answered by :class:`StreamRequests`)."""
    if isinstance(frame, Hello | Heartbeat):
        _heartbeat(c, session, frame, via_stream=True)
    elif isinstance(frame, TaskAck):
        c.handout.ack(session, frame.task_id, frame.attempt)
    elif isinstance(frame, TaskDecline):
        # A draining delegate is pushed nothing more until a heartbeat shows a free slot (it
        # may not have heard of a resume yet when the push came), as a full one.
        full = frame.reason != "unfit"
        c.handout.decline(session, frame.task_id, frame.attempt, full=full)


def _heartbeat(
    c: Context, session: Session, frame: Hello | Heartbeat, *, via_stream: bool
) -> HeartbeatAck:
    ack = c.hub.on_heartbeat(session, frame)
    c.metrics.heartbeats.labels("stream" if via_stream else "polling").inc()
    if via_stream:
        c.hub.send(session, ack)
    if isinstance(frame, Hello):
        # Its link is up: what was pushed to it before is settled, and it may take work.
        c.handout.connected(session, frame.key, frame.running, frame.spooled)
    else:
        c.handout.heartbeat(session, frame.free_slots)
    return ack


async def heartbeat(request: web.Request) -> web.Response:
    c = ctx(request)
    session = await _session(request)
    frame = await parse_body(request, Heartbeat)
    session.polled_at = c.clock()
    return json_response(_heartbeat(c, session, frame, via_stream=False))


async def next_task(request: web.Request) -> web.Response:
    """The long-poll: an assignment already claimed for this delegate (so pollers never
    collide), or 204 when none came within ``wait``. The answer counts as acknowledged."""
    c = ctx(request)
    session = await _session(request)
    session.polled_at = c.clock()
    try:
        wait = float(request.query.get("wait", c.timings.poll_wait))
    except ValueError:
        wait = math.nan
    if not 0 <= wait < math.inf:
        raise ApiProblem(400, "invalid", "wait: expected seconds, 0 or more", field="wait")
    wait = min(wait, MAX_POLL_WAIT_S)
    key = request.query.get("key", f"poll-{session.id[-48:]}")
    if not LINK_KEY.fullmatch(key):
        raise ApiProblem(400, "invalid", "key: 8 to 64 letters, digits, '-' or '_'", field="key")
    if c.stopping:
        return web.Response(status=204)

    handed = await c.handout.poll(session, key, wait, lambda: client_gone(request))
    if handed is None:
        return web.Response(status=204)
    return json_response(handed)


async def acquire(request: web.Request) -> web.Response:
    """Kept for tools and tests that take one task by id; delegates are handed theirs. A
    claim made here is forgotten by the hand-out (it is nobody's assignment)."""
    c = ctx(request)
    session = await _session(request)
    key = request.query.get("key")
    if key is not None and not LINK_KEY.fullmatch(key):
        raise ApiProblem(400, "invalid", "key: 8 to 64 letters, digits, '-' or '_'", field="key")
    return json_response(await c.tasks.acquire(session, request.match_info["task_id"], key))


async def post_logs(request: web.Request) -> web.Response:
    c = ctx(request)
    session = await _session(request)
    if (request.content_length or 0) > MAX_LOG_BATCH_BYTES:
        raise ApiProblem(
            413, "too_large", f"a log batch may carry at most {MAX_LOG_BATCH_BYTES} bytes"
        )
    batch = await parse_body(request, LogBatch)
    return json_response(await c.tasks.append_logs(session, request.match_info["task_id"], batch))


async def post_result(request: web.Request) -> web.Response:
    c = ctx(request)
    session = await _session(request)
    result = await parse_body(request, TaskResult)
    return json_response(
        await c.tasks.record_result(session, request.match_info["task_id"], result)
    )


def add_delegate_routes(table: RouteTable) -> None:
    base = "/api/v1/delegate"
    table.add(
        Route(
            "POST",
            f"{base}/register",
            register,
            "Register a delegate with its token",
            "delegate_token",
            RegisterRequest,
            RegisterResponse,
            errors=(400, 401, 403, 409, 426),
        )
    )
    table.add(
        Route(
            "GET",
            f"{base}/stream",
            stream,
            "The delegate's WebSocket stream",
            "delegate",
            streaming="websocket",
            errors=(401,),
        )
    )
    table.add(
        Route(
            "POST",
            f"{base}/heartbeat",
            heartbeat,
            "Heartbeat over HTTPS (polling mode)",
            "delegate",
            Heartbeat,
            HeartbeatAck,
            errors=(400, 401),
        )
    )
    table.add(
        Route(
            "GET",
            f"{base}/tasks/next",
            next_task,
            "Long-poll for an assignment already claimed for this delegate (204 when none)",
            "delegate",
            None,
            AcquireResponse,
            query={"wait": "number", "key": "string"},
            errors=(400, 401),
        )
    )
    table.add(
        Route(
            "POST",
            f"{base}/tasks/{{task_id}}/acquire",
            acquire,
            "Acquire a task (asking again with the same key after a lost answer is handed"
            " the same attempt)",
            "delegate",
            None,
            AcquireResponse,
            query={"key": "string"},
            errors=(400, 401, 404, 409, 410, 503),
        )
    )
    table.add(
        Route(
            "POST",
            f"{base}/tasks/{{task_id}}/logs",
            post_logs,
            "Append a batch of log lines",
            "delegate",
            LogBatch,
            LogBatchAck,
            errors=(400, 401, 404, 409, 413, 422),
        )
    )
    table.add(
        Route(
            "POST",
            f"{base}/tasks/{{task_id}}/result",
            post_result,
            "Report a task's result",
            "delegate",
            TaskResult,
            ResultAck,
            errors=(400, 401, 404, 409, 422),
        )
    )

"""The delegate hub: who is connected, how, and what they were last heard to run.

A session exists per delegate that was heard from recently, whether over the WebSocket
stream or over HTTPS polling. Liveness lives here in memory, and what each heartbeat listed
waits here for the next batched lease renewal; nothing in this module writes to the
database, so a heartbeat costs a dictionary update and one frame.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from aiohttp import WSMsgType, web
from pydantic import BaseModel

from manager.core.eligibility import ACCOUNT_WIDE, DelegateFacts, DelegateScope
from manager.core.liveness import Claim, Leases, Liveness, Renewals
from manager.records import DelegateRecord, Presence
from shared.protocol import CloseCode, Heartbeat, HeartbeatAck, Hello, TaskCancel

__all__ = ["Hub", "Session"]

log = structlog.get_logger("tether.hub")

# Bytes of frames handed to a stream and not yet written out, at most, per session. A peer
# that stops reading (a stolen token's client, say) would otherwise make the manager buffer
# every reply and assignment for it without bound; past this its connection is dropped (a
# close would wait behind the unread frames) and the delegate reconnects. A reading delegate
# is far below it: frames are written as they are sent, and one frame is at most
# shared.protocol.MAX_FRAME_BYTES (4 MiB).
MAX_UNSENT_BYTES = 16 << 20


@dataclass(eq=False)
class Session:
    delegate: DelegateRecord
    ws: web.WebSocketResponse | None = None
    # Set when this delegate last spoke over HTTPS (poll or heartbeat) rather than the stream.
    polled_at: float | None = None
    free_slots: int = 0
    draining: bool = False
    # What its token allows (manager.core.eligibility), refreshed on every authenticated call.
    scope: DelegateScope = ACCOUNT_WIDE
    # What the delegate last reported about itself (republished on /metrics).
    metrics: dict[str, float] = field(default_factory=dict)
    # The tasks its last heartbeat listed as running, and as waiting in its spool (a result
    # or log lines not yet taken): their leases are renewed in the next batch.
    listed: tuple[str, ...] = ()
    spooled: tuple[str, ...] = ()
    # Listed tasks the store says it does not hold (cancelled, or handed to another
    # delegate after its lease ran out): every ack tells it to stop them.
    strangers: frozenset[str] = frozenset()
    # Made on first use (see wake): a stream's session never waits on it.
    _wake: asyncio.Event | None = field(default=None, init=False, repr=False)
    # Bytes of frames sent to its stream and not yet written (MAX_UNSENT_BYTES), and the
    # stream's connection, dropped when they pass the bound.
    unsent: int = 0
    transport: asyncio.Transport | None = None

    @property
    def id(self) -> str:
        return self.delegate.id

    @property
    def wake(self) -> asyncio.Event:
        """Set when the session ends or the manager stops; a long-poll waits on it. Made
        on first use: an Event is near a KiB (its deque of waiters), and a streaming
        delegate's session, most of them, never waits."""
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    @property
    def facts(self) -> DelegateFacts:
        d = self.delegate
        return DelegateFacts(
            id=d.id,
            name=d.name,
            selectors=frozenset(d.selectors),
            task_types=frozenset(d.task_types),
            scope=self.scope,
            draining=self.draining,
        )

    @property
    def mode(self) -> Literal["stream", "polling"]:
        return "stream" if self.ws is not None and not self.ws.closed else "polling"


class Hub:
    """``clock`` is monotonic: every duration here is measured on it. ``wall`` only dates
    what other replicas read (the presence rows)."""

    def __init__(
        self,
        *,
        lost_after: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        heartbeat_interval: float | None = None,
        tick: float = 1.0,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self.sessions: dict[str, Session] = {}
        self.liveness = Liveness(
            lost_after=lost_after, heartbeat_interval=heartbeat_interval, tick=tick
        )
        interval = lost_after / 3 if heartbeat_interval is None else heartbeat_interval
        self.renewals = Renewals(interval)
        self.leases = Leases()
        # Running tasks a user asked to cancel; repeated in every ack until they end.
        self.cancelling: set[str] = set()
        self.revoked_tokens: set[str] = set()
        self._lost_after = lost_after
        # Told of every session that ends here (the hand-out requeues what it had pushed).
        self.on_dropped: Callable[[str], None] | None = None
        self._background: set[asyncio.Task[object]] = set()

    # -- sessions -------------------------------------------------------------------------

    def session(self, delegate: DelegateRecord) -> Session:
        current = self.sessions.get(delegate.id)
        if current is None:
            current = self.sessions[delegate.id] = Session(delegate=delegate)
        else:
            current.delegate = delegate
        current.draining = delegate.draining
        self.liveness.seen(delegate.id, self._clock())
        return current

    def seen(self, session: Session) -> None:
        """The delegate made an authenticated call: its session is alive (leases need more:
        a heartbeat that lists the task)."""
        self.liveness.seen(session.id, self._clock())

    async def attach_stream(
        self,
        session: Session,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None = None,
    ) -> None:
        old, old_transport = session.ws, session.transport
        session.ws, session.transport = ws, transport
        session.polled_at = None
        if old is not None and not old.closed:
            if session.unsent > MAX_UNSENT_BYTES // 2 and old_transport is not None:
                # Its close would wait behind what it does not read.
                old_transport.abort()
                return
            await old.close(code=CloseCode.SUPERSEDED, message=b"superseded by a newer connection")

    def detach_stream(self, session: Session, ws: web.WebSocketResponse) -> None:
        # The session stays: the delegate may come back on the stream or by polling, and its
        # leases run out only when its heartbeats stop, not when one connection drops.
        if session.ws is ws:
            session.ws, session.transport = None, None

    def status(self, delegate_id: str) -> Literal["connected", "polling", "disconnected"]:
        session = self.sessions.get(delegate_id)
        last = self.liveness.last_seen(delegate_id)
        if session is None or last is None:
            return "disconnected"
        if session.mode == "stream":
            return "connected"
        if self._clock() - last <= self._lost_after:
            return "polling"
        return "disconnected"

    def last_heartbeat(self, delegate_id: str) -> float | None:
        """When this process last heard the delegate's heartbeat (or, before its first, any
        call), on the wall clock, for people and other replicas to read."""
        last = self.liveness.last_beat(delegate_id)
        if last is None:
            last = self.liveness.last_seen(delegate_id)
        return None if last is None else self._wall() - (self._clock() - last)

    def drop(self, delegate_id: str, code: CloseCode, reason: str) -> None:
        """End a session: close its stream with ``code`` and forget its liveness."""
        session = self.sessions.pop(delegate_id, None)
        self.liveness.forget(delegate_id)
        if session is None:
            return
        if self.on_dropped is not None:
            self.on_dropped(delegate_id)
        session.wake.set()
        if session.ws is not None and not session.ws.closed:
            self._spawn(session.ws.close(code=code, message=reason.encode()[:120]))

    def revoke(self, token_id: str) -> int:
        """A token was revoked: refuse its credentials and end its sessions here."""
        self.revoked_tokens.add(token_id)
        ended = [s.id for s in self.sessions.values() if s.delegate.token_id == token_id]
        for delegate_id in ended:
            self.drop(delegate_id, CloseCode.REVOKED, "token revoked")
        return len(ended)

    # -- heartbeats and leases ------------------------------------------------------------

    def on_heartbeat(self, session: Session, frame: Hello | Heartbeat) -> HeartbeatAck:
        now = self._clock()
        before = {*session.listed, *session.spooled}
        session.listed = tuple(frame.running)
        session.spooled = tuple(frame.spooled)
        self.liveness.beat(session.id, now, session.listed, session.spooled)
        # Newly listed leases this process did not hand to this delegate (it came back here
        # after a restart, or from another replica): renewed at the next pass, not an
        # interval on.
        if isinstance(frame, Hello) or any(
            t not in before and self.leases.holder(t) != session.id
            for t in (*session.listed, *session.spooled)
        ):
            self.renewals.hasten()
        if isinstance(frame, Heartbeat):
            session.free_slots = frame.free_slots
            session.metrics = frame.metrics
            seq = frame.seq
        else:
            session.free_slots = max(0, session.delegate.capacity - len(frame.running))
            seq = 0
        listed = set(frame.running)
        cancel = sorted((session.strangers | self.cancelling) & listed)
        return HeartbeatAck(seq=seq, cancel=cancel, drain=session.draining)

    def held(self) -> list[Claim]:
        """The leases to renew: what each delegate's last heartbeat listed, when no renewal
        was written from that heartbeat yet, with how long each may run from now (a lease
        after that heartbeat). A delegate whose heartbeats stopped is renewed no more."""
        return [c for c in self.liveness.claims(self._clock()) if c.delegate_id in self.sessions]

    def lease_left(self, delegate_id: str) -> float:
        """How long a lease granted to the delegate now may run (core.liveness)."""
        return self.liveness.lease_left(delegate_id, self._clock())

    def vouches(self, task_id: str, delegate_id: str) -> bool:
        """The holder's last heartbeat, within ``lost_after``, listed the task: its lease
        holds here whatever the store says (a renewal the store could not write)."""
        return delegate_id in self.sessions and self.liveness.vouches(
            delegate_id, task_id, self._clock()
        )

    def presence(self, replica_id: str) -> list[Presence]:
        """The delegates this process heard within ``lost_after``, for the presence rows."""
        now, wall = self._clock(), self._wall()
        out = []
        for s in self.sessions.values():
            last = self.liveness.last_seen(s.id)
            if last is not None and now - last <= self._lost_after:
                # Dated on the wall clock: other replicas compare it with theirs.
                out.append(Presence(s.id, replica_id, s.mode, wall - (now - last)))
        return out

    def renewed(self, held: list[Claim], renewed: set[str]) -> None:
        """Record which of the ``held`` claims the store renewed; the running rest are
        strangers.

        Judged on the snapshot the renewal was made from, not on what heartbeats listed
        since: a task acquired while the store was writing was not in that batch, and must
        not be taken for a stranger (and cancelled) for it. A task only waiting in the
        delegate's spool is never a stranger: there is nothing to stop, and its listing names
        the task, not the attempt, which may be a newer one running here. Only the delegates
        whose heartbeats were in the batch are judged again.
        """
        self.liveness.written(held)
        stale: dict[str, set[str]] = {c.delegate_id: set() for c in held}
        for claim in held:
            if claim.running and claim.task_id not in renewed:
                stale[claim.delegate_id].add(claim.task_id)
        for delegate_id, tasks in stale.items():
            session = self.sessions.get(delegate_id)
            if session is not None:
                session.strangers = frozenset(tasks)

    # -- sending --------------------------------------------------------------------------

    def cancel(self, task_id: str) -> None:
        self.cancelling.add(task_id)
        holder = self.leases.holder(task_id)
        for session in self.sessions.values():
            # The holder as this process granted it, or whoever's heartbeat lists the task
            # (acquired through another replica).
            if session.mode == "stream" and (session.id == holder or task_id in session.listed):
                self.send(session, TaskCancel(task_id=task_id))

    def send(self, session: Session, frame: BaseModel) -> None:
        ws = session.ws
        if ws is None or ws.closed:
            return
        # Encoded once, here: counted in bytes on the wire, not characters (a frame of
        # multi-byte text, a script or a cancel reason, weighs up to four times its length),
        # and sent as those bytes.
        data = frame.model_dump_json().encode()
        size = len(data)
        if session.unsent + size > MAX_UNSENT_BYTES:
            # A close frame would wait behind what it does not read, and a close flushes
            # first: the connection is dropped. The delegate reconnects; what it was sent
            # and did not acknowledge goes back as after any lost stream.
            log.warning(
                "delegate not reading its stream; dropping the connection",
                delegate_id=session.id,
                unsent_bytes=session.unsent,
            )
            if session.transport is not None:
                session.transport.abort()
            return
        # Not awaited here: a delegate with a full socket buffer must not stall the caller
        # (the hand-out serves every delegate). Frames of a non-compressed WebSocket are
        # written whole and in call order before the first await, so order is kept.
        session.unsent += size
        self._spawn(self._send(session, ws, data))

    async def _send(self, session: Session, ws: web.WebSocketResponse, data: bytes) -> None:
        try:
            await ws.send_frame(data, WSMsgType.TEXT)
        finally:
            session.unsent = max(0, session.unsent - len(data))

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[object]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("frame not sent", error=str(task.exception()))

    async def close_all(self, code: CloseCode, reason: str) -> None:
        closing = [
            s.ws.close(code=code, message=reason.encode())
            for s in self.sessions.values()
            if s.ws is not None and not s.ws.closed
        ]
        for s in self.sessions.values():
            s.wake.set()
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)

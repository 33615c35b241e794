"""The delegate's link to the manager: the WebSocket stream, with polling as fallback.

The stream carries heartbeats, acks and declines up, and assignments, cancels and drain
down (protocol v2: the manager pushes each task to one delegate, which acks it before it
starts, or declines it). When it cannot be opened,
or keeps dropping soon after opening, the channel polls instead (``polling.py``) and moves
back once a stream has opened *and* answered a hello. Every decision (when to poll, how long
to wait, what a close code or a refusal means, when a stream has stalled) is
:class:`~delegate.link.policy.LinkPolicy`'s; this module opens sockets, sleeps and sends.

Unlike the websockets library's own reconnect loop (which only backs off on failed
connects), every reconnect here waits a jittered backoff, including after a connection that
opened and was then closed, so a manager that accepts and drops cannot cause a hot loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import structlog
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from delegate.link.api import ApiError, ManagerApi, frame_json
from delegate.link.policy import (
    Action,
    Assign,
    Cancel,
    CloseStream,
    Drain,
    Fatal,
    LinkPolicy,
    Mode,
    Poll,
    Register,
    Resume,
    Stop,
)
from delegate.link.polling import Polling
from delegate.link.requests import StreamRequests
from shared.aio import cancel_and_wait
from shared.limits import MAX_FRAME_BYTES
from shared.protocol import (
    AcquireResponse,
    CloseCode,
    Heartbeat,
    Hello,
    ManagerFrameType,
    ProtocolError,
    RegisterResponse,
    StreamReply,
    TaskAck,
    TaskDecline,
    parse_manager_frame,
)

__all__ = ["Channel", "ChannelEvents"]

log = structlog.get_logger("tether.channel")


DeclineReason = Literal["full", "draining", "unfit"]


class ChannelEvents(Protocol):
    def on_assigned(self, assignment: AcquireResponse) -> DeclineReason | None:
        """Take the assignment's slot (None: it will run here, acked), or say why not."""
        ...

    def run_assigned(self, assignment: AcquireResponse) -> None:
        """Start an assignment ``on_assigned`` took (once its ack is sent)."""
        ...

    def on_cancel(self, task_id: str) -> None: ...
    def on_drain(self) -> None: ...
    def on_resume(self) -> None: ...
    def heartbeat_state(self) -> tuple[list[str], int, float]:
        """Running task ids, free slots, load."""
        ...

    def spooled(self) -> list[str]:
        """Tasks whose result or log lines wait in the spool (not running)."""
        ...


class _StreamFailed(Exception):
    def __init__(self, message: str, *, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Channel:
    def __init__(
        self,
        api: ManagerApi,
        *,
        policy: LinkPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        requests: StreamRequests | None = None,
    ) -> None:
        self._api = api
        # Log batches and results: on the stream while it is held, else HTTPS (requests.py).
        self.requests = requests if requests is not None else StreamRequests(api)
        self.policy = policy if policy is not None else LinkPolicy()
        self._clock = clock
        self.mode: Mode = "connecting"
        self._events: ChannelEvents | None = None
        self._seq = 0
        self._slot_freed = asyncio.Event()
        # Names this process to the manager (hello, long-poll), kept across reconnects: an
        # assignment pushed again to the same key is the same attempt (manager.core.
        # assignment), and a restarted process is a new key.
        self.key = secrets.token_urlsafe(16)
        self._answers: set[asyncio.Task[None]] = set()
        self.on_mode_change: Callable[[str], None] | None = None
        # What the delegate reports about itself in each heartbeat (it opens no port to be
        # scraped); the manager republishes it per delegate on /metrics.
        self.metrics_source: Callable[[], dict[str, float]] | None = None

    @property
    def last_ack(self) -> float | None:
        """When a heartbeat was last acknowledged, on the channel's clock; the service
        watchdog and tests watch it."""
        return self.policy.last_ack

    def poke(self) -> None:
        """A slot was freed: a polling delegate asks for work again at once."""
        self._slot_freed.set()

    def _announce(self) -> None:
        mode = self.policy.mode
        if mode != self.mode:
            log.info("channel mode", mode=mode)
            self.mode = mode
            if self.on_mode_change is not None:
                self.on_mode_change(mode)

    async def run(self, events: ChannelEvents) -> None:
        """Hold the link until cancelled; raises :class:`Fatal` when the delegate must stop."""
        self._events = events
        self._api.on_registered = self._registered
        if self._api.registered is None:
            await self._register()
        else:
            self._registered(self._api.registered)
        polling = Polling(
            self._api,
            self.policy,
            events,
            heartbeat=self._heartbeat,
            on_ack=self._handle,
            try_stream=self._try_stream,
            act=self._act,
            slot_freed=self._slot_freed,
            key=self.key,
        )
        try:
            while True:
                step = self.policy.next_step(self._clock())
                self._announce()
                if isinstance(step, Poll):
                    ws = await polling.until_stream(step)
                else:
                    opened = await self._try_stream()
                    if opened is None:
                        continue
                    ws = opened
                self.policy.stream_held(self._clock())
                code = await self._run_stream(ws)
                actions = self.policy.stream_closed(code, self._clock())
                self._announce()
                log.info(
                    "stream closed",
                    code=code,
                    lived_s=round(self.policy.lived, 3),
                    drops=self.policy.drops,
                )
                await self._act(actions)
        finally:
            await polling.close()

    async def _act(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, Stop):
                raise Fatal(action.exit_code, action.reason)
            if isinstance(action, Register):
                await self._register()
            else:
                await asyncio.sleep(action.seconds)

    def _registered(self, resp: RegisterResponse) -> None:
        self.policy.registered(
            heartbeat_interval=resp.heartbeat_interval_s,
            lost_after=resp.lost_after_s,
            poll_wait=resp.poll_wait_s,
            stream_retry=resp.stream_retry_s,
        )

    async def _register(self) -> None:
        """Register, retrying as the policy says while the manager cannot be reached."""
        # A loop of its own, not tenacity (which the outbox uses for its per-call retries):
        # whether to retry, how long to wait and with which exit status to stop is the
        # link's policy (policy.py), one sans-I/O state machine whose backoff counters are
        # shared with the stream's opens and drops and reset by what happens on the link
        # (a registration, an acked heartbeat), and which is tested table-style without a
        # clock. Tenacity's retry/stop/wait predicates would split that decision in two.
        while True:
            try:
                await self._api.register()
                return
            except ApiError as exc:
                action = self.policy.register_failed(exc.meaning, str(exc))
                if not isinstance(action, Stop):
                    log.warning("cannot register yet", error=str(exc))
                await self._act([action])

    # -- the stream -----------------------------------------------------------------------

    async def _try_stream(self) -> ClientConnection | None:
        """A stream that answered a hello, or None after doing what the policy says."""
        try:
            return await self._open()
        except _StreamFailed as exc:
            actions = self.policy.open_failed(exc.status, exc.code)
            if self.policy.mode == "polling":
                log.debug("stream still unavailable", error=str(exc))
            else:
                log.warning(
                    "stream unavailable", error=str(exc), failures=self.policy.open_failures
                )
            await self._act(actions)
            return None

    async def _open(self) -> ClientConnection:
        lost_after = self.policy.lost_after
        try:
            ws = await connect(
                self._api.stream_url,
                ssl=self._api.ssl_context,
                additional_headers={"Authorization": f"Bearer {self._api.credential}"},
                max_size=MAX_FRAME_BYTES,
                compression=None,
                ping_interval=None,  # liveness is the protocol's own heartbeat and its acks
                open_timeout=max(1.0, lost_after),
                close_timeout=2,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise _StreamFailed(
                f"upgrade refused: HTTP {status}",
                status=status,
                code=_error_code(exc.response.body),
            ) from None
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            raise _StreamFailed(f"{type(exc).__name__}: {exc}") from None
        # The stream counts as held only once the manager answers a hello.
        try:
            running, _, _ = self._state()
            await ws.send(frame_json(Hello(key=self.key, running=running, spooled=self._spooled())))
            async with asyncio.timeout(lost_after):
                frame = parse_manager_frame(await ws.recv())
        except (ConnectionClosed, TimeoutError, ProtocolError) as exc:
            await ws.close()
            raise _StreamFailed(f"no answer to hello: {type(exc).__name__}") from None
        self._handle(frame, ws)
        return ws

    async def _run_stream(self, ws: ClientConnection) -> int | None:
        self._announce()
        beats = asyncio.create_task(self._stream_heartbeats(ws))
        self.requests.attach(ws.send)
        try:
            async for raw in ws:
                try:
                    frame = parse_manager_frame(raw)
                except ProtocolError as exc:
                    log.warning("bad frame from manager", error=str(exc))
                    await ws.close(code=CloseCode.BAD_FRAME, reason="bad frame")
                    break
                if isinstance(frame, StreamReply):
                    self.requests.on_reply(frame)
                    continue
                self._handle(frame, ws)
        except ConnectionClosed:
            pass
        finally:
            self.requests.detach()  # what waits for a reply goes over HTTPS now
            await cancel_and_wait(beats)
        return ws.close_code

    async def _stream_heartbeats(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.policy.heartbeat_interval)
                due = self.policy.heartbeat_due(self._clock())
                if isinstance(due, CloseStream):
                    log.warning("no heartbeat ack; reconnecting")
                    await ws.close(code=due.code, reason=due.reason)
                    return
                await ws.send(frame_json(self._heartbeat()))

    def _state(self) -> tuple[list[str], int, float]:
        assert self._events is not None, "the channel is running"
        return self._events.heartbeat_state()

    def _spooled(self) -> list[str]:
        assert self._events is not None, "the channel is running"
        return self._events.spooled()

    def _heartbeat(self) -> Heartbeat:
        running, free, load = self._state()
        self._seq += 1
        metrics = self.metrics_source() if self.metrics_source is not None else {}
        return Heartbeat(
            seq=self._seq,
            running=running,
            spooled=self._spooled(),
            free_slots=free,
            load=load,
            metrics=metrics,
        )

    def _handle(self, frame: ManagerFrameType, ws: ClientConnection | None = None) -> None:
        events = self._events
        assert events is not None, "the channel is running"
        for delivery in self.policy.frame_received(frame, self._clock()):
            if isinstance(delivery, Assign):
                if ws is not None:
                    self._answer(ws, events, delivery.assignment)
            elif isinstance(delivery, Cancel):
                events.on_cancel(delivery.task_id)
            elif isinstance(delivery, Drain):
                events.on_drain()
            elif isinstance(delivery, Resume):
                events.on_resume()

    def _answer(self, ws: ClientConnection, events: ChannelEvents, acq: AcquireResponse) -> None:
        """Ack an assignment the agent takes (then start it), or decline it."""
        why = events.on_assigned(acq)
        reply: TaskAck | TaskDecline
        if why is None:
            reply = TaskAck(task_id=acq.task.id, attempt=acq.attempt)
        else:
            log.info("assignment declined", task_id=acq.task.id, reason=why)
            reply = TaskDecline(task_id=acq.task.id, attempt=acq.attempt, reason=why)
        task = asyncio.get_running_loop().create_task(self._reply(ws, events, reply, acq))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _reply(
        self,
        ws: ClientConnection,
        events: ChannelEvents,
        reply: TaskAck | TaskDecline,
        acq: AcquireResponse,
    ) -> None:
        # A lost ack is not a lost task: the next hello lists it as running, and the
        # manager counts that as the ack (manager.core.assignment).
        with contextlib.suppress(ConnectionClosed):
            await ws.send(reply.model_dump_json())
        if isinstance(reply, TaskAck):
            events.run_assigned(acq)


def _error_code(body: bytes | bytearray | None) -> str:
    try:
        return str(json.loads(body or b"")["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""

"""The delegate's link to the manager: the WebSocket stream, and HTTPS polling as fallback.

The stream carries heartbeats up and hints, cancels and drain down. When it cannot be opened,
or keeps dropping soon after opening, the channel polls instead (long-poll for tasks,
heartbeats over HTTPS) and tries the stream again every ``stream_retry`` seconds; it moves
back once a stream has opened *and* answered a hello. Nothing is lost in a switch: hints are
only hints, and the manager's queue is the truth.

Unlike the websockets library's own reconnect loop (which only backs off on failed
connects), every reconnect here waits a jittered backoff, including after a connection that
opened and was then closed, so a manager that accepts and drops cannot cause a hot loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from typing import Literal, Protocol

import structlog
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from delegate.link.api import FatalAuth, ManagerApi, Rejected, Unreachable, UnsupportedProtocol
from shared.aio import cancel_and_wait
from shared.limits import MAX_FRAME_BYTES
from shared.protocol import (
    CloseCode,
    Heartbeat,
    HeartbeatAck,
    Hello,
    ProtocolError,
    RegisterResponse,
    TaskAvailable,
    TaskCancel,
    TaskDrain,
    parse_manager_frame,
)

__all__ = ["Channel", "ChannelEvents", "Fatal", "backoff_delay"]

log = structlog.get_logger("tether.channel")

EXIT_AUTH = 3
EXIT_VERSION = 4
# Consecutive failed opens, or short-lived connections, before falling back to polling.
OPEN_FAILURES_BEFORE_POLLING = 2
DROPS_BEFORE_POLLING = 3


class Fatal(Exception):
    """The delegate must stop: retrying cannot help (revoked token, replaced, too old)."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


class ChannelEvents(Protocol):
    def on_task_available(self, task_id: str) -> None: ...
    def on_cancel(self, task_id: str) -> None: ...
    def on_drain(self) -> None: ...
    def on_resume(self) -> None: ...
    def heartbeat_state(self) -> tuple[list[str], int, float]:
        """Running task ids, free slots, load."""
        ...


class _StreamFailed(Exception):
    pass


def backoff_delay(attempt: int, *, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Exponential backoff with full jitter, so a fleet reconnecting at once spreads out."""
    return float(min(cap, base * (2.0 ** min(attempt, 30))) * rng())


class Channel:
    def __init__(
        self,
        api: ManagerApi,
        events: ChannelEvents,
        *,
        reconnect_base: float,
        reconnect_max: float,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._api = api
        self._events = events
        self._base = reconnect_base
        self._cap = reconnect_max
        self._clock = clock
        self._rng = rng
        self.mode: Literal["connecting", "stream", "polling"] = "connecting"
        self._seq = 0
        self._slot_freed = asyncio.Event()
        # Tests and the service watchdog watch this: set on every acknowledged heartbeat.
        self.last_ack: float | None = None
        self.on_mode_change: Callable[[str], None] | None = None
        # What the delegate reports about itself in each heartbeat (it opens no port to be
        # scraped); the manager republishes it per delegate on /metrics.
        self.metrics_source: Callable[[], dict[str, float]] | None = None

    @property
    def timings(self) -> RegisterResponse:
        assert self._api.registered is not None
        return self._api.registered

    def poke(self) -> None:
        """A slot was freed: a polling delegate asks for work again at once."""
        self._slot_freed.set()

    def _set_mode(self, mode: Literal["connecting", "stream", "polling"]) -> None:
        if mode != self.mode:
            log.info("channel mode", mode=mode)
            self.mode = mode
            if self.on_mode_change is not None:
                self.on_mode_change(mode)

    async def run(self) -> None:
        """Hold the link until cancelled; raises :class:`Fatal` when the delegate must stop."""
        if self._api.registered is None:
            await self._register()
        failures = 0
        drops = 0
        ws: ClientConnection | None = None
        while True:
            if ws is None:
                if failures >= OPEN_FAILURES_BEFORE_POLLING or drops >= DROPS_BEFORE_POLLING:
                    ws = await self._poll_until_stream()
                    failures = drops = 0
                else:
                    try:
                        ws = await self._open()
                    except _StreamFailed as exc:
                        failures += 1
                        log.warning("stream unavailable", error=str(exc), failures=failures)
                        await asyncio.sleep(self._delay(failures))
                        continue
            failures = 0
            opened = self._clock()
            code = await self._run_stream(ws)
            ws = None
            lived = self._clock() - opened
            if code == CloseCode.REVOKED:
                raise Fatal(EXIT_AUTH, "the manager revoked this delegate's token")
            if code == CloseCode.SUPERSEDED:
                raise Fatal(EXIT_AUTH, "another process connected as this delegate (same key)")
            if code == CloseCode.UNSUPPORTED_VERSION:
                raise Fatal(EXIT_VERSION, "the manager no longer accepts this protocol version")
            if code == CloseCode.SESSION_EXPIRED:
                await self._register()
            if code == CloseCode.RESTART:
                # The manager is restarting: come back soon, but not all delegates at once.
                drops = 0
                await asyncio.sleep(self._base * self._rng())
                continue
            drops = drops + 1 if lived < 2 * self.timings.heartbeat_interval_s else 1
            log.info("stream closed", code=code, lived_s=round(lived, 3), drops=drops)
            await asyncio.sleep(self._delay(drops))

    def _delay(self, attempt: int) -> float:
        return backoff_delay(attempt, base=self._base, cap=self._cap, rng=self._rng)

    async def _register(self) -> None:
        """Register, retrying with backoff while the manager cannot be reached.

        A delegate that starts before its manager (a reboot of both, a manager upgrade)
        waits for it rather than exiting; only a refusal that retrying cannot fix stops it.
        """
        failures = 0
        while True:
            try:
                await self._api.register()
                return
            except FatalAuth as exc:
                raise Fatal(EXIT_AUTH, str(exc)) from None
            except UnsupportedProtocol as exc:
                raise Fatal(EXIT_VERSION, str(exc)) from None
            except (Unreachable, Rejected) as exc:
                failures += 1
                log.warning("cannot register yet", error=str(exc), failures=failures)
                await asyncio.sleep(self._delay(failures))

    # -- the stream -----------------------------------------------------------------------

    async def _open(self) -> ClientConnection:
        try:
            ws = await connect(
                self._api.stream_url,
                ssl=self._api.ssl_context,
                additional_headers={"Authorization": f"Bearer {self._api.credential}"},
                max_size=MAX_FRAME_BYTES,
                compression=None,
                ping_interval=None,  # liveness is the protocol's own heartbeat and its acks
                open_timeout=max(1.0, self.timings.lost_after_s),
                close_timeout=2,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            code = _error_code(exc.response.body)
            if status == 401:
                if code in ("token_revoked", "invalid_token"):
                    raise Fatal(EXIT_AUTH, f"the manager refused the token ({code})") from None
                await self._register()
            if status == 426:
                raise Fatal(
                    EXIT_VERSION, "the manager no longer accepts this protocol version"
                ) from None
            raise _StreamFailed(f"upgrade refused: HTTP {status}") from None
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            raise _StreamFailed(f"{type(exc).__name__}: {exc}") from None
        # The stream counts as held only once the manager answers a hello.
        try:
            running, _, _ = self._events.heartbeat_state()
            await ws.send(Hello(running=running).model_dump_json())
            async with asyncio.timeout(self.timings.lost_after_s):
                frame = parse_manager_frame(await ws.recv())
        except (ConnectionClosed, TimeoutError, ProtocolError) as exc:
            await ws.close()
            raise _StreamFailed(f"no answer to hello: {type(exc).__name__}") from None
        self._handle(frame)
        return ws

    async def _run_stream(self, ws: ClientConnection) -> int | None:
        self._set_mode("stream")
        beats = asyncio.create_task(self._stream_heartbeats(ws))
        try:
            async for raw in ws:
                try:
                    frame = parse_manager_frame(raw)
                except ProtocolError as exc:
                    log.warning("bad frame from manager", error=str(exc))
                    await ws.close(code=CloseCode.BAD_FRAME, reason="bad frame")
                    break
                self._handle(frame)
        except ConnectionClosed:
            pass
        finally:
            await cancel_and_wait(beats)
            self._set_mode("connecting")
        return ws.close_code

    async def _stream_heartbeats(self, ws: ClientConnection) -> None:
        interval = self.timings.heartbeat_interval_s
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(interval)
                if (
                    self.last_ack is not None
                    and self._clock() - self.last_ack > self.timings.lost_after_s
                ):
                    # Frames go out but no ack comes back: a stalled path. Start again.
                    log.warning("no heartbeat ack; reconnecting")
                    await ws.close(code=1001, reason="no heartbeat ack")
                    return
                await ws.send(self._heartbeat().model_dump_json())

    def _heartbeat(self) -> Heartbeat:
        running, free, load = self._events.heartbeat_state()
        self._seq += 1
        metrics = self.metrics_source() if self.metrics_source is not None else {}
        return Heartbeat(
            seq=self._seq, running=running, free_slots=free, load=load, metrics=metrics
        )

    def _handle(self, frame: HeartbeatAck | TaskAvailable | TaskCancel | TaskDrain) -> None:
        if isinstance(frame, HeartbeatAck):
            self.last_ack = self._clock()
            for task_id in frame.cancel:
                self._events.on_cancel(task_id)
            if frame.drain:
                self._events.on_drain()
            else:
                self._events.on_resume()
        elif isinstance(frame, TaskAvailable):
            self._events.on_task_available(frame.task_id)
        elif isinstance(frame, TaskCancel):
            self._events.on_cancel(frame.task_id)
        else:
            self._events.on_drain()

    # -- polling --------------------------------------------------------------------------

    async def _poll_until_stream(self) -> ClientConnection:
        self._set_mode("polling")
        self.last_ack = self._clock()
        loops = [
            asyncio.create_task(self._poll_heartbeats(), name="poll-heartbeats"),
            asyncio.create_task(self._long_poll(), name="long-poll"),
        ]
        probe = asyncio.create_task(self._probe_stream(), name="stream-probe")
        try:
            done, _ = await asyncio.wait([probe, *loops], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not probe:
                    task.result()  # a Fatal from a polling loop ends the delegate
            return probe.result()
        finally:
            for task in (probe, *loops):
                task.cancel()
            await asyncio.gather(probe, *loops, return_exceptions=True)

    async def _probe_stream(self) -> ClientConnection:
        while True:
            await asyncio.sleep(self.timings.stream_retry_s)
            try:
                return await self._open()
            except _StreamFailed as exc:
                log.debug("stream still unavailable", error=str(exc))

    async def _poll_heartbeats(self) -> None:
        failures = 0
        while True:
            try:
                ack = await self._api.heartbeat(self._heartbeat())
            except FatalAuth as exc:
                raise Fatal(EXIT_AUTH, str(exc)) from None
            except (Unreachable, Rejected) as exc:
                failures += 1
                log.warning("heartbeat failed", error=str(exc))
                await asyncio.sleep(min(self._delay(failures), self.timings.heartbeat_interval_s))
                continue
            failures = 0
            self._handle(ack)
            await asyncio.sleep(self.timings.heartbeat_interval_s)

    async def _long_poll(self) -> None:
        failures = 0
        while True:
            _, free, _ = self._events.heartbeat_state()
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                task_id = await self._api.next_task(self.timings.poll_wait_s)
            except FatalAuth as exc:
                raise Fatal(EXIT_AUTH, str(exc)) from None
            except (Unreachable, Rejected) as exc:
                failures += 1
                log.warning("poll failed", error=str(exc))
                await asyncio.sleep(self._delay(failures))
                continue
            failures = 0
            if task_id is not None:
                self._events.on_task_available(task_id)
                # Give the acquire a moment to take the slot before asking for more.
                await asyncio.sleep(0)


def _error_code(body: bytes | bytearray | None) -> str:
    try:
        return str(json.loads(body or b"")["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""

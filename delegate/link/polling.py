"""Polling: the link over HTTPS while the stream cannot be held.

Long-polls for tasks and sends heartbeats over HTTPS, and tries the stream again every
``stream_retry`` seconds until one holds. It only carries out what
:class:`~delegate.link.policy.LinkPolicy` decides. A poll's answer is an assignment already
claimed for this delegate, and counted as acknowledged by the manager: it is run directly
(an answer lost on the way is the lease's to judge, since no heartbeat lists it).

So a poll in flight is never abandoned for the stream: when a probe holds the stream, the
heartbeats and the probe stop, but a long-poll already sent is left to end on its own, and
an assignment it brings runs as any other. Cancelled, its answer was lost after the manager
had counted it, and a healthy delegate lost the attempt to its lease (the soak found it:
the manager answered the poll a moment before it read the stream's hello).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from websockets.asyncio.client import ClientConnection

from delegate.link.api import ApiError, ManagerApi
from delegate.link.policy import Action, LinkPolicy, Poll, Wait
from shared.protocol import AcquireResponse, Heartbeat, HeartbeatAck

__all__ = ["Polling", "SlotsSource"]

log = structlog.get_logger("tether.channel")


class SlotsSource(Protocol):
    def on_assigned(self, assignment: AcquireResponse) -> str | None: ...
    def run_assigned(self, assignment: AcquireResponse) -> None: ...
    def heartbeat_state(self) -> tuple[list[str], int, float]: ...


@dataclass
class _Run:
    """One spell of polling: whether it is over (the stream holds), and whether a long-poll
    request of it is on its way (its answer may be an assignment)."""

    stopping: bool = False
    asking: bool = False


class Polling:
    def __init__(
        self,
        api: ManagerApi,
        policy: LinkPolicy,
        events: SlotsSource,
        *,
        heartbeat: Callable[[], Heartbeat],
        on_ack: Callable[[HeartbeatAck], None],
        try_stream: Callable[[], Awaitable[ClientConnection | None]],
        act: Callable[[Sequence[Action]], Awaitable[None]],
        slot_freed: asyncio.Event,
        key: str,
    ) -> None:
        self._key = key
        self._api = api
        self._policy = policy
        self._events = events
        self._heartbeat = heartbeat
        self._on_ack = on_ack
        self._try_stream = try_stream
        self._act = act
        self._slot_freed = slot_freed
        # Set by every answered heartbeat: a long-poll waiting out a failure asks again at
        # once, since the manager is back.
        self._answered = asyncio.Event()
        # Long-polls left to end after the stream took over (held until they do).
        self._ending: set[asyncio.Task[None]] = set()

    async def until_stream(self, step: Poll) -> ClientConnection:
        """Poll until a probe holds a stream, and return it; a fatal answer raises."""
        run = _Run()
        beats = asyncio.create_task(self._heartbeats(), name="poll-heartbeats")
        polls = asyncio.create_task(self._long_poll(run), name="long-poll")
        probe = asyncio.create_task(self._probe(step.probe_every), name="stream-probe")
        held = False
        try:
            done, _ = await asyncio.wait([probe, beats, polls], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not probe:
                    task.result()  # a Fatal from a polling loop ends the delegate
            ws = probe.result()
            held = True
            return ws
        finally:
            run.stopping = True
            stopping = [probe, beats]
            if held and run.asking and not polls.done():
                # Its answer may be an assignment the manager counts as taken: it ends on
                # its own (204 once the manager reads the stream's hello, when the poll
                # reached it first; else at the end of its wait).
                self._ending.add(polls)
                polls.add_done_callback(self._ended)
            else:
                stopping.append(polls)
            for task in stopping:
                task.cancel()
            await asyncio.gather(*stopping, return_exceptions=True)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._ending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("long-poll ended badly", error=str(task.exception()))

    async def close(self) -> None:
        """Stop long-polls still ending (the delegate stops)."""
        for task in list(self._ending):
            task.cancel()
        await asyncio.gather(*self._ending, return_exceptions=True)

    async def _probe(self, every: float) -> ClientConnection:
        while True:
            await asyncio.sleep(every)
            ws = await self._try_stream()
            if ws is not None:
                return ws

    async def _heartbeats(self) -> None:
        # Not a retry loop for tenacity: the beat goes on for as long as polling does, and
        # each failure's wait comes from the link's policy (see Channel._register).
        while True:
            try:
                ack = await self._api.heartbeat(self._heartbeat())
            except ApiError as exc:
                log.warning("heartbeat failed", error=str(exc))
                await self._act([self._policy.poll_heartbeat_failed(exc.meaning, str(exc))])
                continue
            self._on_ack(ack)
            self._answered.set()
            await self._act([self._policy.poll_heartbeat_sent()])

    async def _long_poll(self, run: _Run) -> None:
        if self._ending:
            # A poll of an earlier spell is still out, asked with the same free slot: a
            # second one beside it could be handed a task more than the slots hold (and
            # that one would be lost to its lease). Its answer comes first.
            await asyncio.gather(*self._ending, return_exceptions=True)
        while not run.stopping:
            _, free, _ = self._events.heartbeat_state()
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            run.asking = True
            try:
                handed = await self._api.next_task(self._policy.poll_wait, self._key)
            except ApiError as exc:
                run.asking = False
                if run.stopping:
                    return
                log.warning("poll failed", error=str(exc))
                self._answered.clear()
                action = self._policy.long_poll_failed(exc.meaning, str(exc))
                if isinstance(action, Wait):
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(action.seconds):
                            await self._answered.wait()
                else:
                    await self._act([action])
                continue
            run.asking = False
            self._policy.long_poll_answered()
            if handed is not None:
                why = self._events.on_assigned(handed)
                if why is None:
                    self._events.run_assigned(handed)
                else:
                    # Polled for with a free slot, so rare (a drain since): its lease lapses
                    # and the manager requeues it.
                    log.warning("polled assignment not run", task_id=handed.task.id, reason=why)

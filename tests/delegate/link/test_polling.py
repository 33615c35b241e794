"""The polling link hands over to the stream without losing a long-poll's answer.

The manager counts a poll's answer as taken. A delegate that cancelled its poll the moment a
probe held the stream dropped an answer already on its way, and the attempt was lost to
its lease on a healthy delegate (the soak found it). Fed by hand here: the poll is held
open until the test answers it, after the stream is held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from websockets.asyncio.client import ClientConnection

from delegate.link.api import ManagerApi
from delegate.link.policy import Action, LinkPolicy, Poll, Wait
from delegate.link.polling import Polling
from shared.protocol import AcquireResponse, Heartbeat, HeartbeatAck, ShellPayload, TaskSpec

HANDED = AcquireResponse(
    task=TaskSpec(id="t1", payload=ShellPayload(script="true"), timeout_s=10), attempt=1
)
WAIT = 5.0


class _Api:
    """A manager whose long-polls are answered by the test."""

    def __init__(self) -> None:
        self.polls: asyncio.Queue[asyncio.Future[AcquireResponse | None]] = asyncio.Queue()

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatAck:
        return HeartbeatAck(seq=beat.seq)

    async def next_task(self, wait: float, key: str) -> AcquireResponse | None:
        answer: asyncio.Future[AcquireResponse | None] = asyncio.get_running_loop().create_future()
        await self.polls.put(answer)
        return await answer


class _Slots:
    def __init__(self) -> None:
        self.ran: asyncio.Queue[AcquireResponse] = asyncio.Queue()

    def on_assigned(self, assignment: AcquireResponse) -> str | None:
        return None

    def run_assigned(self, assignment: AcquireResponse) -> None:
        self.ran.put_nowait(assignment)

    def heartbeat_state(self) -> tuple[list[str], int, float]:
        return [], 1, 0.0


async def _act(actions: Sequence[Action]) -> None:
    for action in actions:
        if isinstance(action, Wait):
            await asyncio.sleep(action.seconds)


def _polling(api: _Api, slots: _Slots, streams: asyncio.Queue[ClientConnection]) -> Polling:
    """Polling whose probe holds the next stream the test puts in ``streams``."""

    async def try_stream() -> ClientConnection | None:
        return await streams.get()

    return Polling(
        cast(ManagerApi, api),
        LinkPolicy(heartbeat_interval=WAIT, poll_wait=WAIT),
        slots,
        heartbeat=lambda: Heartbeat(seq=1, free_slots=1),
        on_ack=lambda ack: None,
        try_stream=try_stream,
        act=_act,
        slot_freed=asyncio.Event(),
        key="k" * 16,
    )


async def _held_with_a_poll_out(
    api: _Api, slots: _Slots
) -> tuple[Polling, asyncio.Future[AcquireResponse | None]]:
    """Polling whose probe held the stream while its long-poll was out, not answered yet:
    (the link's polling, that poll's answer for the test to give)."""
    streams = asyncio.Queue[ClientConnection]()
    polling = _polling(api, slots, streams)
    handing_over = asyncio.create_task(polling.until_stream(Poll(probe_every=0)))
    poll = await asyncio.wait_for(api.polls.get(), 30)
    ws = cast(ClientConnection, object())
    streams.put_nowait(ws)
    assert await asyncio.wait_for(handing_over, 30) is ws
    return polling, poll


async def test_an_answer_on_its_way_when_the_stream_holds_is_run() -> None:
    api, slots = _Api(), _Slots()
    polling, poll = await _held_with_a_poll_out(api, slots)
    # The manager answered before it read the stream's hello.
    poll.set_result(HANDED)
    assert await asyncio.wait_for(slots.ran.get(), 30) == HANDED
    # That poll was the last: polling is over.
    await asyncio.sleep(0)
    assert api.polls.empty()
    await polling.close()


async def test_a_poll_the_manager_ends_after_the_hello_runs_nothing_and_asks_no_more() -> None:
    api, slots = _Api(), _Slots()
    polling, poll = await _held_with_a_poll_out(api, slots)
    leftover: list[Any] = list(polling._ending)
    assert len(leftover) == 1
    poll.set_result(None)  # 204: the manager dropped the poll at the hello
    await asyncio.wait_for(asyncio.gather(*leftover), 30)
    assert slots.ran.empty()
    assert api.polls.empty()
    assert not polling._ending


async def test_a_new_spell_of_polling_asks_only_once_the_last_poll_of_the_one_before_ended() -> (
    None
):
    """The stream held, then dropped again while the poll of the spell before was still
    out: the new spell's poll waits for that answer (both asked with the same free slot)."""
    api, slots = _Api(), _Slots()
    polling, leftover = await _held_with_a_poll_out(api, slots)
    # The stream dropped: polling again (no stream holds this time).
    second_spell = asyncio.create_task(polling.until_stream(Poll(probe_every=0)))
    for _ in range(10):
        await asyncio.sleep(0)
    assert api.polls.empty()
    leftover.set_result(HANDED)
    assert await asyncio.wait_for(slots.ran.get(), 30) == HANDED
    asked = await asyncio.wait_for(api.polls.get(), 30)
    asked.set_result(None)
    second_spell.cancel()
    await asyncio.gather(second_spell, return_exceptions=True)
    await polling.close()

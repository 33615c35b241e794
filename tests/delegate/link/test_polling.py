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


def _polling(api: _Api, slots: _Slots, stream: asyncio.Future[ClientConnection]) -> Polling:
    async def try_stream() -> ClientConnection | None:
        return await stream

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


async def test_an_answer_on_its_way_when_the_stream_holds_is_run() -> None:
    api, slots = _Api(), _Slots()
    loop = asyncio.get_running_loop()
    stream: asyncio.Future[ClientConnection] = loop.create_future()
    polling = _polling(api, slots, stream)
    handing_over = asyncio.create_task(polling.until_stream(Poll(probe_every=0)))
    poll = await asyncio.wait_for(api.polls.get(), 30)
    ws = cast(ClientConnection, object())
    stream.set_result(ws)
    assert await asyncio.wait_for(handing_over, 30) is ws
    # The manager answered before it read the stream's hello.
    poll.set_result(HANDED)
    assert await asyncio.wait_for(slots.ran.get(), 30) == HANDED
    # That poll was the last: polling is over.
    await asyncio.sleep(0)
    assert api.polls.empty()
    await polling.close()


async def test_a_poll_the_manager_ends_after_the_hello_runs_nothing_and_asks_no_more() -> None:
    api, slots = _Api(), _Slots()
    stream: asyncio.Future[ClientConnection] = asyncio.get_running_loop().create_future()
    polling = _polling(api, slots, stream)
    handing_over = asyncio.create_task(polling.until_stream(Poll(probe_every=0)))
    poll = await asyncio.wait_for(api.polls.get(), 30)
    stream.set_result(cast(ClientConnection, object()))
    await asyncio.wait_for(handing_over, 30)
    leftover: list[Any] = list(polling._ending)
    assert len(leftover) == 1
    poll.set_result(None)  # 204: the manager dropped the poll at the hello
    await asyncio.wait_for(asyncio.gather(*leftover), 30)
    assert slots.ran.empty()
    assert api.polls.empty()
    assert not polling._ending

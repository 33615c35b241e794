"""The delegate's transport for log batches and results (delegate.link.requests) against a
real manager: over the stream while it is up, over HTTPS when it drops, when no reply comes
in time, or past the in-flight bound; refusals raise what the HTTPS client raises.

The stream is a raw one of the test's (stream_client.py), routing replies to the transport
and detaching it when the stream ends, as the delegate's channel does; the HTTPS fallback is
the delegate's own client (ManagerApi) with the same token and key, so the same delegate.
A drop "with the request pending" is made without timing: the reply is not routed, or the
frame never leaves, and the test waits on the manager's own record before dropping.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from delegate.link.api import ManagerApi, Rejected
from delegate.link.requests import StreamRequests, Transport
from delegate.link.stream import Channel, DeclineReason
from delegate.outbox.shipper import Outbox
from delegate.outbox.spool import Spool
from shared.limits import MAX_FRAME_BYTES
from shared.protocol import (
    AcquireResponse,
    CloseCode,
    LogBatch,
    LogLine,
    RegisterRequest,
    ResultAck,
    StreamReply,
    TaskResult,
    TaskState,
)
from shared.tls import client_context
from tests.e2e.harness import WAIT, Cluster
from tests.e2e.stream_client import (
    Json,
    RawDelegate,
    manager,
    metrics_text,
    store_locked,
    submit,
)
from tests.faults.support import client, log_entries, wait_final

__all__ = ["manager"]  # the fixture: a manager on each store


@dataclass
class Link:
    delegate: RawDelegate
    api: ManagerApi
    transport: StreamRequests

    def route_replies(self) -> None:
        """Replies read on the stream reach the transport, as in the delegate's channel."""

        def route(frame: Json) -> None:
            if frame["type"] == "reply":
                self.transport.on_reply(StreamReply.model_validate(frame))

        self.delegate.on_frame = route

    def attach(self) -> None:
        ws = self.delegate.ws
        assert ws is not None

        async def send(text: str) -> None:
            await ws.send(text)

        self.transport.attach(send)

    async def drop_stream(self) -> None:
        """The stream ends; the channel's read loop then detaches the transport."""
        await self.delegate.close_stream()
        self.transport.detach()


@asynccontextmanager
async def _link(
    c: Cluster, name: str, *, timeout: float = 3600.0, limit: int = 32
) -> AsyncIterator[Link]:
    """A delegate whose stream is up, its transport attached (a reply timeout far beyond any
    wait here unless a test sets one: a fallback is then the drop's doing, not a timer's)."""
    async with RawDelegate(c, name) as d:
        await d.open_stream()
        registration = RegisterRequest.model_validate(d.registration)
        async with ManagerApi(
            c.url, token=d.token, registration=registration, ssl_context=client_context(c.ca_file)
        ) as api:
            await api.register()
            assert api.registered is not None
            assert api.registered.delegate_id == d.delegate_id
            link = Link(d, api, StreamRequests(api, timeout=timeout, limit=limit))
            link.attach()
            yield link


def _batch(attempt: int, seq: int, text: str) -> LogBatch:
    return LogBatch(
        attempt=attempt, lines=[LogLine(seq=seq, stream="stdout", ts=1.0 + seq, text=text)]
    )


def _result(attempt: int) -> TaskResult:
    return TaskResult(attempt=attempt, status="succeeded", exit_code=0, last_seq=-1)


def _finished(metrics: str) -> float:
    found = re.search(r'^tether_tasks_finished_total\{state="succeeded"\} (\S+)$', metrics, re.M)
    return float(found[1]) if found else 0.0


async def _once(c: Cluster, task_id: str) -> None:
    """The task ended as reported, in one attempt, recorded once."""
    async with client(c) as api:
        view = await api.get_task(task_id)
    assert (view.state, view.exit_code, len(view.attempts)) == (TaskState.SUCCEEDED, 0, 1)
    assert _finished(await metrics_text(c)) == 1


async def test_a_result_the_manager_took_whose_reply_was_lost_with_the_stream_is_not_recorded_twice(
    manager: Cluster,
) -> None:
    async with _link(manager, "took") as link:
        task_id = await submit(manager, "took")
        attempt = await link.delegate.acquire(task_id)
        # Replies are not routed: the manager's answer is lost with the stream.
        posting = asyncio.create_task(link.transport.post_result(task_id, _result(attempt)))
        await wait_final(manager, task_id)
        assert not posting.done()
        await link.drop_stream()
        async with asyncio.timeout(WAIT):
            ack = await posting
        assert ack == ResultAck(state=TaskState.SUCCEEDED, recorded=False)
        assert link.transport.counts == {"stream": 0, "https": 1}
        assert link.transport.in_flight == 0
    await _once(manager, task_id)


async def test_a_result_lost_with_the_stream_before_the_manager_read_it_is_recorded_over_https(
    manager: Cluster,
) -> None:
    async with _link(manager, "lost") as link:
        task_id = await submit(manager, "lost")
        attempt = await link.delegate.acquire(task_id)
        sent = asyncio.Event()

        async def lost(text: str) -> None:
            # The frame dies in the connection: the manager never reads it.
            sent.set()

        link.transport.attach(lost)
        posting = asyncio.create_task(link.transport.post_result(task_id, _result(attempt)))
        async with asyncio.timeout(WAIT):
            await sent.wait()
        assert link.transport.in_flight == 1
        await link.drop_stream()
        async with asyncio.timeout(WAIT):
            ack = await posting
        assert ack == ResultAck(state=TaskState.SUCCEEDED, recorded=True)
        assert link.transport.counts == {"stream": 0, "https": 1}
    await _once(manager, task_id)


async def test_a_log_batch_without_a_reply_in_time_goes_over_https_and_is_taken_once(
    manager: Cluster,
) -> None:
    # A reply timeout of a few milliseconds, and a frame that never arrives: the batch goes
    # over HTTPS whatever the machine's speed.
    async with _link(manager, "slow", timeout=0.005) as link:
        task_id = await submit(manager, "slow")
        attempt = await link.delegate.acquire(task_id)

        async def lost(text: str) -> None:
            pass

        slow = link.transport
        slow.attach(lost)
        first = _batch(attempt, 0, "a")
        assert (await slow.post_logs(task_id, first)).accepted == 1
        assert slow.counts == {"stream": 0, "https": 1}
        # The unanswered request keeps its slot until its stream ends: the manager may
        # still be working on it. A new stream lets it go.
        assert slow.in_flight == 1
        slow.attach(lost)
        assert slow.in_flight == 0

        # Over the stream, with replies: the batch again is taken as a resend.
        link.transport = StreamRequests(link.api, timeout=WAIT)
        link.route_replies()
        link.attach()
        assert (await link.transport.post_logs(task_id, first)).accepted == 0
        assert (await link.transport.post_logs(task_id, _batch(attempt, 1, "b"))).accepted == 1
        assert (await link.transport.post_result(task_id, _result(attempt))).recorded
        assert link.transport.counts == {"stream": 3, "https": 0}
    assert [e["text"] for e in await log_entries(manager, task_id)] == ["a", "b"]
    await _once(manager, task_id)


async def test_requests_past_the_in_flight_bound_go_over_https(manager: Cluster) -> None:
    async with _link(manager, "bound", limit=1) as link:
        task_id = await submit(manager, "bound")
        attempt = await link.delegate.acquire(task_id)
        sent = asyncio.Event()

        async def lost(text: str) -> None:
            sent.set()

        link.transport.attach(lost)
        pending = asyncio.create_task(link.transport.post_logs(task_id, _batch(attempt, 0, "a")))
        async with asyncio.timeout(WAIT):
            await sent.wait()
        # The one slot is taken: the next batch does not wait behind it.
        assert (await link.transport.post_logs(task_id, _batch(attempt, 1, "b"))).accepted == 1
        assert link.transport.counts == {"stream": 0, "https": 1}
        assert not pending.done()
        await link.drop_stream()
        async with asyncio.timeout(WAIT):
            assert (await pending).accepted == 1
        assert (await link.transport.post_result(task_id, _result(attempt))).recorded
        assert link.transport.counts == {"stream": 0, "https": 3}
    assert [e["text"] for e in await log_entries(manager, task_id)] == ["a", "b"]
    await _once(manager, task_id)


async def test_a_refusal_on_the_stream_raises_what_the_https_client_raises(
    manager: Cluster,
) -> None:
    async with _link(manager, "refused") as link:
        link.route_replies()
        task_id = await submit(manager, "refused")
        attempt = await link.delegate.acquire(task_id)
        calls: list[tuple[int, str, Callable[[Transport], Awaitable[object]]]] = [
            (409, "stale_attempt", lambda via: via.post_result(task_id, _result(attempt + 1))),
            (409, "stale_attempt", lambda via: via.post_logs(task_id, _batch(attempt + 1, 0, "-"))),
            (404, "not_found", lambda via: via.post_result("tsk_nosuchtask", _result(1))),
        ]
        for status, code, call in calls:
            raised = []
            for via in (link.transport, link.api):
                with pytest.raises(Rejected) as exc:
                    await call(via)
                raised.append((exc.value.status, exc.value.code, str(exc.value)))
            assert raised[0] == raised[1]
            assert raised[0][:2] == (status, code)
        # Past the batch limit (the HTTPS client is not asked: the shipper never forms such
        # a batch, and aiohttp warns of a body that large sent from memory).
        big = LogBatch(
            attempt=attempt,
            lines=[LogLine(seq=i, stream="stdout", ts=1.0, text="x" * 11_000) for i in range(96)],
        )
        with pytest.raises(Rejected) as exc:
            await link.transport.post_logs(task_id, big)
        assert (exc.value.status, exc.value.code) == (413, "too_large")
        assert link.transport.counts == {"stream": 4, "https": 0}
    assert await log_entries(manager, task_id) == []


async def test_the_outbox_ships_a_task_over_the_stream(manager: Cluster, tmp_path: Path) -> None:
    async with _link(manager, "outbox") as link:
        link.route_replies()
        task_id = await submit(manager, "outbox")
        attempt = await link.delegate.acquire(task_id)
        outbox = Outbox(
            link.transport, Spool.open(tmp_path / "spool"), retry_base=0.01, retry_max=0.1
        )
        cancelled: list[bool] = []
        async with outbox.shipper(task_id, attempt, on_cancel=lambda: cancelled.append(True)) as s:
            for i in range(3):
                await s.put(LogLine(seq=i, stream="stdout", ts=1.0 + i, text=f"line {i}"))
            delivery = await s.finish(
                TaskResult(attempt=attempt, status="succeeded", exit_code=0, last_seq=2)
            )
        await outbox.close()
        assert (delivery.state, delivery.ack) == (
            "delivered",
            ResultAck(state=TaskState.SUCCEEDED, recorded=True),
        )
        assert link.transport.counts["https"] == 0
        assert link.transport.counts["stream"] >= 2  # at least one batch, and the result
        assert not cancelled
    assert [e["text"] for e in await log_entries(manager, task_id)] == [
        "line 0",
        "line 1",
        "line 2",
    ]
    await _once(manager, task_id)


class _Idle:
    """The agent's side of the channel: nothing running, nothing spooled."""

    def on_assigned(self, assignment: AcquireResponse) -> DeclineReason | None:
        return "full"  # the test's task is taken through the acquire route

    def run_assigned(self, assignment: AcquireResponse) -> None:
        raise AssertionError("nothing is run here")

    def on_cancel(self, task_id: str) -> None: ...
    def on_drain(self) -> None: ...
    def on_resume(self) -> None: ...

    def heartbeat_state(self) -> tuple[list[str], int, float]:
        return [], 1, 0.0

    def spooled(self) -> list[str]:
        return []


async def _channel_stream(c: Cluster, credential: str) -> ClientConnection:
    """A stream past its hello, as the channel's own open leaves it (its hello carries the
    v2 key here: until the channel's does, the test opens the stream for it)."""
    ws = await connect(
        c.url.replace("https://", "wss://") + "/api/v1/delegate/stream",
        ssl=client_context(c.ca_file),
        additional_headers={"Authorization": f"Bearer {credential}"},
        max_size=MAX_FRAME_BYTES,
        compression=None,
        ping_interval=None,
    )
    await ws.send(json.dumps({"type": "hello", "key": secrets.token_urlsafe(12), "running": []}))
    assert json.loads(await ws.recv())["type"] == "heartbeat_ack"
    return ws


async def test_the_channel_routes_replies_and_a_closed_stream_sends_what_is_pending_over_https(
    manager: Cluster,
) -> None:
    async with RawDelegate(manager, "chan") as d:
        # Taken before the channel's stream opens: no hint comes to it (a v1 frame).
        task_id = await submit(manager, "chan")
        attempt = await d.acquire(task_id)
        registration = RegisterRequest.model_validate(d.registration)
        async with ManagerApi(
            manager.url,
            token=d.token,
            registration=registration,
            ssl_context=client_context(manager.ca_file),
        ) as api:
            await api.register()
            channel = Channel(api, requests=StreamRequests(api, timeout=3600.0))
            channel._events = _Idle()
            reading = asyncio.create_task(
                channel._run_stream(await _channel_stream(manager, d.credential))
            )
            transport = channel.requests
            async with asyncio.timeout(WAIT):
                while not transport.attached:  # until the read loop has started
                    await asyncio.sleep(0)
            # A reply comes back through the channel's read loop.
            assert (await transport.post_logs(task_id, _batch(attempt, 0, "a"))).accepted == 1
            assert transport.counts == {"stream": 1, "https": 0}

            async with store_locked(manager, task_id):
                posting = asyncio.create_task(transport.post_result(task_id, _result(attempt)))
                async with asyncio.timeout(WAIT):
                    while transport.in_flight == 0:  # until the frame is on its way
                        await asyncio.sleep(0)
                # The manager ends the stream: a newer one of the same delegate supersedes it.
                newer = await _channel_stream(manager, d.credential)
                async with asyncio.timeout(WAIT):
                    assert await reading == CloseCode.SUPERSEDED
                # The read loop let go of the pending result: it is on its way over HTTPS.
                assert transport.in_flight == 0
            async with asyncio.timeout(WAIT):
                ack = await posting
            await newer.close()
        assert ack.state is TaskState.SUCCEEDED
        assert transport.counts == {"stream": 1, "https": 1}
    assert [e["text"] for e in await log_entries(manager, task_id)] == ["a"]
    await _once(manager, task_id)

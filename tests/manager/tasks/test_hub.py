"""The delegate hub: sessions, their connections, liveness, heartbeats and cancels.

Time is an injected clock. Streams are real aiohttp WebSockets on loopback where the
connection is the point (a superseded connection, a frame sent); elsewhere sessions poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import aiohttp
import pytest
from aiohttp import web
from pydantic import BaseModel

from manager.records import DelegateRecord
from manager.tasks.hub import MAX_UNSENT_BYTES, Hub, Session
from shared.protocol import CloseCode, Heartbeat, HeartbeatAck, Hello

LOST_AFTER = 30.0


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


WAIT = 30.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hub(clock: FakeClock) -> Hub:
    return Hub(lost_after=LOST_AFTER, clock=clock, wall=clock)


def record(name: str, *, capacity: int = 4, draining: bool = False) -> DelegateRecord:
    return DelegateRecord(
        id=f"dlg_{name}",
        name=name,
        token_id=f"tok_{name}",
        hostname=f"{name}.internal",
        version="0.1.0",
        protocol_version=1,
        selectors=("linux",),
        task_types=("shell",),
        capacity=capacity,
        public_key=f"{name:x<44}",
        created_at=0.0,
        last_seen=0.0,
        draining=draining,
    )


# -- sessions and liveness ------------------------------------------------------------------


def test_a_delegate_heard_from_has_one_session_that_follows_its_record(hub: Hub) -> None:
    first = hub.session(record("a"))
    again = hub.session(record("a", capacity=8, draining=True))
    assert again is first
    assert (again.delegate.capacity, again.draining) == (8, True)
    assert list(hub.sessions) == ["dlg_a"]


def test_status_follows_liveness_on_the_injected_clock(hub: Hub, clock: FakeClock) -> None:
    assert hub.status("dlg_a") == "disconnected"
    hub.session(record("a"))
    assert hub.status("dlg_a") == "polling"
    clock.now += LOST_AFTER
    assert hub.status("dlg_a") == "polling"  # exactly lost_after is still alive
    assert hub.liveness.lost(clock()) == []
    clock.now += 0.001
    assert hub.status("dlg_a") == "disconnected"
    assert hub.liveness.lost(clock()) == ["dlg_a"]


def test_a_heartbeat_keeps_a_session_alive(hub: Hub, clock: FakeClock) -> None:
    session = hub.session(record("a"))
    clock.now += LOST_AFTER - 1
    hub.on_heartbeat(session, Heartbeat(seq=1, free_slots=4))
    clock.now += LOST_AFTER - 1
    assert hub.status("dlg_a") == "polling"
    assert hub.liveness.lost(clock()) == []


def test_a_dropped_session_is_forgotten_and_its_poller_woken(hub: Hub) -> None:
    session = hub.session(record("a"))
    hub.drop("dlg_a", CloseCode.LOST, "no heartbeat")
    assert session.wake.is_set()
    assert hub.sessions == {}
    assert hub.liveness.last_seen("dlg_a") is None
    assert hub.status("dlg_a") == "disconnected"
    hub.drop("dlg_a", CloseCode.LOST, "again")  # dropping twice is harmless


def test_only_live_sessions_hold_tasks_and_count_as_present(hub: Hub, clock: FakeClock) -> None:
    old = hub.session(record("old"))
    hub.on_heartbeat(old, Heartbeat(seq=1, running=["t_old"], free_slots=3))
    clock.now += LOST_AFTER + 1
    new = hub.session(record("new"))
    hub.on_heartbeat(new, Heartbeat(seq=1, running=["t1", "t2"], free_slots=2))
    lease = hub.liveness.lease
    assert [(c.task_id, c.delegate_id, c.lease_for) for c in hub.held()] == [
        ("t1", "dlg_new", lease),
        ("t2", "dlg_new", lease),
    ]
    assert [
        (p.delegate_id, p.replica_id, p.mode, p.last_heartbeat) for p in hub.presence("r1")
    ] == [("dlg_new", "r1", "polling", clock.now)]


def test_presence_is_dated_on_the_wall_clock_and_liveness_runs_on_the_monotonic(
    clock: FakeClock,
) -> None:
    wall = FakeClock()
    wall.now = 1_700_000_000.0
    hub = Hub(lost_after=LOST_AFTER, clock=clock, wall=wall)
    hub.on_heartbeat(hub.session(record("a")), Heartbeat(seq=1, free_slots=1))
    clock.now += 5.0
    wall.now += 3_600.0  # the wall clock jumps an hour: liveness does not care
    (seen,) = hub.presence("r1")
    assert seen.last_heartbeat == wall.now - 5.0
    assert hub.status("dlg_a") == "polling"
    assert hub.liveness.lost(clock()) == []


def test_a_hello_or_a_task_this_process_did_not_grant_hastens_the_renewal(hub: Hub) -> None:
    session = hub.session(record("a"))
    hub.renewals.done(0.0)
    hub.leases.grant("mine", session.id)
    hub.on_heartbeat(session, Heartbeat(seq=1, running=["mine"], free_slots=3))
    assert not hub.renewals.due(1.0)
    hub.on_heartbeat(session, Heartbeat(seq=2, running=["mine"], spooled=["other"], free_slots=3))
    assert hub.renewals.due(1.0)
    hub.renewals.done(1.0)
    hub.on_heartbeat(session, Hello(key="process-key-1", running=["mine"]))
    assert hub.renewals.due(2.0)


def test_a_task_only_in_the_spool_is_never_a_stranger(hub: Hub) -> None:
    session = hub.session(record("a"))
    hub.on_heartbeat(session, Heartbeat(seq=1, running=["gone"], spooled=["old"], free_slots=3))
    held = hub.held()
    hub.renewed(held, renewed=set())
    assert session.strangers == frozenset({"gone"})


# -- heartbeats and acks --------------------------------------------------------------------


def test_a_heartbeat_records_slots_metrics_and_running_tasks(hub: Hub) -> None:
    session = hub.session(record("a"))
    frame = Heartbeat(seq=7, running=["t1"], free_slots=3, metrics={"rss_bytes": 1.0})
    assert hub.on_heartbeat(session, frame) == HeartbeatAck(seq=7)
    assert (session.free_slots, session.metrics, session.listed) == (3, {"rss_bytes": 1.0}, ("t1",))


def test_a_hello_counts_free_slots_from_the_capacity(hub: Hub) -> None:
    session = hub.session(record("a", capacity=4))
    assert hub.on_heartbeat(
        session, Hello(key="process-key-1", running=["t1", "t2"])
    ) == HeartbeatAck(seq=0)
    assert session.free_slots == 2


def test_an_ack_cancels_listed_strangers_and_cancelled_tasks_and_carries_the_drain(
    hub: Hub,
) -> None:
    session = hub.session(record("a", draining=True))
    frame = Heartbeat(seq=1, running=["mine", "lost", "cancelled"], free_slots=1)
    hub.on_heartbeat(session, frame)
    held = hub.held()
    hub.renewed(held, renewed={"mine", "cancelled"})
    hub.cancelling.update({"cancelled", "not_listed"})
    ack = hub.on_heartbeat(session, frame)
    assert ack == HeartbeatAck(seq=1, cancel=["cancelled", "lost"], drain=True)


def test_a_task_acquired_during_a_renewal_is_not_a_stranger(hub: Hub) -> None:
    session = hub.session(record("a"))
    hub.on_heartbeat(session, Heartbeat(seq=1, running=["t1"], free_slots=3))
    snapshot = hub.held()
    # t2 is acquired (and listed) while the store renews the snapshot's leases.
    hub.on_heartbeat(session, Heartbeat(seq=2, running=["t1", "t2"], free_slots=2))
    hub.renewed(snapshot, renewed={"t1"})
    assert session.strangers == frozenset()


# -- streams --------------------------------------------------------------------------------


@dataclass
class Streams:
    """A loopback WebSocket endpoint that attaches each connection to one hub session."""

    hub: Hub
    session: Session
    url: str = ""
    attached: asyncio.Queue[web.WebSocketResponse] = field(default_factory=asyncio.Queue)
    detached: asyncio.Queue[web.WebSocketResponse] = field(default_factory=asyncio.Queue)

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await self.hub.attach_stream(self.session, ws, request.transport)
        self.attached.put_nowait(ws)
        async for _ in ws:
            pass
        self.hub.detach_stream(self.session, ws)
        self.detached.put_nowait(ws)
        return ws


@contextlib.asynccontextmanager
async def streams(hub: Hub, session: Session) -> AsyncIterator[Streams]:
    s = Streams(hub, session)
    app = web.Application()
    app.router.add_get("/stream", s.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    s.url = f"http://127.0.0.1:{port}/stream"
    try:
        yield s
    finally:
        await runner.cleanup()


async def test_a_newer_connection_supersedes_the_older(hub: Hub) -> None:
    session = hub.session(record("a"))
    async with streams(hub, session) as s, aiohttp.ClientSession() as http:
        first = await http.ws_connect(s.url)
        first_ws = await asyncio.wait_for(s.attached.get(), WAIT)
        assert (session.mode, hub.status("dlg_a")) == ("stream", "connected")
        second = await http.ws_connect(s.url)
        second_ws = await asyncio.wait_for(s.attached.get(), WAIT)
        closing = await asyncio.wait_for(first.receive(), WAIT)
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, CloseCode.SUPERSEDED)
        await first.close()
        # The old connection's end does not detach the new one.
        assert await asyncio.wait_for(s.detached.get(), WAIT) is first_ws
        assert session.ws is second_ws
        assert hub.status("dlg_a") == "connected"
        await second.close()
        assert await asyncio.wait_for(s.detached.get(), WAIT) is second_ws
        # The session outlives its stream: it may come back, or poll.
        assert session.mode == "polling"
        assert hub.status("dlg_a") == "polling"


async def test_cancels_reach_a_streaming_delegate_as_frames(hub: Hub) -> None:
    session = hub.session(record("a"))
    async with streams(hub, session) as s, aiohttp.ClientSession() as http:
        client = await http.ws_connect(s.url)
        await asyncio.wait_for(s.attached.get(), WAIT)
        hub.on_heartbeat(session, Heartbeat(seq=1, running=["t_run"], free_slots=3))
        hub.cancel("t_run")
        frames = [json.loads(await asyncio.wait_for(client.receive_str(), WAIT))]
        assert frames == [{"type": "cancel", "task_id": "t_run"}]
        assert "t_run" in hub.cancelling
        await client.close()


async def test_dropping_a_streaming_session_closes_its_stream_with_the_code(hub: Hub) -> None:
    session = hub.session(record("a"))
    async with streams(hub, session) as s, aiohttp.ClientSession() as http:
        client = await http.ws_connect(s.url)
        await asyncio.wait_for(s.attached.get(), WAIT)
        hub.drop("dlg_a", CloseCode.REVOKED, "token revoked")
        closing = await asyncio.wait_for(client.receive(), WAIT)
        assert (closing.type, closing.data, closing.extra) == (
            aiohttp.WSMsgType.CLOSE,
            CloseCode.REVOKED,
            "token revoked",
        )
        await client.close()


async def test_close_all_closes_every_stream_and_wakes_every_poller(hub: Hub) -> None:
    streaming = hub.session(record("a"))
    poller = hub.session(record("b"))
    async with streams(hub, streaming) as s, aiohttp.ClientSession() as http:
        client = await http.ws_connect(s.url)
        await asyncio.wait_for(s.attached.get(), WAIT)
        closing = asyncio.ensure_future(client.receive())
        await hub.close_all(CloseCode.RESTART, "manager restarting")
        assert (await asyncio.wait_for(closing, WAIT)).data == CloseCode.RESTART
        assert poller.wake.is_set()
        await client.close()


def test_a_record_change_keeps_the_session(hub: Hub) -> None:
    session = hub.session(record("a"))
    session.listed = ("t1",)
    again = hub.session(replace(record("a"), version="0.2.0"))
    assert again.listed == ("t1",)
    assert again is session


class Bulk(BaseModel):
    """A large frame (an assignment with many sealed secrets is up to 4 MiB)."""

    type: str = "bulk"
    data: str


async def _upgrade(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that completes the handshake and then reads nothing more."""
    host_port = url.removeprefix("http://").split("/", 1)[0]
    host, port = host_port.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            "GET /stream HTTP/1.1\r\n"
            f"Host: {host_port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def test_a_peer_that_stops_reading_is_dropped_and_its_unsent_frames_bounded(
    hub: Hub,
) -> None:
    session = hub.session(record("a"))
    frame = Bulk(data="x" * (1 << 20))
    async with streams(hub, session) as s:
        _, writer = await _upgrade(s.url)
        ws = await asyncio.wait_for(s.attached.get(), WAIT)
        # Far more than the bound: the kernel's buffers take some, the manager the rest.
        for _ in range(3 * MAX_UNSENT_BYTES >> 20):
            hub.send(session, frame)
            assert session.unsent <= MAX_UNSENT_BYTES
            await asyncio.sleep(0)
        # The connection was dropped, and the session is back to polling.
        assert await asyncio.wait_for(s.detached.get(), WAIT) is ws
        assert session.ws is None
        assert session.mode == "polling"
        writer.close()


async def test_a_reading_peer_takes_more_than_the_bound_without_being_dropped(hub: Hub) -> None:
    session = hub.session(record("a"))
    frame = Bulk(data="x" * (1 << 20))
    count = 2 * MAX_UNSENT_BYTES >> 20
    async with streams(hub, session) as s, aiohttp.ClientSession() as http:
        client = await http.ws_connect(s.url, max_msg_size=2 << 20)
        await asyncio.wait_for(s.attached.get(), WAIT)
        for _ in range(count):
            hub.send(session, frame)
            # A reader keeps up: what it was sent is taken as it goes.
            assert len(await asyncio.wait_for(client.receive_str(), WAIT)) > 1 << 20
        assert session.mode == "stream"
        await client.close()


async def test_unsent_frames_are_counted_in_bytes_not_characters(hub: Hub) -> None:
    # Four bytes a character: counted by length, a non-reader could hold four times the bound.
    session = hub.session(record("a"))
    frame = Bulk(data="\N{GRINNING FACE}" * (1 << 18))
    size = len(frame.model_dump_json().encode())
    async with streams(hub, session) as s:
        _, writer = await _upgrade(s.url)
        await asyncio.wait_for(s.attached.get(), WAIT)
        # Counted as it is handed over, before any of it is written.
        hub.send(session, frame)
        assert session.unsent == size
        assert size > 4 * (1 << 18)
        writer.close()

"""The shipper against a real HTTPS server on loopback that can go away and come back."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Literal

import pytest
import structlog
from aiohttp import web

from delegate.link.api import ManagerApi
from delegate.outbox.shipper import MAX_PENDING_LINES, LogShipper, Outbox
from delegate.outbox.spool import Spool
from shared.limits import KIB, MAX_LOG_BATCH_LINES, MIB
from shared.protocol import (
    PROTOCOL_VERSION,
    LogBatch,
    LogBatchAck,
    LogLine,
    RegisterRequest,
    RegisterResponse,
    ResultAck,
    TaskResult,
    TaskState,
)
from shared.tls import CertPaths, client_context, ensure_manager_certificates, server_context

TASK = "task_0001"
Mode = Literal["up", "down", "503", "409"]


class FakeManager:
    """The manager's delegate plane, as much as the shipper uses: register, logs, result.

    ``down`` refuses new connections and drops the ones already open; ``503`` answers
    "unavailable"; ``409`` says the attempt no longer holds the task.
    """

    def __init__(self, certs: CertPaths) -> None:
        self._ssl = server_context(certs.server_cert, certs.server_key)
        self.mode: Mode = "up"
        self.port = 0
        self.lines: dict[int, LogLine] = {}
        # Each seq the first time it arrived, in arrival order.
        self.arrivals: list[int] = []
        self.results: list[TaskResult] = []
        # How many lines the manager held when each result arrived.
        self.lines_at_result: list[int] = []
        self.log_posts = 0
        self.cancel = False
        # A batch with a line holding these bytes, or a result with an output holding them,
        # is refused as bad data (422), as a store that cannot hold a value answers.
        self.refuse: bytes | None = None
        # When set to an unset event, log posts from number ``hold_from`` on wait for it.
        self.gate: asyncio.Event | None = None
        self.hold_from = 1
        self._changed = asyncio.Event()
        app = web.Application()
        app.router.add_post("/api/v1/delegate/register", self._register)
        app.router.add_post("/api/v1/delegate/tasks/{task_id}/logs", self._logs)
        app.router.add_post("/api/v1/delegate/tasks/{task_id}/result", self._result)
        self._runner = web.AppRunner(app, handle_signals=False)
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._ssl)
        await self._site.start()
        self.port = self._runner.addresses[0][1]

    async def down(self) -> None:
        self.mode = "down"
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def up(self) -> None:
        self.mode = "up"
        if self._site is None:
            await self._listen()

    async def close(self) -> None:
        await self._runner.cleanup()

    async def wait_for(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not check():
                self._changed.clear()
                await self._changed.wait()

    def _seen(self) -> None:
        self._changed.set()

    async def _refusal(self, request: web.Request) -> web.Response | None:
        if self.mode == "down":
            # A connection kept alive from before: cut it, as a dead process would.
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=503)
        if self.mode == "503":
            return web.json_response(
                {"error": {"code": "unavailable", "message": "try later"}}, status=503
            )
        if self.mode == "409":
            return web.json_response(
                {"error": {"code": "stale_attempt", "message": "not yours"}}, status=409
            )
        return None

    async def _register(self, request: web.Request) -> web.Response:
        return web.Response(
            text=RegisterResponse(
                delegate_id="dlg_1",
                session_token="session",
                session_expires_in_s=3600,
                heartbeat_interval_s=10,
                lost_after_s=30,
                poll_wait_s=25,
                stream_retry_s=60,
                protocol_version=PROTOCOL_VERSION,
            ).model_dump_json(),
            content_type="application/json",
        )

    async def _logs(self, request: web.Request) -> web.Response:
        self.log_posts += 1
        self._seen()
        if self.gate is not None and self.log_posts >= self.hold_from:
            await self.gate.wait()
        refused = await self._refusal(request)
        if refused is not None:
            return refused
        batch = LogBatch.model_validate_json(await request.read())
        if self.refuse is not None and any(self.refuse in line.raw for line in batch.lines):
            return _bad_data()
        accepted = 0
        for line in batch.lines:
            if line.seq not in self.lines:
                self.lines[line.seq] = line
                self.arrivals.append(line.seq)
                accepted += 1
        self._seen()
        ack = LogBatchAck(accepted=accepted, cancel=self.cancel)
        return web.Response(text=ack.model_dump_json(), content_type="application/json")

    async def _result(self, request: web.Request) -> web.Response:
        refused = await self._refusal(request)
        if refused is not None:
            return refused
        result = TaskResult.model_validate_json(await request.read())
        if self.refuse is not None and any(
            self.refuse in v.encode() for v in result.outputs.values()
        ):
            return _bad_data()
        self.results.append(result)
        self.lines_at_result.append(len(self.lines))
        self._seen()
        ack = ResultAck(state=TaskState(result.status), recorded=len(self.results) == 1)
        return web.Response(text=ack.model_dump_json(), content_type="application/json")


def _bad_data() -> web.Response:
    body = {"error": {"code": "bad_data", "message": "the database refused a value"}}
    return web.json_response(body, status=422)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return ensure_manager_certificates(tmp_path_factory.mktemp("tls"), ["127.0.0.1"])


@pytest.fixture
async def manager(certs: CertPaths) -> AsyncIterator[FakeManager]:
    fake = FakeManager(certs)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
async def api(manager: FakeManager, certs: CertPaths) -> AsyncIterator[ManagerApi]:
    registration = RegisterRequest(
        name="test",
        hostname="localhost",
        version="0",
        protocol_version=PROTOCOL_VERSION,
        capacity=4,
        task_types=["shell"],
        public_key=base64.b64encode(bytes(32)).decode(),
    )
    context: ssl.SSLContext = client_context(certs.ca_cert)
    async with ManagerApi(
        manager.url, token="token", registration=registration, ssl_context=context
    ) as client:
        yield client


def outbox_for(
    api: ManagerApi, root: Path, *, task_limit: int = 64 * MIB, total_limit: int = 512 * MIB
) -> Outbox:
    spool = Spool.open(root, task_limit=task_limit, total_limit=total_limit)
    return Outbox(api, spool, retry_base=0.001, retry_max=0.01)


def line(seq: int, width: int = 60) -> LogLine:
    return LogLine(seq=seq, stream="stdout", ts=1.0 + seq, text=f"line {seq}".ljust(width, "."))


def result(last_seq: int) -> TaskResult:
    return TaskResult(attempt=1, status="succeeded", exit_code=0, last_seq=last_seq)


async def put_all(shipper: LogShipper, seqs: range, width: int = 60) -> None:
    for seq in seqs:
        await shipper.put(line(seq, width))


def spool_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_lines_and_result_go_straight_to_a_reachable_manager(
    manager: FakeManager, api: ManagerApi, tmp_path: Path
) -> None:
    outbox = outbox_for(api, tmp_path / "spool")
    async with outbox.shipper(TASK, 1, on_cancel=lambda: None) as shipper:
        await put_all(shipper, range(500))
        delivery = await shipper.finish(result(499))

    assert delivery.state == "delivered"
    assert delivery.ack is not None
    assert delivery.ack.recorded
    assert manager.arrivals == list(range(500))
    assert manager.lines_at_result == [500]
    assert spool_files(tmp_path / "spool") == []


@pytest.mark.parametrize("outage", ["down", "503"])
async def test_during_an_outage_log_and_result_wait_on_disk_then_arrive_in_order_once(
    manager: FakeManager, api: ManagerApi, tmp_path: Path, outage: Mode
) -> None:
    root = tmp_path / "spool"
    outbox = outbox_for(api, root)
    async with outbox.shipper(TASK, 1, on_cancel=lambda: None) as shipper:
        await put_all(shipper, range(100))
        await manager.wait_for(lambda: len(manager.lines) == 100)
        if outage == "down":
            await manager.down()
        manager.mode = outage

        await put_all(shipper, range(100, 3000))
        delivery = await shipper.finish(result(2999))

        assert delivery.state == "spooled"
        assert shipper.spooling
        assert outbox.awaiting_result() == [TASK]
        # What the heartbeats list, so the manager keeps the lease while it waits.
        assert outbox.spooled_tasks() == [TASK]
        assert spool_files(root)
        assert len(manager.lines) < 3000
        assert manager.results == []
        await manager.up()
    await outbox.wait_idle()

    assert manager.arrivals == list(range(3000))
    assert [r.last_seq for r in manager.results] == [2999]
    # The result came after every line of its attempt.
    assert manager.lines_at_result == [3000]
    assert outbox.awaiting_result() == []
    assert outbox.spooled_tasks() == []
    assert spool_files(root) == []


async def test_a_slow_manager_blocks_the_task_instead_of_buffering_or_spooling(
    manager: FakeManager, api: ManagerApi, tmp_path: Path
) -> None:
    root = tmp_path / "spool"
    outbox = outbox_for(api, root)
    manager.gate = asyncio.Event()
    put = 0

    async def producer(shipper: LogShipper) -> None:
        nonlocal put
        for seq in range(20_000):
            await shipper.put(line(seq))
            put += 1

    async with outbox.shipper(TASK, 1, on_cancel=lambda: None) as shipper:
        task = asyncio.create_task(producer(shipper))
        await manager.wait_for(lambda: manager.log_posts == 1)
        # Let the producer run as far as it can while the first post hangs.
        for _ in range(MAX_PENDING_LINES * 3):
            await asyncio.sleep(0)

        assert not task.done()
        assert put <= MAX_PENDING_LINES + MAX_LOG_BATCH_LINES + 1
        assert spool_files(root) == []

        manager.gate.set()
        await task
        delivery = await shipper.finish(result(19_999))

    assert delivery.state == "delivered"
    assert manager.arrivals == list(range(20_000))


async def test_queued_bytes_are_bounded_as_well_as_lines(
    manager: FakeManager, api: ManagerApi, tmp_path: Path
) -> None:
    outbox = outbox_for(api, tmp_path / "spool")
    manager.gate = asyncio.Event()
    put = 0

    async def producer(shipper: LogShipper) -> None:
        nonlocal put
        for seq in range(2000):
            await shipper.put(line(seq, width=16 * KIB))
            put += 1

    async with outbox.shipper(TASK, 1, on_cancel=lambda: None) as shipper:
        task = asyncio.create_task(producer(shipper))
        await manager.wait_for(lambda: manager.log_posts == 1)
        for _ in range(1000):
            await asyncio.sleep(0)

        # 4 MiB in the queue, and one batch of 512 KiB in flight: about 290 lines of 16 KiB.
        assert put < 300
        manager.gate.set()
        await task
        await shipper.finish(result(1999))

    assert manager.arrivals == list(range(2000))


async def test_a_refused_attempt_drops_its_spool_and_stops_the_task(
    manager: FakeManager, api: ManagerApi, tmp_path: Path
) -> None:
    root = tmp_path / "spool"
    outbox = outbox_for(api, root)
    cancelled = asyncio.Event()
    async with outbox.shipper(TASK, 1, on_cancel=cancelled.set) as shipper:
        await manager.down()
        await put_all(shipper, range(50))
        await shipper.flush()
        assert shipper.spooling
        await manager.up()
        manager.mode = "409"
        await cancelled.wait()
        await put_all(shipper, range(50, 60))
        delivery = await shipper.finish(result(59))

    await outbox.wait_idle()
    assert shipper.stale
    assert delivery.state == "refused"
    assert manager.lines == {}
    assert manager.results == []
    assert spool_files(root) == []


async def test_a_spooled_result_is_sent_by_the_next_process_after_a_restart(
    manager: FakeManager, api: ManagerApi, tmp_path: Path
) -> None:
    root = tmp_path / "spool"
    first = outbox_for(api, root)
    await manager.down()
    async with first.shipper(TASK, 1, on_cancel=lambda: None) as shipper:
        await put_all(shipper, range(1000))
        assert (await shipper.finish(result(999))).state == "spooled"
    await first.close()  # the process stops with the manager still away
    assert spool_files(root)

    await manager.up()
    second = outbox_for(api, root)
    with structlog.testing.capture_logs() as logs:
        assert second.replay() == 1
        assert second.awaiting_result() == [TASK]
        await second.wait_idle()

    assert manager.arrivals == list(range(1000))
    assert manager.lines_at_result == [1000]
    assert any(e["event"] == "spooled result delivered" and e["recorded"] for e in logs)
    assert spool_files(root) == []


async def test_replaying_a_stale_attempt_drops_it_with_a_log_line(
    manager: FakeManager, api: ManagerApi, tmp_path: Path
) -> None:
    root = tmp_path / "spool"
    first = outbox_for(api, root)
    await manager.down()
    async with first.shipper(TASK, 1, on_cancel=lambda: None) as shipper:
        await put_all(shipper, range(10))
        await shipper.finish(result(9))
    await first.close()

    await manager.up()
    manager.mode = "409"
    second = outbox_for(api, root)
    with structlog.testing.capture_logs() as logs:
        second.replay()
        await second.wait_idle()

    refused = [e for e in logs if "refused" in e["event"]]
    assert refused
    assert refused[0]["task_id"] == TASK
    assert refused[0]["log_level"] == "warning"
    assert manager.results == []
    assert spool_files(root) == []


async def test_a_manager_that_answers_again_slows_the_task_rather_than_filling_the_spool(
    manager: FakeManager, api: ManagerApi, tmp_path: Path
) -> None:
    # The lines put below would overflow this spool several times over.
    limit = 2048 * KIB
    outbox = outbox_for(api, tmp_path / "spool", task_limit=limit, total_limit=limit)
    produced = 0

    async def producer(shipper: LogShipper) -> None:
        nonlocal produced
        for seq in range(200, 25_000):
            await shipper.put(line(seq))
            produced += 1

    async with outbox.shipper(TASK, 1, on_cancel=lambda: None) as shipper:
        await manager.down()
        await put_all(shipper, range(200), width=4 * KIB)  # two posts' worth, spooled
        await shipper.flush()
        # The drainer's first post is answered, its second one hangs: reachable, but behind.
        manager.gate = asyncio.Event()
        manager.hold_from = 2
        await manager.up()
        await manager.wait_for(lambda: manager.log_posts == 2)
        task = asyncio.create_task(producer(shipper))
        for _ in range(1000):
            await asyncio.sleep(0)  # let the producer go as far as it can

        assert not task.done()
        assert outbox.spool.total_bytes < limit
        manager.gate.set()
        await task
        await shipper.finish(result(24_999))
    await outbox.wait_idle()

    assert produced == 24_800
    assert manager.arrivals == list(range(25_000))
    assert all(ln.stream == "stdout" for ln in manager.lines.values())


async def test_a_long_outage_drops_the_middle_and_the_manager_is_told(
    manager: FakeManager, api: ManagerApi, tmp_path: Path
) -> None:
    outbox = outbox_for(api, tmp_path / "spool", task_limit=64 * KIB, total_limit=64 * KIB)
    async with outbox.shipper(TASK, 1, on_cancel=lambda: None) as shipper:
        await manager.down()
        await put_all(shipper, range(5000))
        await shipper.finish(result(4999))
        await manager.up()
    await outbox.wait_idle()

    seqs = manager.arrivals
    assert seqs == sorted(seqs)
    assert seqs[0] == 0
    assert seqs[-1] == 4999
    (note,) = [ln for ln in manager.lines.values() if ln.stream == "system"]
    assert "dropped here" in note.text
    missing = set(range(5000)) - set(seqs)
    assert missing
    assert min(missing) == note.seq + 1
    assert f"seq {note.seq} to {max(missing)}" in note.text
    assert manager.lines_at_result == [len(seqs)]


async def test_a_cancel_in_a_log_ack_reaches_the_task(
    manager: FakeManager, api: ManagerApi, tmp_path: Path
) -> None:
    outbox = outbox_for(api, tmp_path / "spool")
    cancelled = asyncio.Event()
    manager.cancel = True
    async with outbox.shipper(TASK, 1, on_cancel=cancelled.set) as shipper:
        await shipper.put(line(0))
        await cancelled.wait()
        await shipper.finish(result(0))


# -- data the manager refuses ----------------------------------------------------------------

BAD = b"\x00BAD\xff"


def bad_line(seq: int) -> LogLine:
    return LogLine.of_bytes(seq, "stdout", 1.0 + seq, b"before " + BAD + b" after")


def note_of(manager: FakeManager, seq: int) -> str:
    note = manager.lines[seq]
    assert note.stream == "system"
    assert "the manager refused them (422 bad_data: the database refused a value)" in note.text
    return note.text


async def test_a_batch_refused_as_data_is_dropped_and_the_task_log_says_so(
    manager: FakeManager, api: ManagerApi, tmp_path: Path
) -> None:
    manager.refuse = BAD
    outbox = outbox_for(api, tmp_path / "spool")
    with structlog.testing.capture_logs() as logs:
        async with outbox.shipper(TASK, 1, on_cancel=lambda: None) as shipper:
            await put_all(shipper, range(5))
            await shipper.flush()
            await shipper.put(bad_line(5))
            await shipper.flush()
            await put_all(shipper, range(6, 10))
            delivery = await shipper.finish(result(9))

    assert delivery.state == "delivered"
    assert not shipper.spooling
    assert not shipper.stale
    # The refused line's place holds a line saying what went and why; all else arrived.
    assert sorted(manager.lines) == list(range(10))
    assert "1 line (18 B) dropped here, seq 5:" in note_of(manager, 5)
    assert [r.last_seq for r in manager.results] == [9]
    assert any(e["event"].startswith("log batch refused") for e in logs)


async def test_a_spooled_batch_refused_as_data_is_dropped_and_the_rest_is_sent(
    manager: FakeManager, api: ManagerApi, tmp_path: Path
) -> None:
    root = tmp_path / "spool"
    # Small segments: the drainer sends the spool in several batches.
    outbox = outbox_for(api, root, task_limit=64 * KIB)
    async with outbox.shipper(TASK, 1, on_cancel=lambda: None) as shipper:
        await manager.down()
        await put_all(shipper, range(100))
        await shipper.put(bad_line(100))
        await put_all(shipper, range(101, 200))
        assert (await shipper.finish(result(199))).state == "spooled"
        manager.refuse = BAD
        await manager.up()
    await outbox.wait_idle()

    # The drainer's batch that held the bad line went whole; a note stands at its first seq
    # and names its range, and every line outside that range arrived, then the result.
    notes = [s for s, ln in manager.lines.items() if ln.stream == "system"]
    assert len(notes) == 1
    text = note_of(manager, notes[0])
    first, last = map(int, text.split("dropped here, seq ")[1].split(":")[0].split(" to "))
    assert 0 < first == notes[0] <= 100 <= last < 199
    assert sorted(manager.lines) == [s for s in range(200) if not first < s <= last]
    assert [r.last_seq for r in manager.results] == [199]
    assert spool_files(root) == []


async def test_a_result_refused_as_data_is_sent_again_without_its_outputs(
    manager: FakeManager, api: ManagerApi, tmp_path: Path
) -> None:
    manager.refuse = b"BAD"
    outbox = outbox_for(api, tmp_path / "spool")
    refused = TaskResult(
        attempt=1, status="succeeded", exit_code=0, outputs={"K": "BAD", "OK": "1"}, last_seq=0
    )
    async with outbox.shipper(TASK, 1, on_cancel=lambda: None) as shipper:
        await shipper.put(line(0))
        delivery = await shipper.finish(refused)

    assert delivery.state == "delivered"
    [got] = manager.results
    assert (got.status, got.exit_code, got.outputs, got.last_seq) == ("succeeded", 0, {}, 0)
    assert got.error is not None
    assert "the manager refused this task's result (422 bad_data" in got.error

"""The transport's decisions that need no manager: what a reply's status means, and which
requests never go on the stream. Its HTTPS side is the delegate's real client pointed at a
loopback port nothing listens on, so a request that went over HTTPS shows as Unreachable
(and counted), one that did not as the reply's own meaning.

With a real manager: tests/e2e/test_stream_transport.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest

from delegate.link.api import ManagerApi, Rejected, Unreachable
from delegate.link.requests import StreamRequests
from shared.limits import MAX_FRAME_BYTES, stream_requests_full
from shared.protocol import (
    PROTOCOL_VERSION,
    ErrorDetail,
    RegisterRequest,
    ResultAck,
    StreamReply,
    StreamResult,
    TaskResult,
    TaskType,
)
from shared.tls import client_context


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def api() -> AsyncIterator[ManagerApi]:
    registration = RegisterRequest(
        name="unit",
        hostname="test",
        version="test",
        protocol_version=PROTOCOL_VERSION,
        capacity=1,
        task_types=[TaskType.SHELL],
        public_key="A" * 43 + "=",
    )
    async with ManagerApi(
        f"https://127.0.0.1:{_closed_port()}",
        token="tdt_unit",
        registration=registration,
        ssl_context=client_context(None),
        request_timeout=5.0,
    ) as client:
        client.credential = "unused"  # a session, so the HTTPS side does not register first
        yield client


def _answering(transport: StreamRequests, reply: dict[str, object]) -> list[str]:
    """Attach a stream on which every request is answered with ``reply`` (its id set)."""
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)
        id_ = json.loads(text)["id"]
        loop = asyncio.get_running_loop()
        loop.call_soon(transport.on_reply, StreamReply.model_validate({**reply, "id": id_}))

    transport.attach(send)
    return sent


RESULT = TaskResult(attempt=1, status="succeeded", exit_code=0)


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_a_busy_or_failing_manager_s_reply_is_unreachable_and_not_resent_over_https(
    api: ManagerApi, status: int
) -> None:
    transport = StreamRequests(api, timeout=30)
    error = ErrorDetail(code="unavailable", message="try again")
    _answering(transport, {"status": status, "error": error.model_dump()})
    with pytest.raises(Unreachable, match=f"manager answered {status}: try again"):
        await transport.post_result("tsk_1", RESULT)
    assert transport.counts == {"stream": 1, "https": 0}


async def test_a_refusal_of_the_task_is_rejected_with_the_manager_s_code(api: ManagerApi) -> None:
    transport = StreamRequests(api, timeout=30)
    error = ErrorDetail(code="stale_attempt", message="this attempt no longer holds the task")
    _answering(transport, {"status": 409, "error": error.model_dump()})
    with pytest.raises(Rejected) as exc:
        await transport.post_result("tsk_1", RESULT)
    assert (exc.value.status, exc.value.code) == (409, "stale_attempt")
    assert transport.counts == {"stream": 1, "https": 0}


@pytest.mark.parametrize(
    ("status", "code"), [(401, "invalid_credential"), (401, "token_revoked"), (426, "x")]
)
async def test_a_refusal_of_the_credential_is_asked_again_over_https(
    api: ManagerApi, status: int, code: str
) -> None:
    # The HTTPS client owns the credential: it registers again, or stops the delegate.
    transport = StreamRequests(api, timeout=30)
    _answering(transport, {"status": status, "error": {"code": code, "message": "no"}})
    with pytest.raises(Unreachable):
        await transport.post_result("tsk_1", RESULT)
    assert transport.counts == {"stream": 1, "https": 1}


async def test_a_reply_with_neither_an_answer_nor_an_error_is_unreachable(
    api: ManagerApi,
) -> None:
    transport = StreamRequests(api, timeout=30)
    _answering(transport, {})
    with pytest.raises(Unreachable, match="unexpected reply"):
        await transport.post_result("tsk_1", RESULT)


# The HTTPS client sends its body from memory: aiohttp warns past 1 MiB (the shipper's
# batches stay under 512 KiB; only a result this large meets it).
@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
async def test_a_request_too_big_for_a_frame_goes_over_https(api: ManagerApi) -> None:
    transport = StreamRequests(api, timeout=30)
    sent = _answering(transport, {"result": {"state": "succeeded", "recorded": True}})
    big = RESULT.model_copy(update={"outputs": {"out": "x" * MAX_FRAME_BYTES}})
    with pytest.raises(Unreachable):
        await transport.post_result("tsk_1", big)
    assert sent == []
    assert transport.counts == {"stream": 0, "https": 1}
    # A result of ordinary size goes on the stream.
    assert (await transport.post_result("tsk_1", RESULT)).recorded


async def test_without_a_stream_requests_go_over_https(api: ManagerApi) -> None:
    transport = StreamRequests(api, timeout=30)
    sent = _answering(transport, {"result": {"state": "succeeded", "recorded": True}})
    transport.detach()
    with pytest.raises(Unreachable):
        await transport.post_result("tsk_1", RESULT)
    assert sent == []
    assert transport.counts == {"stream": 0, "https": 1}


def _unanswered(transport: StreamRequests) -> tuple[list[str], asyncio.Queue[str]]:
    """Attach a stream that takes every request and answers none (they stay in flight)."""
    sent: list[str] = []
    arrived: asyncio.Queue[str] = asyncio.Queue()

    async def send(text: str) -> None:
        sent.append(text)
        arrived.put_nowait(text)

    transport.attach(send)
    return sent, arrived


def _frame_chars(task_id: str, result: TaskResult) -> int:
    return len(StreamResult(id=0, task_id=task_id, result=result).model_dump_json())


def _reply(transport: StreamRequests, text: str) -> None:
    answer = {"state": "succeeded", "recorded": True}
    transport.on_reply(StreamReply.model_validate({"id": json.loads(text)["id"], "result": answer}))


async def test_requests_past_the_characters_in_flight_go_over_https(api: ManagerApi) -> None:
    """The manager stops reading a stream whose requests in flight hold more characters than
    its bound: past it the delegate takes HTTPS, and each request's characters count until
    its reply comes (or its send fails, or the stream ends)."""
    big = RESULT.model_copy(update={"outputs": {"out": "x" * 300}})
    # Room for one large and one small request, not for two large ones.
    budget = _frame_chars("tsk_1", big) + _frame_chars("tsk_3", RESULT)
    transport = StreamRequests(api, timeout=30, budget=budget)
    sent, arrived = _unanswered(transport)

    async def on_stream(task_id: str, result: TaskResult) -> asyncio.Task[ResultAck]:
        task = asyncio.create_task(transport.post_result(task_id, result))
        async with asyncio.timeout(10):
            await arrived.get()
        return task

    first = await on_stream("tsk_1", big)
    # One more of the same size would pass the bound: over HTTPS (nothing listens there).
    with pytest.raises(Unreachable):
        await transport.post_result("tsk_2", big)
    assert len(sent) == 1
    # A small one still fits beside the first.
    small = await on_stream("tsk_3", RESULT)
    # The large one's reply gives its characters back: beside the small one still in
    # flight, another large one fits again.
    _reply(transport, sent[0])
    assert (await first).recorded
    again = await on_stream("tsk_4", big)
    assert transport.in_flight == 2
    _reply(transport, sent[1])
    _reply(transport, sent[2])
    assert (await small).recorded
    assert (await again).recorded
    assert transport.counts == {"stream": 3, "https": 1}

    # A request whose send fails gives its characters back too (the stream stays attached).
    fail_next = True

    async def fails_once(text: str) -> None:
        nonlocal fail_next
        if fail_next:
            fail_next = False
            raise ConnectionResetError
        sent.append(text)
        arrived.put_nowait(text)

    sent.clear()
    transport.attach(fails_once)
    with pytest.raises(Unreachable):
        await transport.post_result("tsk_5", big)
    held = await on_stream("tsk_6", big)
    small = await on_stream("tsk_7", RESULT)
    # The stream ends: what waits goes over HTTPS, and the tally starts again from nothing.
    transport.detach()
    for waiting in (held, small):
        with pytest.raises(Unreachable):
            await waiting
    assert transport.in_flight == 0
    assert transport.counts == {"stream": 3, "https": 4}


@pytest.mark.parametrize(
    ("in_flight", "chars", "frame", "full"),
    [
        (0, 0, 10_000, False),  # alone, a frame always has room
        (1, 500, 100, False),
        (1, 500, 101, True),  # past the characters
        (3, 0, 1, True),  # at the count
    ],
)
def test_the_rule_both_ends_judge_by(in_flight: int, chars: int, frame: int, full: bool) -> None:
    assert stream_requests_full(in_flight, chars, frame, limit=3, budget=600) is full

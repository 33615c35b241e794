"""Log batches and results over a delegate's stream, against a real manager over TLS.

A raw client (stream_client.py) sends the frames by hand and compares each answer with what
the HTTPS route answers for the same request: recorded the same way, refused with the same
status and code. The in-flight bound is shown with the store held by a lock of the test's
own, so requests stay in flight as long as the test needs, whatever the machine's speed.
Production timings (time scale 1): no lease can run out while a test waits.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from shared.limits import MAX_LOG_BATCH_BYTES, MAX_STREAM_REQUEST_CHARS, MAX_STREAM_REQUESTS
from tests.e2e.harness import Cluster
from tests.e2e.stream_client import (
    RawDelegate,
    logs_frame,
    manager,
    metrics_text,
    result_body,
    result_frame,
    store_locked,
    submit,
)
from tests.faults.support import client, log_entries

Json = dict[str, Any]
__all__ = ["manager"]  # the fixture: a manager on each store


def _counted(metrics: str, kind: str, status: int) -> float:
    found = re.search(
        rf'^tether_stream_requests_total\{{kind="{kind}",status="{status}"\}} (\S+)$',
        metrics,
        re.M,
    )
    return float(found[1]) if found else 0.0


async def test_logs_and_a_result_over_the_stream_are_recorded_once_whichever_way_they_come(
    manager: Cluster,
) -> None:
    async with RawDelegate(manager, "rpc") as d:
        await d.open_stream()
        task_id = await submit(manager, "rpc")
        attempt = await d.acquire(task_id)

        reply = await d.request(logs_frame(1, task_id, attempt, ["one", "two"]))
        assert reply == {"type": "reply", "id": 1, "logs": {"accepted": 2, "cancel": False}}
        # The same lines again, over HTTPS: the same (task, attempt, seq), nothing added.
        batch = logs_frame(0, task_id, attempt, ["one", "two"])["batch"]
        assert await d.https("logs", task_id, batch) == (200, {"accepted": 0, "cancel": False})

        reply = await d.request(result_frame(2, task_id, attempt))
        assert reply == {
            "type": "reply",
            "id": 2,
            "result": {"state": "succeeded", "recorded": True},
        }
        # Resent over HTTPS (the fallback after a lost reply), then over the stream again:
        # the task's state, never a second recording.
        status, body = await d.https("result", task_id, result_body(attempt))
        assert (status, body) == (200, {"state": "succeeded", "recorded": False})
        reply = await d.request(result_frame(3, task_id, attempt))
        assert reply["result"] == {"state": "succeeded", "recorded": False}

    async with client(manager) as api:
        view = await api.get_task(task_id)
    assert (view.state.value, view.exit_code, len(view.attempts)) == ("succeeded", 0, 1)
    assert [e["text"] for e in await log_entries(manager, task_id)] == ["one", "two"]
    metrics = await metrics_text(manager)
    assert _counted(metrics, "logs", 200) == 1
    assert _counted(metrics, "result", 200) == 2
    assert re.search(r'^tether_tasks_finished_total\{state="succeeded"\} 1\.0$', metrics, re.M)


async def test_a_refusal_over_the_stream_is_the_https_route_s_and_stores_nothing(
    manager: Cluster,
) -> None:
    async with RawDelegate(manager, "owner") as owner, RawDelegate(manager, "other") as other:
        await owner.open_stream()
        await other.open_stream()
        task_id = await submit(manager, "owner")
        attempt = await owner.acquire(task_id)
        # Lines of about 11 KiB, past the batch limit in all (and well within a frame).
        big = ["x" * 11_000] * (MAX_LOG_BATCH_BYTES // 11_000 + 1)
        cases: list[tuple[str, RawDelegate, str, Callable[[int], Json], int, str]] = [
            (
                "logs of a later attempt",
                owner,
                "logs",
                lambda i: logs_frame(i, task_id, attempt + 1, ["stale"]),
                409,
                "stale_attempt",
            ),
            (
                "the result of a later attempt",
                owner,
                "result",
                lambda i: result_frame(i, task_id, attempt + 1),
                409,
                "stale_attempt",
            ),
            (
                "logs of a task that does not exist",
                owner,
                "logs",
                lambda i: logs_frame(i, "tsk_nosuchtask", 1, ["nothing"]),
                404,
                "not_found",
            ),
            (
                "the result of a task that does not exist",
                owner,
                "result",
                lambda i: result_frame(i, "tsk_nosuchtask", 1),
                404,
                "not_found",
            ),
            # "other" may not run it (it asks for the selector "owner"): told, as for a task
            # that does not exist, nothing of it (not even that the id is a task's).
            (
                "logs of another delegate's task",
                other,
                "logs",
                lambda i: logs_frame(i, task_id, attempt, ["forged"]),
                404,
                "not_found",
            ),
            (
                "the result of another delegate's task",
                other,
                "result",
                lambda i: result_frame(i, task_id, attempt, status="failed"),
                404,
                "not_found",
            ),
            (
                "a log batch over the size limit",
                owner,
                "logs",
                lambda i: logs_frame(i, task_id, attempt, big),
                413,
                "too_large",
            ),
        ]
        for id_, (what, sender, kind, frame, status, code) in enumerate(cases, start=10):
            sent = frame(id_)
            reply = await sender.request(sent)
            body = sent["result"] if kind == "result" else sent["batch"]
            over_https = await sender.https(kind, sent["task_id"], body)
            assert (reply["status"], reply["error"]["code"]) == (
                over_https[0],
                over_https[1]["error"]["code"],
            ), what
            assert (reply["status"], reply["error"]["code"]) == (status, code), what
            assert reply["error"]["message"] == over_https[1]["error"]["message"], what
            assert set(reply) == {"type", "id", "status", "error"}, what

        # Nothing of the refused requests was stored, and the holder still reports.
        assert await log_entries(manager, task_id) == []
        reply = await owner.request(result_frame(99, task_id, attempt))
        assert reply["result"] == {"state": "succeeded", "recorded": True}
    metrics = await metrics_text(manager)
    # Over the stream, each counted as its HTTPS twin: a stale attempt, the other's logs
    # and a task that does not exist, the batch too large.
    assert _counted(metrics, "logs", 409) == 1
    assert _counted(metrics, "logs", 404) == 2
    assert _counted(metrics, "logs", 413) == 1


async def _paused_then_answered(
    manager: Cluster, name: str, batches: list[list[str]], **paused: Any
) -> list[dict[str, Any]]:
    """Send ``batches`` (one log frame each) with the store held, then a heartbeat: the
    manager pauses the stream (its warning carries ``paused``), answers nothing and acks no
    heartbeat until the store is free, then answers every frame and the heartbeat. Returns
    the task's log entries."""
    assert manager.manager is not None
    async with RawDelegate(manager, name) as d:
        await d.open_stream()
        task_id = await submit(manager, name)
        attempt = await d.acquire(task_id)
        replies = [d.expect(i) for i in range(len(batches))]
        async with store_locked(manager, task_id):
            seq = 0
            for i, texts in enumerate(batches):
                await d.send(logs_frame(i, task_id, attempt, texts, first=seq))
                seq += len(texts)
            # Behind the request past the bound: a heartbeat, not read until a slot frees.
            await d.send({"type": "heartbeat", "seq": 1000, "running": [task_id], "free_slots": 1})
            await manager.manager.wait_event(
                "stream paused: requests in flight at the bound", **paused
            )
            # Nothing can have committed yet, and the heartbeat waits unread.
            assert not [f for f in d.frames if f["type"] == "reply"]
            assert not [f for f in d.frames if f.get("seq") == 1000]
        answered = await asyncio.gather(*replies)
        assert [r["logs"]["accepted"] for r in answered] == [len(b) for b in batches]
        await d.wait_frame(lambda f: f["type"] == "heartbeat_ack" and f["seq"] == 1000)
    return await log_entries(manager, task_id)


async def test_a_stream_at_its_in_flight_bound_is_read_no_further_until_a_request_ends(
    manager: Cluster,
) -> None:
    batches = [[f"line {i}"] for i in range(MAX_STREAM_REQUESTS + 1)]
    entries = await _paused_then_answered(manager, "flood", batches, limit=MAX_STREAM_REQUESTS)
    assert [e["text"] for e in entries] == [b[0] for b in batches]


async def test_a_stream_whose_requests_in_flight_hold_its_characters_bound_is_read_no_further(
    manager: Cluster,
) -> None:
    """A few large log batches fill a stream long before its count does: the memory one
    stream holds at the manager is bounded by the characters of its frames in flight."""
    line = "x" * 16_000
    per_frame = MAX_LOG_BATCH_BYTES // len(line) - 2  # under the batch's bytes
    # Each frame is its lines' text and some 3,500 characters of JSON around them: the same
    # count of frames fits whether that JSON is counted or ten thousand more.
    text = per_frame * len(line)
    fit = MAX_STREAM_REQUEST_CHARS // (text + 10_000)
    assert MAX_STREAM_REQUEST_CHARS // text == fit
    batches = [[line] * per_frame for _ in range(fit + 1)]
    entries = await _paused_then_answered(manager, "wide", batches, in_flight=fit)
    assert len(entries) == (fit + 1) * per_frame

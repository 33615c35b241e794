"""The verify task on the delegate, through the executor: the credentials are rendered from
the secrets and masked, the verdict becomes the task's outcome and outputs, and the task
respects its cancel and timeout while it waits for the window to end."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from shared.protocol import VerifyPayload, VerifyWindow
from shared.task_secrets import credential_expression, referenced_secrets, render_payload
from shared.verify.spec import VerifySpec
from tests.delegate.run.test_executor import MASKED, SECRET, run


def _payload(url: str, *, ends_in: float = -1.0, **spec: Any) -> VerifyPayload:
    now = time.time()
    doc = {
        "provider": {"url": url, "auth": {"bearer_token_secret": "prom-token"}},
        "queries": [
            {"name": "errors", "query": "sum(x)", "bad": "up", "threshold": {"absolute": 5}}
        ],
        "window": {"analysis": 30},
        **spec,
    }
    return VerifyPayload(
        spec=VerifySpec.model_validate(doc),
        window=VerifyWindow(
            baseline_start=now - 100,
            baseline_end=now - 70,
            analysis_start=now - 30 + ends_in,
            analysis_end=now + ends_in,
        ),
        credentials={"bearer_token": SECRET},  # as rendered from the secret
    )


@pytest.fixture
async def prom() -> AsyncIterator[dict[str, Any]]:
    """A stand-in Prometheus: answers ``state["values"]``, or echoes the credential back in
    an error when ``state["leak"]`` (as a misconfigured proxy might)."""
    state: dict[str, Any] = {"values": ["1", "2", "1", "2"], "leak": False, "calls": 0}

    async def handler(request: web.Request) -> web.Response:
        state["calls"] += 1
        if state["leak"]:
            body = {
                "status": "error",
                "errorType": "auth",
                "error": request.headers["Authorization"],
            }
            return web.json_response(body, status=401)
        values = [[i, v] for i, v in enumerate(state["values"])]
        result = [{"metric": {}, "values": values}]
        return web.json_response(
            {"status": "success", "data": {"resultType": "matrix", "result": result}}
        )

    app = web.Application()
    app.router.add_post("/api/v1/query_range", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


def test_credentials_are_secret_references_rendered_on_the_delegate() -> None:
    payload = _payload("http://prom:9090").model_copy(
        update={"credentials": {"bearer_token": credential_expression("prom-token")}}
    )
    assert referenced_secrets(payload) == {"prom-token"}
    rendered = render_payload(payload, {"prom-token": b"tok-value"}.__getitem__)
    assert rendered.credentials == {"bearer_token": "tok-value"}


async def test_a_passed_verdict_succeeds_with_the_report_in_the_outputs(
    prom: dict[str, Any], tmp_path: Path
) -> None:
    r = await run(_payload(prom["url"]), tmp_path)
    assert r.result.status == "succeeded", r.result.error
    assert r.result.outputs["verdict"] == "passed"
    report = json.loads(r.result.outputs["report"])
    assert report["queries"][0]["after"] == 1.5
    (line,) = r.texts("stdout")
    assert line.startswith("PASSED: errors median 1.5 after vs 1.5 before, limit 5 [before ")


async def test_a_failed_verdict_fails_the_task_naming_the_reason(
    prom: dict[str, Any], tmp_path: Path
) -> None:
    prom["values"] = ["9", "8", "9"]
    r = await run(_payload(prom["url"]), tmp_path)
    assert r.result.status == "failed"
    assert r.result.error == "verification failed: errors median 9 after vs 9 before, limit 5"


async def test_a_credential_in_a_provider_error_is_masked(
    prom: dict[str, Any], tmp_path: Path
) -> None:
    prom["leak"] = True
    r = await run(_payload(prom["url"]), tmp_path)
    assert r.result.status == "failed"
    everything = json.dumps(r.result.outputs) + (r.result.error or "") + "".join(r.texts())
    assert SECRET not in everything
    assert MASKED in (r.result.error or "")
    assert r.result.outputs["verdict"] == "inconclusive"


async def test_inconclusive_passes_with_a_warning_when_the_spec_says_so(
    prom: dict[str, Any], tmp_path: Path
) -> None:
    prom["values"] = []
    r = await run(_payload(prom["url"], on_inconclusive="pass_with_warning"), tmp_path)
    assert r.result.status == "succeeded"
    assert r.result.outputs["verdict"] == "inconclusive"
    assert any(t.startswith("warning: verification inconclusive") for t in r.texts("system"))


async def test_waiting_for_the_window_stops_on_cancel_and_on_timeout(
    prom: dict[str, Any], tmp_path: Path
) -> None:
    cancel = asyncio.Event()
    waiting = asyncio.Event()

    def on_line(line: Any) -> None:
        if line.text.startswith("waiting "):
            waiting.set()

    later = _payload(prom["url"], ends_in=3600)
    task = asyncio.create_task(run(later, tmp_path, cancel=cancel, on_line=on_line))
    await waiting.wait()
    cancel.set()
    cancelled = await task
    assert (cancelled.result.status, prom["calls"]) == ("cancelled", 0)
    timed = await run(later, tmp_path, timeout_s=0.2)
    assert timed.result.status == "timed_out"
    assert prom["calls"] == 0

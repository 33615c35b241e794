"""The Prometheus provider against an HTTP server in the test: what it sends, what it makes
of each answer, and how every failure is named."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from delegate.verify.provider import (
    MAX_POINTS,
    PrometheusProvider,
    ProviderError,
    QueryError,
    choose_step,
    parse_matrix,
)
from shared.verify.spec import ProviderSpec

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _matrix(*series: list[tuple[float, str]]) -> dict[str, object]:
    return {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [{"metric": {}, "values": [[t, v] for t, v in s]} for s in series],
        },
    }


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for r in runners:
        await r.cleanup()


async def test_sends_the_range_and_credentials_and_reads_the_series(serve) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, str] = {}

    async def handler(request: web.Request) -> web.Response:
        form = await request.post()
        seen.update({k: str(v) for k, v in form.items()})
        seen["path"] = request.path
        seen["auth"] = request.headers.get("Authorization", "")
        return web.json_response(_matrix([(100, "1.5"), (101, "NaN"), (102, "+Inf")]))

    url = await serve(handler)
    spec = ProviderSpec(url=f"{url}/prom/", auth={"bearer_token_secret": "prom-token"})
    provider = PrometheusProvider(spec, {"bearer_token": "s3cret-token\n"})
    try:
        points = await provider.range("sum(rate(x[1m]))", 100, 110, 2)
    finally:
        await provider.aclose()
    assert seen["path"] == "/prom/api/v1/query_range"
    assert (seen["query"], seen["start"], seen["end"], seen["step"]) == (
        "sum(rate(x[1m]))",
        "100.000",
        "110.000",
        "2",
    )
    assert seen["auth"] == "Bearer s3cret-token"
    assert points[0] == (100.0, 1.5)
    assert len(points) == 3  # NaN and +Inf are kept here; the statistics drop them


async def test_basic_auth_is_sent(serve) -> None:  # type: ignore[no-untyped-def]
    got: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        got.append(request.headers.get("Authorization", ""))
        return web.json_response(_matrix())

    url = await serve(handler)
    spec = ProviderSpec(
        url=url, auth={"basic_username": "reader", "basic_password_secret": "prom-pass"}
    )
    provider = PrometheusProvider(spec, {"basic_password": "pw"})
    try:
        assert await provider.range("up", 0, 10, 1) == []
    finally:
        await provider.aclose()
    assert got == ["Basic cmVhZGVyOnB3"]


async def test_http_error_names_the_provider_status_and_prometheus_reason(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        body = {"status": "error", "errorType": "bad_data", "error": "parse error at char 4"}
        return web.json_response(body, status=400)

    url = await serve(handler)
    provider = PrometheusProvider(ProviderSpec(url=url), {})
    with pytest.raises(ProviderError) as caught:
        await provider.range("up{", 0, 10, 1)
    await provider.aclose()
    assert str(caught.value) == (f"prometheus at {url}: HTTP 400 (bad_data: parse error at char 4)")


async def test_connection_refused_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    provider = PrometheusProvider(ProviderSpec(url=f"http://127.0.0.1:{port}"), {})
    with pytest.raises(ProviderError) as caught:
        await provider.range("up", 0, 10, 1)
    await provider.aclose()
    assert str(caught.value) == f"prometheus at http://127.0.0.1:{port}: connection refused"


async def test_a_provider_that_does_not_answer_times_out_by_name(serve) -> None:  # type: ignore[no-untyped-def]
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response(_matrix())

    url = await serve(handler)
    provider = PrometheusProvider(ProviderSpec(url=url, query_timeout_s=0.2), {})
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.range("up", 0, 10, 1)
    finally:
        release.set()
        await provider.aclose()
    assert str(caught.value) == f"prometheus at {url}: no answer within 0.2 s"


async def test_user_info_in_the_url_never_shows(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down")

    url = await serve(handler)
    with_user = url.replace("http://", "http://admin:hunter2@")
    provider = PrometheusProvider(ProviderSpec(url=with_user), {})
    with pytest.raises(ProviderError) as caught:
        await provider.range("up", 0, 10, 1)
    await provider.aclose()
    assert "hunter2" not in str(caught.value)
    assert str(caught.value) == f"prometheus at {url}: HTTP 503"


async def test_too_many_points_are_never_asked_for() -> None:
    provider = PrometheusProvider(ProviderSpec(url="http://127.0.0.1:9"), {})
    with pytest.raises(ValueError, match="more than 1000 points"):
        await provider.range("up", 0, MAX_POINTS * 10, 1)
    await provider.aclose()


@pytest.mark.parametrize(
    ("duration", "wanted", "step"),
    [
        (600, None, 6.0),  # about 100 points by default
        (600, 15, 15.0),  # the spec's own step
        (20, None, 1.0),  # never under a second
        (7 * 86400, 1, 606.0),  # capped at 1000 points, whatever is asked
    ],
)
def test_step_is_bounded(duration: float, wanted: float | None, step: float) -> None:
    assert choose_step(duration, wanted) == step
    assert duration / choose_step(duration, wanted) + 1 <= MAX_POINTS


def test_several_series_ask_for_an_aggregation() -> None:
    body = json.dumps(_matrix([(1, "1")], [(1, "2")])).encode()
    with pytest.raises(QueryError, match="returned 2 series; aggregate"):
        parse_matrix(body)


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"status": "success", "data": {"resultType": "vector", "result": []}}'],
)
async def test_an_answer_that_is_not_a_range_is_a_provider_error(serve, body: bytes) -> None:  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    url = await serve(handler)
    provider = PrometheusProvider(ProviderSpec(url=url), {})
    with pytest.raises(ProviderError, match=f"prometheus at {url}: unreadable answer"):
        await provider.range("up", 0, 10, 1)
    await provider.aclose()

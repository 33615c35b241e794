"""Redirects of http tasks: the policy (pure), then two real servers on loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from yarl import URL

from delegate.run.redirects import MAX_REDIRECTS, Hop, Stop, next_hop
from shared.protocol import HttpPayload
from tests.delegate.run.test_executor import SECRET, run

A = URL("https://a.example:8443/start")
HEADERS = {
    "Authorization": "Bearer t0ken-abcdef",
    "Cookie": "sid=abcdef123",
    "Proxy-Authorization": "Basic eHh4eHh4",
    "X-Api-Key": f"key={SECRET}",
    "Accept": "text/plain",
}


def never(_value: str) -> bool:
    return False


def knows_secret(value: str) -> bool:
    return SECRET in value


def hop(method: str = "GET", body: bytes | None = None) -> Hop:
    return Hop(method, A, HEADERS, body)


# --- the policy -------------------------------------------------------------------------


def test_a_non_redirect_or_a_redirect_without_location_is_the_answer() -> None:
    assert next_hop("any", A, hop(), 200, None, never) is None
    assert next_hop("any", A, hop(), 302, None, never) is None


def test_policy_none_answers_with_the_redirect() -> None:
    assert next_hop("none", A, hop(), 302, "/next", never) is None


def test_same_origin_follows_a_relative_location_with_every_header() -> None:
    step = next_hop("same_origin", A, hop(), 307, "/next?x=1", knows_secret)
    assert isinstance(step, Hop)
    assert step.url == URL("https://a.example:8443/next?x=1")
    assert dict(step.headers) == HEADERS


@pytest.mark.parametrize(
    "location",
    [
        "https://b.example:8443/x",  # another host
        "https://a.example:9443/x",  # another port
        "http://a.example:8443/x",  # another scheme
    ],
)
def test_same_origin_does_not_follow_to_another_origin(location: str) -> None:
    step = next_hop("same_origin", A, hop(), 302, location, never)
    assert isinstance(step, Stop)
    assert "another origin" in step.reason
    assert "/x" not in step.reason  # the origin only: a path may carry a token


def test_the_default_port_is_the_same_origin_as_the_explicit_one() -> None:
    first = URL("https://a.example/start")
    step = next_hop(
        "same_origin", first, Hop("GET", first, {}, None), 302, "https://a.example:443/", never
    )
    assert isinstance(step, Hop)


def test_any_to_another_origin_drops_credential_and_secret_bearing_headers() -> None:
    step = next_hop("any", A, hop(), 302, "https://b.example/x", knows_secret)
    assert isinstance(step, Hop)
    assert dict(step.headers) == {"Accept": "text/plain"}


def test_a_body_holding_a_secret_is_not_re_sent_to_another_origin() -> None:
    body = f'{{"token": "{SECRET}"}}'.encode()
    step = next_hop("any", A, hop("PUT", body), 307, "https://b.example/x", knows_secret)
    assert isinstance(step, Stop)
    same = next_hop("any", A, hop("PUT", body), 307, "/x", knows_secret)
    assert isinstance(same, Hop)
    assert same.body == body
    assert same.method == "PUT"


def test_303_and_a_redirected_post_become_a_get_without_body() -> None:
    for status in (303, 302, 301):
        step = next_hop("same_origin", A, hop("POST", b"data"), status, "/x", never)
        assert isinstance(step, Hop)
        assert (step.method, step.body) == ("GET", None)
    kept = next_hop("same_origin", A, hop("POST", b"data"), 308, "/x", never)
    assert isinstance(kept, Hop)
    assert (kept.method, kept.body) == ("POST", b"data")


def test_a_non_http_location_is_not_followed() -> None:
    assert isinstance(next_hop("any", A, hop(), 302, "file:///etc/passwd", never), Stop)


# --- two real servers -------------------------------------------------------------------


@dataclass
class Site:
    url: str
    seen: list[dict[str, str]] = field(default_factory=list)


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def sites() -> AsyncIterator[tuple[Site, Site]]:
    """``a`` redirects to itself and to ``b`` (another port: another origin); both record
    the headers they were sent."""
    a = Site("")
    b = Site("")

    async def landing(site: Site, request: web.Request) -> web.Response:
        site.seen.append(dict(request.headers))
        return web.Response(text=f"landed {request.method}")

    async def a_handler(request: web.Request) -> web.StreamResponse:
        a.seen.append(dict(request.headers))
        where = request.match_info["where"]
        if where == "local":
            raise web.HTTPFound("/land")
        if where == "loop":
            raise web.HTTPFound("/to/loop")
        raise web.HTTPTemporaryRedirect(f"{b.url}/land")

    async def a_landing(request: web.Request) -> web.Response:
        return await landing(a, request)

    async def b_landing(request: web.Request) -> web.Response:
        return await landing(b, request)

    app_a = web.Application()
    app_a.router.add_route("*", "/to/{where}", a_handler)
    app_a.router.add_route("*", "/land", a_landing)
    app_b = web.Application()
    app_b.router.add_route("*", "/land", b_landing)
    runner_a, a.url = await _start(app_a)
    runner_b, b.url = await _start(app_b)
    yield a, b
    await runner_a.cleanup()
    await runner_b.cleanup()


def _payload(url: str, **kwargs: object) -> HttpPayload:
    return HttpPayload.model_validate(
        {
            "url": url,
            "headers": {
                "Authorization": "Bearer t0ken-abcdef",
                "X-Api-Key": SECRET,
                "X-Trace": "plain",
            },
            **kwargs,
        }
    )


async def test_default_does_not_follow_to_another_port_and_sends_it_nothing(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, b = sites
    r = await run(_payload(f"{a.url}/to/other"), tmp_path)
    assert b.seen == []
    assert r.result.status == "failed"
    assert r.result.outputs == {"status_code": "307"}
    assert any("another origin" in t and "not followed" in t for t in r.texts())


async def test_default_follows_within_the_origin_with_its_headers(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, _b = sites
    r = await run(_payload(f"{a.url}/to/local"), tmp_path)
    assert r.result.status == "succeeded"
    assert r.texts("stdout")[-1] == "landed GET"
    assert a.seen[-1]["X-Api-Key"] == SECRET
    assert a.seen[-1]["Authorization"] == "Bearer t0ken-abcdef"


async def test_any_follows_to_another_origin_without_credentials(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, b = sites
    r = await run(_payload(f"{a.url}/to/other", follow_redirects="any"), tmp_path)
    assert r.result.status == "succeeded"
    assert len(b.seen) == 1
    sent = {k.lower(): v for k, v in b.seen[0].items()}
    assert "authorization" not in sent
    assert "x-api-key" not in sent
    assert sent["x-trace"] == "plain"
    assert SECRET not in repr(b.seen)


async def test_none_answers_with_the_redirect(sites: tuple[Site, Site], tmp_path: Path) -> None:
    a, _b = sites
    r = await run(_payload(f"{a.url}/to/local", follow_redirects="none"), tmp_path)
    assert r.result.outputs == {"status_code": "302"}
    assert len(a.seen) == 1


async def test_a_redirect_loop_ends_with_a_clear_error(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, _b = sites
    r = await run(_payload(f"{a.url}/to/loop"), tmp_path)
    assert r.result.status == "failed"
    assert r.result.error == f"more than {MAX_REDIRECTS} redirects"
    assert len(a.seen) == MAX_REDIRECTS + 1


def test_the_payload_defaults_to_same_origin_and_refuses_other_values() -> None:
    assert HttpPayload(url="http://x").follow_redirects == "same_origin"
    with pytest.raises(ValueError, match="follow_redirects"):
        HttpPayload.model_validate({"url": "http://x", "follow_redirects": "always"})

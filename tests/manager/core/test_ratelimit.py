"""Per-key rate limits: the token bucket under a clock moved by hand, then through the app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from manager.access.tokens import ADMIN_BURST, ADMIN_MAX_QPS, create_api_key, create_token
from manager.core.ratelimit import RateLimiter, TokenBucket, retry_after_header, throttled_message
from manager.schemas.grants import ADMIN_GROUP
from manager.server.app import ManagerConfig, _ensure_admin_key, build_app, open_store
from manager.store.base import Store
from tests.manager.access_support import Clock, Manager, manager
from tests.manager.api.test_api import registration

# -- the bucket ------------------------------------------------------------------------------


def test_a_full_bucket_lets_a_burst_through_then_refuses() -> None:
    bucket = TokenBucket.full(rate=1.0, burst=10, now=0.0)
    assert [bucket.take(0.0) for _ in range(10)] == [0.0] * 10
    assert bucket.take(0.0) == pytest.approx(1.0)


def test_tokens_come_back_at_the_rate() -> None:
    bucket = TokenBucket.full(rate=2.0, burst=1, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.25) == pytest.approx(0.25)  # half a token back; half to go at 2/s
    assert bucket.take(0.5) == 0.0


def test_a_refused_request_takes_no_token() -> None:
    bucket = TokenBucket.full(rate=1.0, burst=1, now=0.0)
    bucket.take(0.0)
    for _ in range(5):
        assert bucket.take(0.0) > 0
    assert bucket.take(1.0) == 0.0


def test_a_long_pause_refills_no_more_than_the_burst() -> None:
    bucket = TokenBucket.full(rate=1.0, burst=3, now=0.0)
    for _ in range(3):
        bucket.take(0.0)
    assert [bucket.take(1000.0) for _ in range(3)] == [0.0] * 3
    assert bucket.take(1000.0) > 0


def test_a_clock_stepping_back_refills_nothing_and_breaks_nothing() -> None:
    bucket = TokenBucket.full(rate=1.0, burst=1, now=100.0)
    bucket.take(100.0)
    assert bucket.take(50.0) == pytest.approx(1.0)
    assert bucket.take(101.0) == 0.0


def test_a_bucket_needs_a_positive_rate_and_a_burst_of_one() -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket.full(rate=0.0, burst=1, now=0.0)
    with pytest.raises(ValueError, match="burst >= 1"):
        TokenBucket.full(rate=1.0, burst=0, now=0.0)


def test_the_limiter_keeps_one_bucket_per_key() -> None:
    limiter = RateLimiter()
    assert limiter.check("a", 1.0, 1, 0.0) == 0.0
    assert limiter.check("a", 1.0, 1, 0.0) > 0
    assert limiter.check("b", 1.0, 1, 0.0) == 0.0


def test_a_changed_limit_starts_a_full_bucket() -> None:
    limiter = RateLimiter()
    limiter.check("a", 1.0, 1, 0.0)
    assert limiter.check("a", 1.0, 1, 0.0) > 0
    assert limiter.check("a", 5.0, 2, 0.0) == 0.0


def test_full_buckets_are_pruned_when_there_are_many() -> None:
    limiter = RateLimiter(prune_above=3)
    for key in "abc":
        limiter.check(key, 1.0, 1, 0.0)
    limiter.check("d", 1.0, 1, 0.9)  # none has a token back yet: all are kept
    assert len(limiter) == 4
    limiter.check("e", 1.0, 1, 5.0)  # everything refilled: only the new one is left
    assert len(limiter) == 1


def test_forgetting_a_key_drops_its_bucket() -> None:
    limiter = RateLimiter()
    limiter.check("a", 1.0, 1, 0.0)
    limiter.forget("a")
    assert limiter.check("a", 1.0, 1, 0.0) == 0.0


@pytest.mark.parametrize(
    ("qps", "text"), [(1.0, "1.0"), (2.5, "2.5"), (1, "1.0"), (0.1, "0.1"), (10000, "10000.0")]
)
def test_the_message_shows_the_configured_limit(qps: float, text: str) -> None:
    assert throttled_message(qps) == f"Too Many requests. Throttled. Max QPS: {text}"


@pytest.mark.parametrize(("wait", "header"), [(0.0, "1"), (0.01, "1"), (1.0, "1"), (1.2, "2")])
def test_retry_after_is_whole_seconds_and_at_least_one(wait: float, header: str) -> None:
    assert retry_after_header(wait) == header


# -- through the app -------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(tmp_path)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def slow(tmp_path: Path, store: Store) -> AsyncIterator[Manager]:
    """A manager whose own key may send 0.5 requests a second, 2 at once."""
    async with manager(tmp_path, store, Clock(), max_qps=0.5, burst=2) as m:
        yield m


async def test_over_the_limit_is_a_429_with_retry_after_and_the_documented_message(
    slow: Manager,
) -> None:
    for _ in range(2):
        assert (await slow.call("GET", "/api/v1/tasks"))[0] == 200
    resp = await slow.client.get("/api/v1/tasks", headers=slow.auth())
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "2"  # one token at 0.5/s
    body = await resp.json()
    assert body["error"]["code"] == "rate_limited"
    assert body["error"]["message"] == "Too Many requests. Throttled. Max QPS: 0.5"


async def test_after_retry_after_the_key_is_served_again(slow: Manager) -> None:
    for _ in range(2):
        await slow.call("GET", "/api/v1/tasks")
    assert (await slow.call("GET", "/api/v1/tasks"))[0] == 429
    slow.clock.advance(2.0)
    assert (await slow.call("GET", "/api/v1/tasks"))[0] == 200
    assert (await slow.call("GET", "/api/v1/tasks"))[0] == 429


async def test_keys_have_buckets_of_their_own(slow: Manager) -> None:
    for _ in range(3):
        await slow.call("GET", "/api/v1/tasks")
    _, other = await create_api_key(
        slow.store, "other", groups=(ADMIN_GROUP,), max_qps=0.5, burst=2
    )
    assert (await slow.call("GET", "/api/v1/tasks", key=other))[0] == 200


async def test_refusals_are_counted_in_the_metrics(slow: Manager) -> None:
    for _ in range(4):
        await slow.call("GET", "/api/v1/tasks")
    _, admin = await create_api_key(
        slow.store, "scraper", groups=(ADMIN_GROUP,), max_qps=100.0, burst=100
    )
    status, text = await slow.call("GET", "/metrics", key=admin)
    assert status == 200
    assert 'tether_rate_limited_total{route="/api/v1/tasks"} 2.0' in text
    assert 'tether_api_requests_total{method="GET",route="/api/v1/tasks",status="429"} 2.0' in text


async def test_a_new_key_gets_the_account_default_of_1_qps_and_a_burst_of_10(
    slow: Manager,
) -> None:
    _, key = await create_api_key(slow.store, "default", groups=(ADMIN_GROUP,))
    statuses = [(await slow.call("GET", "/api/v1/tasks", key=key))[0] for _ in range(11)]
    assert statuses == [200] * 10 + [429]
    _, body = await slow.call("GET", "/api/v1/tasks", key=key)
    assert body["error"]["message"] == "Too Many requests. Throttled. Max QPS: 1.0"


async def test_delegate_traffic_is_never_limited(slow: Manager) -> None:
    # Exhaust the user key first: the delegate's requests share nothing with it anyway.
    for _ in range(3):
        await slow.call("GET", "/api/v1/tasks")
    _, token = await create_token(slow.store, "t")
    resp = await slow.client.post(
        "/api/v1/delegate/register",
        json=registration(),
        headers={"Authorization": f"Bearer {token}"},
    )
    cred = (await resp.json())["session_token"]
    for seq in range(1, 40):
        resp = await slow.client.post(
            "/api/v1/delegate/heartbeat",
            json={"seq": seq, "free_slots": 1},
            headers={"Authorization": f"Bearer {cred}"},
        )
        assert resp.status == 200, await resp.text()


async def test_health_probes_are_never_limited(slow: Manager) -> None:
    for _ in range(3):
        await slow.call("GET", "/api/v1/tasks")
    for _ in range(20):
        assert (await slow.client.get("/healthz")).status == 200


async def test_the_admin_key_made_at_first_start_has_a_high_limit(
    tmp_path: Path, store: Store
) -> None:
    path = await _ensure_admin_key(store, tmp_path)
    key = path.read_text().strip()
    (record,) = await store.list_api_keys()
    assert (record.name, record.owner, record.service_account) == ("admin", "admin", True)
    assert (record.max_qps, record.burst) == (ADMIN_MAX_QPS, ADMIN_BURST)
    app, _ = await build_app(ManagerConfig(data_dir=tmp_path, clock=Clock()), store)
    async with TestClient(TestServer(app)) as client:
        for _ in range(200):  # what the CLI, the e2e tests and the demo send, and more
            resp = await client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {key}"})
            assert resp.status == 200


async def test_a_second_admin_key_gets_a_dated_name_and_the_first_keeps_working(
    tmp_path: Path, store: Store
) -> None:
    first = (await _ensure_admin_key(store, tmp_path)).read_text().strip()
    (tmp_path / "admin-api-key").unlink()
    await _ensure_admin_key(store, tmp_path)
    names = [k.name for k in await store.list_api_keys()]
    assert names[0] == "admin"
    assert names[1].startswith("admin-")
    app, _ = await build_app(ManagerConfig(data_dir=tmp_path, clock=Clock()), store)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {first}"})
        assert resp.status == 200

from __future__ import annotations

from typing import Any

import pytest

from delegate.secrets.cache import DEFAULT_TTL, SecretCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_put_value_is_returned_by_get(clock: FakeClock) -> None:
    cache = SecretCache(clock=clock)
    cache.put("s1", 1, b"one")
    assert cache.get("s1", 1) == b"one"
    assert cache.get("s1", 2) is None
    assert cache.get("s2", 1) is None


def test_new_version_is_never_served_the_old_value(clock: FakeClock) -> None:
    cache = SecretCache(clock=clock)
    cache.put("s1", 1, b"before the edit")
    # The secret was edited: the manager now says version 2, which is not cached yet.
    assert cache.get("s1", 2) is None
    cache.put("s1", 2, b"after the edit")
    assert cache.get("s1", 2) == b"after the edit"
    assert cache.get("s1", 1) == b"before the edit"


def test_entry_expires_after_the_default_thirty_minutes(clock: FakeClock) -> None:
    assert DEFAULT_TTL == 30 * 60
    cache = SecretCache(clock=clock)
    cache.put("s1", 1, b"v")
    clock.advance(DEFAULT_TTL - 0.001)
    assert cache.get("s1", 1) == b"v"
    clock.advance(0.001)
    assert cache.get("s1", 1) is None
    assert len(cache) == 0
    assert cache.total_bytes == 0


def test_put_again_restarts_the_ttl(clock: FakeClock) -> None:
    cache = SecretCache(ttl=10, clock=clock)
    cache.put("s1", 1, b"v")
    clock.advance(8)
    cache.put("s1", 1, b"v")
    clock.advance(8)
    assert cache.get("s1", 1) == b"v"


def test_get_does_not_extend_the_ttl(clock: FakeClock) -> None:
    cache = SecretCache(ttl=10, clock=clock)
    cache.put("s1", 1, b"v")
    clock.advance(9)
    assert cache.get("s1", 1) == b"v"
    clock.advance(1)
    assert cache.get("s1", 1) is None


def test_no_ttl_keeps_entries_until_evicted(clock: FakeClock) -> None:
    cache = SecretCache(ttl=None, clock=clock)
    cache.put("s1", 1, b"v")
    clock.advance(10**9)
    assert cache.get("s1", 1) == b"v"


def test_least_recently_used_entry_is_evicted_at_max_entries(clock: FakeClock) -> None:
    cache = SecretCache(max_entries=2, clock=clock)
    cache.put("a", 1, b"a")
    cache.put("b", 1, b"b")
    assert cache.get("a", 1) == b"a"
    cache.put("c", 1, b"c")
    assert cache.get("b", 1) is None
    assert cache.get("a", 1) == b"a"
    assert cache.get("c", 1) == b"c"
    assert len(cache) == 2


def test_total_bytes_stay_within_max_bytes(clock: FakeClock) -> None:
    cache = SecretCache(max_bytes=10, clock=clock)
    cache.put("a", 1, b"x" * 4)
    cache.put("b", 1, b"x" * 4)
    cache.put("c", 1, b"x" * 4)
    assert cache.get("a", 1) is None
    assert cache.total_bytes == 8
    assert len(cache) == 2


def test_value_larger_than_max_bytes_is_not_cached(clock: FakeClock) -> None:
    cache = SecretCache(max_bytes=10, clock=clock)
    cache.put("a", 1, b"small")
    cache.put("b", 1, b"x" * 11)
    assert cache.get("b", 1) is None
    assert cache.get("a", 1) == b"small"


def test_replacing_an_entry_counts_its_bytes_once(clock: FakeClock) -> None:
    cache = SecretCache(clock=clock)
    cache.put("a", 1, b"12345")
    cache.put("a", 1, b"123")
    assert cache.total_bytes == 3
    assert len(cache) == 1


def test_invalidate_drops_every_version_of_one_secret(clock: FakeClock) -> None:
    cache = SecretCache(clock=clock)
    cache.put("s1", 1, b"a")
    cache.put("s1", 2, b"b")
    cache.put("s2", 1, b"c")
    assert cache.invalidate("s1") == 2
    assert cache.get("s1", 1) is None
    assert cache.get("s1", 2) is None
    assert cache.get("s2", 1) == b"c"
    assert cache.total_bytes == 1


def test_clear_empties_the_cache(clock: FakeClock) -> None:
    cache = SecretCache(clock=clock)
    cache.put("s1", "v1", b"a")
    cache.clear()
    assert len(cache) == 0
    assert cache.get("s1", "v1") is None
    assert cache.total_bytes == 0


def test_empty_value_is_cached(clock: FakeClock) -> None:
    cache = SecretCache(clock=clock)
    cache.put("s1", 1, b"")
    assert cache.get("s1", 1) == b""


def test_repr_shows_no_values_or_ids(clock: FakeClock) -> None:
    cache = SecretCache(clock=clock)
    cache.put("db-password", 1, b"hunter2")
    assert "hunter2" not in repr(cache)
    assert "db-password" not in repr(cache)


@pytest.mark.parametrize("kwargs", [{"ttl": 0}, {"ttl": -1}, {"max_entries": 0}, {"max_bytes": 0}])
def test_invalid_limits_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SecretCache(**kwargs)

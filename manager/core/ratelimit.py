"""Per-key rate limits: a token bucket for each API key. Pure: the caller passes the time.

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens a second; a request takes
one. A full bucket lets ``burst`` requests through at once (the CLI's short exchanges), then
``rate`` a second on average. The limiter keeps one bucket per key in this process: with
several replicas behind a load balancer each enforces the limit on its own (see
docs/operations.md), which keeps the check free of database round trips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RateLimiter", "TokenBucket", "retry_after_header", "throttled_message"]


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a bucket needs rate > 0 and burst >= 1, not {rate}, {burst}")
        return cls(rate=rate, burst=burst, tokens=burst, updated=now)

    def refill(self, now: float) -> None:
        # A clock that steps back (wall time) refills nothing rather than draining the bucket.
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = max(self.updated, now)

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there will be."""
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def is_full(self, now: float) -> bool:
        return self.tokens + max(0.0, now - self.updated) * self.rate >= self.burst


class RateLimiter:
    """One bucket per key. A key's bucket is made full on its first request, and made again
    when the key's limit changes; a full bucket is the same as none, so idle keys' buckets
    are dropped once there are many (``prune_above``)."""

    def __init__(self, *, prune_above: int = 10_000) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._prune_above = prune_above

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: str, rate: float, burst: int, now: float) -> float:
        """0.0: admitted. Otherwise refused, and the seconds until a token comes back."""
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            if len(self._buckets) >= self._prune_above:
                self.prune(now)
            bucket = self._buckets[key] = TokenBucket.full(rate, burst, now)
        return bucket.take(now)

    def prune(self, now: float) -> None:
        """Forget the buckets that have filled up again: they start full when next needed."""
        for key in [k for k, b in self._buckets.items() if b.is_full(now)]:
            del self._buckets[key]

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)


def throttled_message(max_qps: float) -> str:
    """The 429's message. ``str`` of a float is how the limit is shown: 1.0, 2.5, 0.1."""
    return f"Too Many requests. Throttled. Max QPS: {float(max_qps)}"


def retry_after_header(wait: float) -> str:
    """Retry-After takes whole seconds; never 0, which would invite an immediate retry."""
    return str(max(1, math.ceil(wait)))

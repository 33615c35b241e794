"""The delegate's cache of secret values: in memory only, short-lived, bounded.

Entries are keyed by (secret id, version). The manager gives every edit of a secret a new
version, so an edited secret is a different key and is never served stale; the old value
just ages out. Expiry is measured on the clock passed in (monotonic by default), bounded by
entry count and by total bytes, least recently used out first.

Not thread-safe: the delegate's event loop is its only user.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_TTL",
    "SecretCache",
    "Version",
]

DEFAULT_TTL = 30 * 60.0
DEFAULT_MAX_ENTRIES = 1000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024

Version = int | str
_Key = tuple[str, Version]


class SecretCache:
    """Secret values by (secret id, version), for ``ttl`` seconds (None: until evicted)."""

    def __init__(
        self,
        *,
        ttl: float | None = DEFAULT_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive, or None for no expiry")
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be at least 1")
        self._ttl = ttl
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        # Least recently used first.
        self._values: OrderedDict[_Key, bytes] = OrderedDict()
        # Soonest to expire first. One TTL for all, so put order is expiry order.
        self._expiry: OrderedDict[_Key, float] = OrderedDict()
        self._bytes = 0

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def get(self, secret_id: str, version: Version) -> bytes | None:
        """The cached value, or None if absent or expired."""
        self._expire()
        key = (secret_id, version)
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def put(self, secret_id: str, version: Version, value: bytes) -> None:
        """Cache ``value``; one larger than the whole byte budget is not cached at all."""
        key = (secret_id, version)
        self._remove(key)
        self._expire()
        if len(value) > self._max_bytes:
            return
        self._values[key] = value
        self._bytes += len(value)
        if self._ttl is not None:
            self._expiry[key] = self._clock() + self._ttl
        while len(self._values) > self._max_entries or self._bytes > self._max_bytes:
            self._remove(next(iter(self._values)))

    def invalidate(self, secret_id: str) -> int:
        """Drop every cached version of ``secret_id``; how many were dropped."""
        keys = [key for key in self._values if key[0] == secret_id]
        for key in keys:
            self._remove(key)
        return len(keys)

    def clear(self) -> None:
        self._values.clear()
        self._expiry.clear()
        self._bytes = 0

    def __len__(self) -> int:
        self._expire()
        return len(self._values)

    def __repr__(self) -> str:
        # Never the values, nor which secrets are held.
        return f"SecretCache(entries={len(self._values)}, bytes={self._bytes})"

    def _expire(self) -> None:
        now = self._clock()
        while self._expiry:
            key, expires_at = next(iter(self._expiry.items()))
            if expires_at > now:
                break
            self._remove(key)

    def _remove(self, key: _Key) -> None:
        value = self._values.pop(key, None)
        if value is not None:
            self._bytes -= len(value)
        self._expiry.pop(key, None)

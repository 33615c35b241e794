"""Failed logins in the audit trail, one event per account and minute.

A failed login changes nothing, so it writes no event of its own: a flood of guesses would
otherwise fill the trail (and the database) as fast as the attacker can send them. Each
replica counts failures in memory per (account, minute) and writes one event per bucket once
its minute has ended: at most one event per account per minute per replica, whatever the
rate. Failures for emails that are no user share one bucket per minute, which names no email
(what a guesser typed is not worth keeping, and is sometimes a password typed in the wrong
field). Should the process stop, the failures of at most its last minute are lost: the
lockout, which is in the store, does not depend on them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from manager.access.directory import UserBody
from manager.access.entities import Entity
from manager.api.audit_record import Change
from manager.store.base import StoreError

__all__ = ["FAILED_LOGINS", "MAX_ADDRESSES", "FailedLogins"]

log = structlog.get_logger("tether.audit")

# Addresses named in one event; more are counted, not listed.
MAX_ADDRESSES = 5
FLUSH_INTERVAL_S = 15.0
_UNKNOWN = ""

# Writes the event of a bucket: (the change, the first address).
Write = Callable[[Change, str], Awaitable[object]]


@dataclass(slots=True)
class _Bucket:
    name: str
    count: int = 0
    addresses: dict[str, None] = field(default_factory=dict)
    # Addresses beyond MAX_ADDRESSES were seen.
    more: bool = False


class FailedLogins:
    def __init__(self, write: Write, *, clock: Callable[[], float] = time.time) -> None:
        self._write = write
        self._clock = clock
        self._buckets: dict[tuple[str, int], _Bucket] = {}

    def note(self, user: Entity[UserBody] | None, client: str) -> None:
        """Count one failure for ``user`` (None: no such email) from ``client``."""
        key = (_UNKNOWN if user is None else user.id, int(self._clock() // 60))
        bucket = self._buckets.get(key)
        if bucket is None:
            name = "unknown email" if user is None else user.body.email
            bucket = self._buckets[key] = _Bucket(name)
        bucket.count += 1
        if client in bucket.addresses or len(bucket.addresses) < MAX_ADDRESSES:
            bucket.addresses[client] = None
        else:
            bucket.more = True

    async def flush(self, *, everything: bool = False) -> int:
        """Write the buckets whose minute has ended (all of them with ``everything``);
        answers how many events were written. A bucket that fails to write is kept."""
        minute = int(self._clock() // 60)
        written = 0
        for key in sorted(self._buckets, key=lambda k: k[1]):
            if key[1] >= minute and not everything:
                continue
            bucket = self._buckets[key]
            try:
                await self._write(_change(key, bucket), next(iter(bucket.addresses), ""))
            except StoreError as exc:
                log.warning("could not record failed logins", error=str(exc))
                continue
            del self._buckets[key]
            written += 1
        return written

    async def flush_forever(self, interval: float = FLUSH_INTERVAL_S) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                await self.flush()
        finally:
            await asyncio.shield(self.flush(everything=True))


def _change(key: tuple[str, int], b: _Bucket) -> Change:
    user_id, minute = key
    at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(minute * 60))
    shown = ", ".join(a or "unknown" for a in b.addresses)
    whence = f"from {shown}" + (" and other addresses" if b.more else "")
    plural = "s" if b.count != 1 else ""
    return Change(
        resource_id=user_id or "unknown",
        name=b.name,
        action="login_failed",
        summary=f"{b.count} failed login{plural} for {b.name} in the minute from {at}, {whence}",
        after={"failures": b.count, "minute": minute * 60, "addresses": list(b.addresses)},
    )


FAILED_LOGINS: web.AppKey[FailedLogins] = web.AppKey("tether_failed_logins", FailedLogins)

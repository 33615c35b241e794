"""Which failed logins lock whom: pure functions over a user's body, applied by
manager.access.login in compare-and-set updates. No I/O, no clock of its own.

Failures are counted twice, each in a window of ``lockout_minutes`` from its first failure:

- per (user, client network): ``lockout_attempts`` failures lock the user *for that network*
  for ``lockout_minutes``. A stranger guessing from their own address locks out only
  themselves; the owner, elsewhere, still logs in.
- per user, from everywhere: ``ACCOUNT_FACTOR`` times as many lock the user everywhere.
  This is the ceiling on guesses spread over many addresses (a botnet): it costs the
  attacker ``ACCOUNT_FACTOR`` networks' worth of locks before it bites the owner.

A network is the address itself for IPv4 and its /64 for IPv6 (one host usually holds a
whole /64, so counting single IPv6 addresses would give it endless fresh starts). A user
remembers at most ``MAX_NETWORKS`` networks: the oldest are forgotten first, and the
account-wide count, which is never forgotten early, still holds their failures.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from manager.access.directory import NetworkFailures, UserBody
from manager.schemas.auth import AuthSettings

__all__ = [
    "ACCOUNT_FACTOR",
    "MAX_NETWORKS",
    "Claim",
    "claim",
    "fail",
    "give_back",
    "locked_until",
    "network_of",
    "succeed",
]

ACCOUNT_FACTOR = 10
MAX_NETWORKS = 32


def network_of(address: str) -> str:
    """The network failures from ``address`` count against."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(frozen=True, slots=True)
class Claim:
    """An attempt's claim: the body to store, and until when it is refused (None: go on)."""

    body: UserBody
    refused_until: float | None
    # The claim itself set a lock (for the audit trail): "" when not, else its scope.
    locked: str = ""


def _window(s: AuthSettings) -> float:
    return s.lockout_minutes * 60.0


def locked_until(b: UserBody, network: str, now: float) -> float | None:
    """When the lock on ``network`` (or everywhere) ends; None when there is none."""
    ends = [b.locked_until or 0.0]
    entry = b.network_failures.get(network)
    if entry is not None:
        ends.append(entry.locked_until or 0.0)
    end = max(ends)
    return end if end > now else None


def _counted(entry: NetworkFailures | None, now: float, window: float) -> NetworkFailures:
    """``entry`` with an ended window started afresh."""
    if entry is None or now >= entry.since + window:
        return NetworkFailures(count=0, since=now)
    return entry


def _account_count(b: UserBody, now: float, window: float) -> tuple[int, float]:
    since = b.failed_since or 0.0
    if now >= since + window:
        return 0, now
    return b.failed_logins, since


def _pruned(
    entries: dict[str, NetworkFailures], now: float, window: float
) -> dict[str, NetworkFailures]:
    live = {
        k: v for k, v in entries.items() if now < v.since + window or (v.locked_until or 0.0) > now
    }
    newest = sorted(live, key=lambda k: live[k].since, reverse=True)[:MAX_NETWORKS]
    return {k: live[k] for k in newest}


def claim(b: UserBody, network: str, s: AuthSettings, now: float) -> Claim:
    """Count this attempt before its password is checked, or refuse it when locked (or
    when the count is already at its limit, which locks now)."""
    limit = s.lockout_attempts
    if not limit:
        return Claim(b, None)
    until = locked_until(b, network, now)
    if until is not None:
        return Claim(b, until)
    window = _window(s)
    entry = _counted(b.network_failures.get(network), now, window)
    count, since = _account_count(b, now, window)
    lock = now + window
    if count >= limit * ACCOUNT_FACTOR:
        body = b.model_copy(update={"failed_logins": 0, "failed_since": now, "locked_until": lock})
        return Claim(body, lock, "everywhere")
    entries = dict(b.network_failures)
    if entry.count >= limit:
        entries[network] = NetworkFailures(count=0, since=now, locked_until=lock)
        return Claim(b.model_copy(update={"network_failures": entries}), lock, network)
    entries[network] = entry.model_copy(update={"count": entry.count + 1})
    update = {
        "failed_logins": count + 1,
        "failed_since": since,
        "network_failures": _pruned(entries, now, window),
    }
    return Claim(b.model_copy(update=update), None)


def give_back(b: UserBody, network: str) -> UserBody:
    """Undo a claim that was neither a failure nor a success (the 2FA code is asked for)."""
    entries = dict(b.network_failures)
    entry = entries.get(network)
    if entry is not None:
        entries[network] = entry.model_copy(update={"count": max(0, entry.count - 1)})
    update = {"failed_logins": max(0, b.failed_logins - 1), "network_failures": entries}
    return b.model_copy(update=update)


def fail(b: UserBody, network: str, s: AuthSettings, now: float) -> tuple[UserBody, str]:
    """The claimed attempt failed (it already counts): lock now if it was the last one
    allowed; answers the body and the lock's scope ("" when none was set)."""
    limit = s.lockout_attempts
    if not limit or locked_until(b, network, now) is not None:
        return b, ""
    lock = now + _window(s)
    if b.failed_logins >= limit * ACCOUNT_FACTOR:
        body = b.model_copy(update={"failed_logins": 0, "failed_since": now, "locked_until": lock})
        return body, "everywhere"
    entry = b.network_failures.get(network)
    if entry is None or entry.count < limit:
        return b, ""
    entries = {**b.network_failures, network: NetworkFailures(since=now, locked_until=lock)}
    return b.model_copy(update={"network_failures": entries}), network


def succeed(b: UserBody, network: str, now: float) -> tuple[UserBody, float | None]:
    """The claimed attempt succeeded: this network's count starts again, unless attempts
    made alongside locked the user meanwhile (answered: until when; the body unchanged).
    The account-wide count stays: one success proves nothing about the other networks."""
    until = locked_until(b, network, now)
    if until is not None:
        return b, until
    entries = {k: v for k, v in b.network_failures.items() if k != network}
    return b.model_copy(update={"network_failures": entries}), None

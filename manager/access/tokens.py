"""Delegate tokens and API keys: random, shown once, stored only as hashes."""

from __future__ import annotations

import time
from collections.abc import Sequence

from manager.records import ApiKeyRecord, TokenRecord
from manager.store.base import Conflict, Store
from shared.ids import hash_secret, new_id, new_token

__all__ = [
    "ADMIN_BURST",
    "ADMIN_MAX_QPS",
    "ApiKeyInUse",
    "TokenInUse",
    "create_api_key",
    "create_token",
]

# The admin key made at first start drives the CLI, scripts, the demo and the benchmarks,
# which send far more than one request a second: it gets a limit no person reaches, so it
# still has one (a runaway script cannot starve the manager), just not the account default.
ADMIN_MAX_QPS = 10000.0
ADMIN_BURST = 10000
# The visible part of a key, shown in listings: "tak_" and four characters of the random part.
_PREFIX_LEN = 8


class TokenInUse(Exception):
    pass


class ApiKeyInUse(Exception):
    pass


async def create_token(store: Store, name: str) -> tuple[TokenRecord, str]:
    token = new_token("tdt")
    record = TokenRecord(
        id=new_id("tok"), name=name, token_hash=hash_secret(token), created_at=time.time()
    )
    try:
        await store.create_token(record)
    except Conflict:
        raise TokenInUse(f"a live token named {name!r} exists; revoke it first") from None
    return record, token


async def create_api_key(
    store: Store,
    name: str,
    *,
    owner: str = "",
    owner_user_id: str | None = None,
    service_account: bool = False,
    groups: Sequence[str] = (),
    max_qps: float | None = None,
    burst: int | None = None,
    expires_at: float | None = None,
    now: float | None = None,
    created_by: str | None = None,
) -> tuple[ApiKeyRecord, str]:
    """A new key and its one showing. ``max_qps`` and ``burst`` default to the account's
    settings (:meth:`Store.access_settings`)."""
    if max_qps is None or burst is None:
        defaults = await store.access_settings()
        max_qps = defaults.api_key_max_qps if max_qps is None else max_qps
        burst = defaults.api_key_burst if burst is None else burst
    key = new_token("tak")
    record = ApiKeyRecord(
        id=new_id("key"),
        name=name,
        prefix=key[:_PREFIX_LEN],
        key_hash=hash_secret(key),
        created_at=time.time() if now is None else now,
        owner=owner,
        owner_user_id=owner_user_id,
        service_account=service_account,
        groups=tuple(groups),
        max_qps=max_qps,
        burst=burst,
        expires_at=expires_at,
        created_by=created_by,
    )
    try:
        await store.create_api_key(record)
    except Conflict:
        raise ApiKeyInUse(f"a live API key named {name!r} exists; revoke it first") from None
    return record, key

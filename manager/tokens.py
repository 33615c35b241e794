"""Delegate tokens and API keys: random, shown once, stored only as hashes."""

from __future__ import annotations

import time

from manager.store.base import Conflict, Store
from manager.store.records import ApiKeyRecord, TokenRecord
from shared.ids import hash_secret, new_id, new_token

__all__ = ["TokenInUse", "create_api_key", "create_token"]


class TokenInUse(Exception):
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


async def create_api_key(store: Store, name: str) -> tuple[ApiKeyRecord, str]:
    key = new_token("tak")
    record = ApiKeyRecord(
        id=new_id("key"),
        name=name,
        prefix=key[:8],
        key_hash=hash_secret(key),
        created_at=time.time(),
    )
    await store.create_api_key(record)
    return record, key

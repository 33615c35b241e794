"""The store's API keys (owners, limits, expiry, last use), access settings and allowlist, on
SQLite and PostgreSQL alike; and migration 9 over a database that has keys already."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from manager.records import AccessSettings, AllowlistEntry, ApiKeyRecord
from manager.store import migrations
from manager.store.base import Conflict, Store
from tests.manager.conftest import StoreMaker


def key(name: str = "ci", **over: Any) -> ApiKeyRecord:
    fields: dict[str, Any] = {
        "id": f"key_{name}",
        "name": name,
        "prefix": "tak_AbCd",
        "key_hash": f"hash-{name}",
        "created_at": 10.0,
        "owner": "alice",
        "service_account": True,
        "groups": ("deployers", "readers"),
        "max_qps": 2.5,
        "burst": 7,
        "expires_at": 1000.0,
    }
    fields.update(over)
    return ApiKeyRecord(**fields)


def entry(cidr: str, entry_id: str | None = None, **over: Any) -> AllowlistEntry:
    fields: dict[str, Any] = {
        "id": entry_id or f"ipa_{cidr}",
        "cidr": cidr,
        "description": "office",
        "enabled": True,
        "created_at": 5.0,
    }
    fields.update(over)
    return AllowlistEntry(**fields)


# -- API keys --------------------------------------------------------------------------------


async def test_a_key_comes_back_with_every_field(store: Store) -> None:
    await store.create_api_key(key())
    assert await store.api_key_by_hash("hash-ci") == key()
    assert await store.api_key_by_hash("hash-nope") is None


async def test_a_key_with_no_extras_takes_the_record_defaults(store: Store) -> None:
    bare = ApiKeyRecord(id="key_b", name="b", prefix="tak_", key_hash="hb", created_at=1.0)
    await store.create_api_key(bare)
    assert await store.api_key_by_hash("hb") == bare


async def test_a_live_name_is_unique_and_a_revoked_one_frees_it(store: Store) -> None:
    await store.create_api_key(key())
    with pytest.raises(Conflict):
        await store.create_api_key(key(id="key_2", key_hash="hash-2"))
    revoked = await store.revoke_api_key("ci", 20.0)
    assert revoked == key(revoked_at=20.0)
    await store.create_api_key(key(id="key_2", key_hash="hash-2", created_at=30.0))
    assert [(k.id, k.revoked_at) for k in await store.list_api_keys()] == [
        ("key_ci", 20.0),
        ("key_2", None),
    ]


async def test_revoking_a_name_without_a_live_key_finds_nothing(store: Store) -> None:
    assert await store.revoke_api_key("nope", 1.0) is None
    await store.create_api_key(key())
    await store.revoke_api_key("ci", 2.0)
    assert await store.revoke_api_key("ci", 3.0) is None


async def test_last_use_is_written_only_after_the_interval(store: Store) -> None:
    await store.create_api_key(key())

    async def last_used() -> float | None:
        found = await store.api_key_by_hash("hash-ci")
        assert found is not None
        return found.last_used_at

    await store.touch_api_key("key_ci", 100.0, min_interval=60.0)
    assert await last_used() == 100.0
    await store.touch_api_key("key_ci", 159.0, min_interval=60.0)  # another replica, too soon
    assert await last_used() == 100.0
    await store.touch_api_key("key_ci", 160.0, min_interval=60.0)
    assert await last_used() == 160.0


# -- settings and the allowlist --------------------------------------------------------------


async def test_access_settings_start_off_with_one_qps_and_a_burst_of_ten(store: Store) -> None:
    assert await store.access_settings() == AccessSettings()


async def test_access_settings_change_only_what_is_given(store: Store) -> None:
    after = await store.update_access_settings(
        7.0, allowlist_enabled=True, trusted_proxies=["10.0.0.0/8", "2001:db8::/32"]
    )
    assert after == AccessSettings(True, ("10.0.0.0/8", "2001:db8::/32"), 1.0, 10, 7.0)
    after = await store.update_access_settings(8.0, api_key_max_qps=2.5, api_key_burst=3)
    assert after == AccessSettings(True, ("10.0.0.0/8", "2001:db8::/32"), 2.5, 3, 8.0)
    assert await store.access_settings() == after
    cleared = await store.update_access_settings(9.0, allowlist_enabled=False, trusted_proxies=[])
    assert (cleared.allowlist_enabled, cleared.trusted_proxies) == (False, ())


async def test_allowlist_entries_are_kept_in_order_and_unique_by_cidr(store: Store) -> None:
    await store.add_allowlist_entry(entry("203.0.113.0/24"))
    await store.add_allowlist_entry(entry("2001:db8::/32", created_at=6.0, enabled=False))
    with pytest.raises(Conflict):
        await store.add_allowlist_entry(entry("203.0.113.0/24", entry_id="ipa_other"))
    assert await store.list_allowlist() == [
        entry("203.0.113.0/24"),
        entry("2001:db8::/32", created_at=6.0, enabled=False),
    ]


async def test_an_allowlist_entry_is_switched_and_removed_by_id(store: Store) -> None:
    await store.add_allowlist_entry(entry("203.0.113.0/24"))
    off = await store.set_allowlist_entry_enabled("ipa_203.0.113.0/24", False)
    assert off == entry("203.0.113.0/24", enabled=False)
    assert await store.set_allowlist_entry_enabled("ipa_nope", True) is None
    assert await store.delete_allowlist_entry("ipa_203.0.113.0/24") == off
    assert await store.delete_allowlist_entry("ipa_203.0.113.0/24") is None
    assert await store.list_allowlist() == []


# -- migration 9 -----------------------------------------------------------------------------


async def _raw(maker: StoreMaker, sql: str) -> None:
    if maker.kind == "sqlite":
        conn = sqlite3.connect(maker.path)
        try:
            with conn:
                conn.execute(sql)
        finally:
            conn.close()
    else:
        await maker.fetch(sql)


async def test_migration_9_keeps_existing_admin_keys_working_at_the_admin_limit(
    new_store: StoreMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = new_store.migrations
    monkeypatch.setattr(migrations, "MIGRATIONS", [m for m in every if m[0] < 9])
    old = new_store()
    await old.open()
    await old.close()
    # Two live "admin" keys: admin-api-key was deleted and remade (before keys had owners).
    for key_id, created in (("key_old", 1.0), ("key_new", 2.0)):
        await _raw(
            new_store,
            "INSERT INTO api_keys(id, name, prefix, key_hash, created_at)"
            f" VALUES ('{key_id}', 'admin', 'tak_', 'h-{key_id}', {created})",
        )

    monkeypatch.setattr(migrations, "MIGRATIONS", every)
    s = new_store()
    await s.open()
    try:
        assert 9 in await new_store.schema_versions()
        keys = {k.id: k for k in await s.list_api_keys()}
        assert (keys["key_new"].name, keys["key_old"].name) == ("admin", "admin-key_old")
        for k in keys.values():
            assert (k.owner, k.service_account, k.max_qps, k.burst) == ("admin", True, 1e4, 10000)
            # Migration 10 then gives them the administrators' group to act through.
            assert k.groups == ("Account Administrators",)
            assert (k.expires_at, k.revoked_at) == (None, None)
        assert await s.access_settings() == AccessSettings()
        assert await s.list_allowlist() == []
    finally:
        await s.close()

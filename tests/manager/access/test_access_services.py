"""The services behind the API key, allowlist and delegate token routes: the store's answers
become the domain's refusals (manager.errors), which the API maps to 400, 404 and 409."""

from __future__ import annotations

import pytest

from manager.access.allowlist import Allowlist
from manager.access.api_keys import ApiKeys
from manager.access.directory import ADMIN_GROUP_ID, Directory, GroupBody
from manager.access.tokens import Tokens
from manager.errors import Conflicting, Invalid, NotFound
from manager.records import AllowlistEntry, ApiKeyRecord
from manager.schemas.grants import ACCOUNT_PERMISSIONS, ADMIN_GROUP
from manager.store.base import Store


def clock() -> float:
    return 1000.0


def entry(entry_id: str, cidr: str) -> AllowlistEntry:
    return AllowlistEntry(id=entry_id, cidr=cidr, description="", enabled=True, created_at=1.0)


async def test_a_second_entry_for_the_same_network_is_a_conflict(store: Store) -> None:
    allowlist = Allowlist(store, clock)
    await allowlist.add(entry("ipa_1", "10.0.0.0/8"))
    with pytest.raises(Conflicting) as caught:
        await allowlist.add(entry("ipa_2", "10.0.0.0/8"))
    assert (caught.value.code, caught.value.field) == ("conflict", "cidr")
    assert "10.0.0.0/8" in caught.value.message
    _, entries = await allowlist.current()
    assert [e.id for e in entries] == ["ipa_1"]


async def test_an_unknown_entry_is_not_found_and_nothing_changes(store: Store) -> None:
    allowlist = Allowlist(store, clock)
    await allowlist.add(entry("ipa_1", "10.0.0.0/8"))
    with pytest.raises(NotFound):
        await allowlist.remove("ipa_nope")
    with pytest.raises(NotFound):
        await allowlist.set_entry_enabled("ipa_nope", False)
    disabled = await allowlist.set_entry_enabled("ipa_1", False)
    assert not disabled.enabled
    assert (await allowlist.remove("ipa_1")).id == "ipa_1"
    assert (await allowlist.current())[1] == []


async def test_settings_change_only_what_is_given(store: Store) -> None:
    allowlist, keys = Allowlist(store, clock), ApiKeys(store, clock)
    before = await keys.defaults()
    await allowlist.set_trusted_proxies(["192.0.2.0/24"])
    after = await keys.set_defaults(before.api_key_max_qps + 1, None)
    assert after.trusted_proxies == ("192.0.2.0/24",)
    assert (after.api_key_max_qps, after.api_key_burst) == (
        before.api_key_max_qps + 1,
        before.api_key_burst,
    )
    assert (await allowlist.set_enabled(True)).allowlist_enabled


async def make_key(keys: ApiKeys, name: str) -> tuple[ApiKeyRecord, str]:
    return await keys.create(
        name,
        owner=name,
        owner_user_id=None,
        service_account=True,
        groups=(),
        max_qps=None,
        burst=None,
        expires_at=None,
        now=5.0,
        created_by="usr_1",
    )


async def test_a_taken_name_is_a_conflict_and_an_unknown_one_not_found(store: Store) -> None:
    keys = ApiKeys(store, clock)
    created, key = await make_key(keys, "ci")
    assert key.startswith(created.prefix)
    with pytest.raises(Conflicting) as caught:
        await make_key(keys, "ci")
    assert caught.value.field == "name"
    assert [k.name for k in await keys.list()] == ["ci"]
    with pytest.raises(NotFound):
        await keys.revoke("nope", 6.0)
    assert (await keys.revoke("ci", 6.0)).revoked_at == 6.0


async def test_a_token_scope_naming_nothing_is_invalid_and_creates_nothing(store: Store) -> None:
    tokens = Tokens(store, lambda _id: None)
    with pytest.raises(Invalid) as caught:
        await tokens.create("ci", ["no-such-app"], (), None)
    assert caught.value.field == "scope"
    assert await tokens.list() == []


async def test_a_revoked_token_is_announced_once_and_still_known_by_its_secret(
    store: Store,
) -> None:
    announced: list[str] = []
    tokens = Tokens(store, announced.append, clock=lambda: 7.0)
    record, token, _ = await tokens.create("ci", [], (), None)
    with pytest.raises(Conflicting) as caught:
        await tokens.create("ci", [], (), None)
    assert caught.value.field == "name"
    revoked = await tokens.revoke("ci")
    assert revoked is not None
    assert revoked.revoked_at == 7.0
    assert await tokens.revoke("ci") is None
    assert announced == [record.id]
    found = await tokens.by_token(token)
    assert found is not None
    assert (found.id, found.revoked_at) == (record.id, 7.0)
    assert await tokens.by_token(token + "x") is None


async def test_the_administrators_hold_permissions_a_later_release_added(store: Store) -> None:
    """A group made at the first start of an earlier release stored the permissions known
    then; its members still hold every permission this release knows."""
    d = Directory(store)
    older = GroupBody(name=ADMIN_GROUP, account_permissions=["manage_users"])
    await d.groups.insert(older, entity_id=ADMIN_GROUP_ID)
    other = await d.groups.insert(GroupBody(name="ops", account_permissions=["manage_users"]))
    admins = await d.grants_of_groups(ids=[ADMIN_GROUP_ID])
    assert all(admins.has(p) for p in ACCOUNT_PERMISSIONS)
    ops = await d.grants_of_groups(ids=[other.id])
    assert ops.has("manage_users")
    assert not ops.has("override_freeze")

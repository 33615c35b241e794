"""API keys: created and shown once, listed without secrets, revoked everywhere, expired,
owned, narrowed to groups; and the ``tether api-key`` commands."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from manager.access.directory import Directory, GroupBody
from manager.client import TetherClient
from manager.client.cli.main import Config, run_cli
from manager.client.cli.output import to_json
from manager.schemas.access import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyDefaults,
    ApiKeyDefaultsUpdate,
    ApiKeyView,
)
from manager.server.app import open_store
from manager.store.base import Store
from shared.ids import hash_secret
from tests.manager.access_support import START, Clock, Manager, manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.rbac_support import member

DAY = 86400.0


async def create(m: Manager, **body: Any) -> dict[str, Any]:
    status, created = await m.call("POST", "/api/v1/api-keys", {"name": "ci", **body})
    assert status == 201, created
    return dict(created)


# -- create, list ----------------------------------------------------------------------------


async def test_a_new_key_is_shown_once_and_works(m: Manager) -> None:
    created = await create(m, max_qps=2.5)
    key = created["key"]
    assert key.startswith(created["prefix"])
    assert (created["max_qps"], created["burst"], created["status"]) == (2.5, 10, "active")
    assert (await m.call("GET", "/api/v1/tasks", key=key))[0] == 200


async def test_the_listing_never_holds_a_key_or_its_hash(m: Manager) -> None:
    key = (await create(m))["key"]
    resp = await m.client.get("/api/v1/api-keys", headers=m.auth())
    text = await resp.text()
    assert key not in text
    assert hash_secret(key) not in text
    listed = {k["name"]: k for k in (await resp.json())["api_keys"]}
    assert "key" not in listed["ci"]
    assert "key_hash" not in listed["ci"]
    assert listed["ci"]["prefix"] == key[:8]


async def test_a_live_name_is_taken_until_its_key_is_revoked(m: Manager) -> None:
    await create(m)
    status, body = await m.call("POST", "/api/v1/api-keys", {"name": "ci"})
    assert (status, body["error"]["code"], body["error"]["field"]) == (409, "conflict", "name")
    assert (await m.call("DELETE", "/api/v1/api-keys/ci"))[0] == 200
    await create(m)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "ci", "max_qps": 0}, "max_qps"),
        ({"name": "ci", "max_qps": 1e9}, "max_qps"),
        ({"name": "ci", "burst": 0}, "burst"),
        ({"name": "ci", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "-ci"}, "name"),
        ({"name": "ci", "groups": ["a b"]}, "groups.0"),
        ({"name": "ci", "key": "tak_mine"}, "key"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    m: Manager, body: dict[str, Any], field: str
) -> None:
    status, answer = await m.call("POST", "/api/v1/api-keys", body)
    assert (status, answer["error"]["field"]) == (400, field)


async def test_groups_are_stored_and_shown_once_each(m: Manager) -> None:
    for name in ("deployers", "readers"):
        await Directory(m.store).groups.insert(GroupBody(name=name))
    created = await create(m, groups=["deployers", "readers", "deployers"])
    assert created["groups"] == ["deployers", "readers"]
    (record,) = [k for k in await m.store.list_api_keys() if k.name == "ci"]
    assert record.groups == ("deployers", "readers")


async def test_an_unknown_group_is_refused_and_nothing_is_made(m: Manager) -> None:
    status, body = await m.call("POST", "/api/v1/api-keys", {"name": "ci", "groups": ["nope"]})
    assert status == 400
    assert body["error"]["message"] == "no user group 'nope'"
    assert [k.name for k in await m.store.list_api_keys() if k.name == "ci"] == []


async def test_a_service_account_key_is_owned_by_the_account(m: Manager) -> None:
    created = await create(m, service_account=True)
    assert (created["owner"], created["service_account"]) == ("ci", True)


async def test_a_personal_key_is_owned_by_whoever_its_creator_acts_for(m: Manager) -> None:
    admin = next(k for k in await m.store.list_api_keys() if k.key_hash == hash_secret(m.key))
    status, boss = await m.call("POST", "/api/v1/api-keys", {"name": "boss", "max_qps": 100})
    assert (status, boss["owner"]) == (201, admin.owner)
    status, made = await m.call("POST", "/api/v1/api-keys", {"name": "made"}, key=boss["key"])
    assert (status, made["owner"]) == (201, admin.owner)
    # Naming another owner for a personal key is refused, and nothing is made.
    status, body = await m.call("POST", "/api/v1/api-keys", {"name": "fake", "owner": "bob"})
    assert (status, body["error"]["field"]) == (400, "owner")
    assert "owned by whoever creates it" in body["error"]["message"]
    assert [k for k in await m.store.list_api_keys() if k.name == "fake"] == []
    # A service account names its account freely.
    assert (await create(m, owner="deployer", service_account=True))["owner"] == "deployer"


async def test_a_key_records_who_created_it_and_admins_see_and_revoke_it(
    m: Manager, store: Store
) -> None:
    ops = await member(store, "ops@example.com", account=["manage_api_keys"])
    status, made = await m.call(
        "POST", "/api/v1/api-keys", {"name": "robot", "service_account": True}, key=ops
    )
    assert status == 201, made
    creator = made["created_by"]
    assert creator.startswith("usr_")
    status, listed = await m.call("GET", "/api/v1/api-keys")
    robot = next(k for k in listed["api_keys"] if k["name"] == "robot")
    assert (robot["created_by"], robot["service_account"]) == (creator, True)
    assert (await m.call("DELETE", "/api/v1/api-keys/robot"))[0] == 200
    status, body = await m.call("GET", "/api/v1/tasks", key=made["key"])
    assert (status, body["error"]["code"]) == (401, "api_key_revoked")


async def test_the_account_defaults_apply_to_keys_that_name_no_limit(m: Manager) -> None:
    assert await m.call("GET", "/api/v1/api-key-defaults") == (200, {"max_qps": 1.0, "burst": 10})
    status, defaults = await m.call("PUT", "/api/v1/api-key-defaults", {"max_qps": 5.0})
    assert (status, defaults) == (200, {"max_qps": 5.0, "burst": 10})
    created = await create(m)
    assert (created["max_qps"], created["burst"]) == (5.0, 10)
    assert (await create(m, name="own", max_qps=0.5))["max_qps"] == 0.5


# -- revoke ----------------------------------------------------------------------------------


async def test_a_revoked_key_is_refused_at_once_on_the_replica_that_revoked_it(
    m: Manager,
) -> None:
    key = (await create(m))["key"]
    assert (await m.call("GET", "/api/v1/tasks", key=key))[0] == 200  # now cached
    status, revoked = await m.call("DELETE", "/api/v1/api-keys/ci")
    assert (status, revoked["status"]) == (200, "revoked")
    status, body = await m.call("GET", "/api/v1/tasks", key=key)
    assert (status, body["error"]["code"]) == (401, "api_key_revoked")


async def test_a_key_revoked_on_another_replica_is_refused_within_a_second(
    tmp_path: Path, store: Store
) -> None:
    clock = Clock()
    other_store = open_store(tmp_path / "db")  # the same database as `store`
    await other_store.open()
    try:
        async with (
            manager(tmp_path, store, clock) as a,
            manager(tmp_path, other_store, clock) as b,
        ):
            key = (await create(a))["key"]
            assert (await b.call("GET", "/api/v1/tasks", key=key))[0] == 200  # b caches it
            assert (await a.call("DELETE", "/api/v1/api-keys/ci"))[0] == 200
            clock.advance(0.5)
            # Still inside b's cache lifetime: this is the bound, not a promise of speed.
            assert (await b.call("GET", "/api/v1/tasks", key=key))[0] == 200
            clock.advance(0.5)
            status, body = await b.call("GET", "/api/v1/tasks", key=key)
            assert (status, body["error"]["code"]) == (401, "api_key_revoked")
    finally:
        await other_store.close()


async def test_revoking_an_unknown_key_is_a_404(m: Manager) -> None:
    status, body = await m.call("DELETE", "/api/v1/api-keys/nope")
    assert (status, body["error"]["code"]) == (404, "not_found")


async def test_an_unknown_key_is_refused(m: Manager) -> None:
    status, body = await m.call("GET", "/api/v1/tasks", key="tak_nope")
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")


# -- expiry and last use ---------------------------------------------------------------------


async def test_an_expired_key_is_refused_with_a_clear_401(m: Manager) -> None:
    created = await create(m, expires_in_days=30)
    assert created["expires_at"] == START + 30 * DAY
    m.clock.advance(30 * DAY - 1)
    assert (await m.call("GET", "/api/v1/tasks", key=created["key"]))[0] == 200
    m.clock.advance(1)
    status, body = await m.call("GET", "/api/v1/tasks", key=created["key"])
    assert (status, body["error"]["code"]) == (401, "api_key_expired")
    assert body["error"]["message"] == (
        "the API key 'ci' expired on 2023-12-14 22:13:20 UTC; create a new one"
    )
    listed = (await m.call("GET", "/api/v1/api-keys"))[1]["api_keys"]
    assert [k["status"] for k in listed if k["name"] == "ci"] == ["expired"]


async def test_last_use_is_written_at_most_once_a_minute(m: Manager) -> None:
    key = (await create(m))["key"]

    async def last_used() -> float | None:
        (record,) = [k for k in await m.store.list_api_keys() if k.name == "ci"]
        return record.last_used_at

    assert await last_used() is None
    await m.call("GET", "/api/v1/tasks", key=key)
    assert await last_used() == START
    m.clock.advance(30)
    await m.call("GET", "/api/v1/tasks", key=key)
    assert await last_used() == START
    m.clock.advance(31)
    await m.call("GET", "/api/v1/tasks", key=key)
    assert await last_used() == START + 61


# -- the CLI ---------------------------------------------------------------------------------


VIEW: dict[str, Any] = {
    "id": "key_1",
    "name": "ci",
    "prefix": "tak_AbCd",
    "owner": "alice",
    "service_account": False,
    "groups": ["deployers"],
    "max_qps": 2.5,
    "burst": 10,
    "created_at": START,
    "expires_at": START + 90 * DAY,
    "status": "active",
}


class FakeKeys(TetherClient):
    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:1", api_key="unused")
        self.created: list[ApiKeyCreate] = []
        self.revoked: list[str] = []

    async def create_api_key(self, body: ApiKeyCreate) -> ApiKeyCreated:
        self.created.append(body)
        return ApiKeyCreated(**VIEW, key="tak_AbCdEfGh-the-whole-key")

    async def list_api_keys(self) -> list[ApiKeyView]:
        return [ApiKeyView(**VIEW)]

    async def revoke_api_key(self, name: str) -> ApiKeyView:
        self.revoked.append(name)
        return ApiKeyView(**{**VIEW, "status": "revoked", "revoked_at": START})

    async def get_api_key_defaults(self) -> ApiKeyDefaults:
        return ApiKeyDefaults(max_qps=1.0, burst=10)

    async def set_api_key_defaults(self, body: ApiKeyDefaultsUpdate) -> ApiKeyDefaults:
        return ApiKeyDefaults(max_qps=body.max_qps or 1.0, burst=body.burst or 10)


def tether(client: FakeKeys, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def factory(_config: Config) -> TetherClient:
        return client

    code = run_cli(argv, env={"TETHER_API_KEY": "k"}, out=out, err=err, client_factory=factory)
    return code, out.getvalue(), err.getvalue()


def test_cli_create_prints_the_key_alone_on_its_last_line() -> None:
    client = FakeKeys()
    code, out, err = tether(
        client,
        "api-key",
        "create",
        "ci",
        "--max-qps",
        "2.5",
        "--group",
        "deployers",
        "--group",
        "readers",
        "--expires-in",
        "90",
    )
    assert code == 0
    assert out.splitlines()[-1] == "tak_AbCdEfGh-the-whole-key"
    assert "shown once" in err
    (body,) = client.created
    assert (body.name, body.max_qps, body.groups, body.expires_in_days) == (
        "ci",
        2.5,
        ["deployers", "readers"],
        90,
    )


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--max-qps", "0"], "--max-qps"),
        (["--expires-in", "0"], "--expires-in"),
        (["--group", "not a name"], "--group"),
    ],
)
def test_cli_create_refuses_bad_options_naming_them(argv: list[str], option: str) -> None:
    client = FakeKeys()
    code, _, err = tether(client, "api-key", "create", "ci", *argv)
    assert code == 2
    assert err.startswith(f"error: {option}:")
    assert client.created == []


def test_cli_list_as_json_keeps_the_api_shape() -> None:
    code, out, _ = tether(FakeKeys(), "api-key", "list", "--output", "json")
    assert code == 0
    # The API's fields, with moments in RFC 3339 (as every --output json of the CLI).
    assert json.loads(out)["api_keys"][0] == json.loads(to_json(ApiKeyView(**VIEW)))


def test_cli_list_as_text_shows_the_prefix_and_status() -> None:
    code, out, _ = tether(FakeKeys(), "api-key", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:3] == ["NAME", "PREFIX", "OWNER"]
    assert row.split()[:3] == ["ci", "tak_AbCd...", "alice"]
    assert row.split()[-1] == "active"


def test_cli_revoke_names_the_key() -> None:
    client = FakeKeys()
    code, out, _ = tether(client, "api-key", "revoke", "ci")
    assert (code, client.revoked) == (0, ["ci"])
    assert out.startswith("API key ci revoked")


def test_cli_defaults_show_and_set() -> None:
    code, out, _ = tether(FakeKeys(), "api-key", "defaults", "--output", "json")
    assert (code, json.loads(out)) == (0, {"max_qps": 1.0, "burst": 10})
    code, out, _ = tether(FakeKeys(), "api-key", "defaults", "--max-qps", "3")
    assert (code, out.strip()) == (0, "new API keys get: max QPS 3.0, burst 10")

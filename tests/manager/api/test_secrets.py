"""The secrets API in process: managers, secrets, versions, refusals, and what acquire hands
a delegate. Operations that need a delegate (KMS wraps, connection tests) are end to end
(tests/e2e/test_secrets.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from manager.access.tokens import create_api_key
from manager.api.context import Context
from manager.records import TaskRecord
from manager.schemas.grants import ADMIN_GROUP
from manager.server.app import ManagerConfig, build_app, open_store
from manager.store.base import Store
from shared.envelope import EnvelopeContext, decrypt_value
from shared.protocol import TaskState
from shared.sealing import SealError, generate_keypair, open_sealed, public_key_b64
from shared.secretspec import credentials_context, delivery_context

VALUE = "s3cr3t-Value/with+base64=chars\nand a second line"


class Api:
    def __init__(self, client: TestClient[Any, Any], key: str, store: Store, c: Context) -> None:
        self.client = client
        self.key = key
        self.store = store
        self.c = c

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        resp = await self.client.request(
            method, path, json=body, headers={"Authorization": f"Bearer {self.key}"}
        )
        text = await resp.text()
        # No answer of this API may carry a value, whatever the route and status.
        assert "s3cr3t" not in text
        return resp.status, (json.loads(text) if text else None)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = open_store(tmp_path)
    await store.open()
    app, c = await build_app(ManagerConfig(data_dir=tmp_path), store)
    _, key = await create_api_key(store, "test", groups=(ADMIN_GROUP,))
    async with TestClient(TestServer(app)) as client:
        yield Api(client, key, store, c)
    await store.close()


def _s(name: str) -> str:
    return f"/api/v1/secrets/{quote(name, safe='')}"


async def test_builtin_manager_is_listed_tested_and_cannot_be_deleted(api: Api) -> None:
    status, body = await api.call("GET", "/api/v1/secret-managers")
    assert status == 200
    assert [(m["name"], m["kind"], m["builtin"]) for m in body["secret_managers"]] == [
        ("builtin", "builtin", True)
    ]
    assert (await api.call("POST", "/api/v1/secret-managers/builtin/test"))[1]["ok"] is True
    status, body = await api.call("DELETE", "/api/v1/secret-managers/builtin")
    assert status == 409
    assert "cannot be deleted" in body["error"]["message"]


async def test_create_update_versions_and_delete_a_builtin_secret(api: Api) -> None:
    status, created = await api.call("POST", "/api/v1/secrets", {"name": "team/db", "value": VALUE})
    assert status == 201
    assert created["manager"] == "builtin"
    assert created["mode"] == "inline"
    assert created["current_version"] == 1
    status, updated = await api.call("PATCH", _s("team/db"), {"value": VALUE + "-2"})
    assert status == 200
    assert updated["current_version"] == 2
    status, versions = await api.call("GET", _s("team/db") + "/versions")
    assert [(v["version"], v["current"]) for v in versions["versions"]] == [(2, True), (1, False)]
    assert versions["versions"][1]["size"] == len(VALUE.encode())
    assert versions["versions"][0]["key"].startswith("builtin:")
    status, listed = await api.call("GET", "/api/v1/secrets")
    assert [s["name"] for s in listed["secrets"]] == ["team/db"]
    assert (await api.call("DELETE", _s("team/db")))[0] == 204
    assert (await api.call("GET", _s("team/db")))[0] == 404


async def test_the_store_keeps_ciphertext_only(api: Api, tmp_path: Path) -> None:
    await api.call("POST", "/api/v1/secrets", {"name": "plain", "value": VALUE})
    secret = await api.store.secret_by_name("plain")
    assert secret is not None
    (version,) = await api.store.secret_versions(secret.id)
    assert version.envelope is not None
    assert "s3cr3t" not in version.envelope
    assert base64.b64encode(VALUE.encode()).decode()[:12] not in version.envelope
    # Nor anywhere in the database file, WAL included.
    for path in tmp_path.glob("tether.db*"):
        assert b"s3cr3t" not in path.read_bytes()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"name": "x", "value": VALUE, "ref": {"path": "p"}}, 400, "exactly one"),
        ({"name": "x", "value": ""}, 400, "empty"),
        ({"name": "x", "type": "file", "value_base64": "@@"}, 400, "base64"),
        ({"name": "x", "type": "ssh_key", "fields": {"user": "u"}}, 400, "'key'"),
        ({"name": "x", "type": "winrm", "fields": {"user": "u", "pw": "p"}}, 400, "no field"),
        ({"name": "x", "ref": {"path": "kv/x"}}, 400, "reference"),
        ({"name": "x", "manager": "nope", "value": VALUE}, 400, "no secret manager"),
        ({"name": "bad//name", "value": VALUE}, 400, "name"),
        ({"name": "x", "value": "v" * (64 * 1024 + 1)}, 413, "at most"),
    ],
)
async def test_bad_secrets_are_refused_with_a_reason_and_no_value(
    api: Api, body: dict[str, Any], status: int, words: str
) -> None:
    got, answer = await api.call("POST", "/api/v1/secrets", body)
    assert got == status
    assert words in json.dumps(answer)
    assert (await api.store.secret_by_name("x")) is None


async def test_manager_settings_and_kinds_are_checked(api: Api) -> None:
    status, body = await api.call(
        "POST", "/api/v1/secret-managers", {"name": "kms", "kind": "aws_kms"}
    )
    assert status == 400
    assert "key_id" in body["error"]["message"]
    status, body = await api.call(
        "POST",
        "/api/v1/secret-managers",
        {"name": "kms", "kind": "aws_kms", "settings": {"key_id": "k", "colour": "red"}},
    )
    assert status == 400
    assert "colour" in body["error"]["message"]
    status, body = await api.call(
        "POST", "/api/v1/secret-managers", {"name": "b2", "kind": "builtin"}
    )
    assert status == 400


async def test_credentials_from_another_external_manager_are_refused_as_a_cycle(
    api: Api,
) -> None:
    status, _ = await api.call(
        "POST",
        "/api/v1/secret-managers",
        {"name": "vault", "kind": "vault_kv", "settings": {"url": "http://127.0.0.1:1"}},
    )
    assert status == 201
    status, _ = await api.call(
        "POST", "/api/v1/secrets", {"name": "in-vault", "manager": "vault", "ref": {"path": "a"}}
    )
    assert status == 201
    status, body = await api.call(
        "POST",
        "/api/v1/secret-managers",
        {
            "name": "kms",
            "kind": "aws_kms",
            "settings": {"key_id": "k"},
            "credentials_secret": "in-vault",
        },
    )
    assert status == 400
    message = body["error"]["message"]
    assert "cycle" in message
    assert "kms -> in-vault -> vault" in message
    # Pointing the manager at its own secret is the shortest cycle.
    status, body = await api.call(
        "PATCH", "/api/v1/secret-managers/vault", {"credentials_secret": "in-vault"}
    )
    assert status == 400
    assert "vault -> in-vault -> vault" in body["error"]["message"]


async def test_a_reference_cannot_be_migrated_and_a_used_manager_not_deleted(api: Api) -> None:
    await api.call(
        "POST", "/api/v1/secret-managers", {"name": "vault", "kind": "vault_kv", "settings": {}}
    )
    await api.call(
        "POST",
        "/api/v1/secrets",
        {"name": "r", "manager": "vault", "ref": {"path": "app", "key": "pw", "version": "3"}},
    )
    status, body = await api.call("POST", _s("r") + "/migrate", {"to": "builtin"})
    assert status == 400
    assert "a reference cannot be migrated" in body["error"]["message"]
    status, versions = await api.call("GET", _s("r") + "/versions")
    assert versions["versions"][0]["ref"] == {"path": "app", "key": "pw", "version": "3"}
    assert (await api.call("DELETE", "/api/v1/secret-managers/vault"))[0] == 409
    assert (await api.call("DELETE", _s("r")))[0] == 204
    assert (await api.call("DELETE", "/api/v1/secret-managers/vault"))[0] == 204


async def test_a_credentials_secret_cannot_be_deleted_while_used(api: Api) -> None:
    await api.call(
        "POST", "/api/v1/secrets", {"name": "vault-token", "value": '{"token": "t0k3n"}'}
    )
    status, _ = await api.call(
        "POST",
        "/api/v1/secret-managers",
        {"name": "vault", "kind": "vault_kv", "credentials_secret": "vault-token"},
    )
    assert status == 201
    status, body = await api.call("DELETE", _s("vault-token"))
    assert status == 409
    assert "vault" in body["error"]["message"]


async def test_a_malformed_expression_is_refused_at_submit(api: Api) -> None:
    status, body = await api.call(
        "POST",
        "/api/v1/tasks",
        {"payload": {"type": "shell", "script": 'echo ${secrets.getValue("x"}'}},
    )
    assert status == 400
    assert "payload.script" in body["error"]["message"]


async def test_acquire_delivers_a_builtin_key_sealed_to_the_delegate(api: Api) -> None:
    await api.call("POST", "/api/v1/secrets", {"name": "db", "value": VALUE})
    await api.call("POST", "/api/v1/secrets", {"name": "vault-token", "value": '{"token": "t0k"}'})
    await api.call(
        "POST",
        "/api/v1/secret-managers",
        {"name": "vault", "kind": "vault_kv", "credentials_secret": "vault-token"},
    )
    await api.call(
        "POST", "/api/v1/secrets", {"name": "ref", "manager": "vault", "ref": {"path": "p"}}
    )
    private, public = generate_keypair()
    task = TaskRecord(
        id="task_x",
        type="shell",
        state=TaskState.RUNNING,
        payload={
            "type": "shell",
            "script": 'echo ${secrets.getValue("db")} ${secrets.getValue("ref")}',
            "env": {"A": '${configFile.getAsBase64("missing")}'},
        },
        selectors=(),
        timeout_s=10,
        queue_timeout_s=10,
        max_attempts=1,
        created_at=0,
        attempt=3,
    )
    assert api.c.secrets is not None
    deliveries, credentials, unavailable = await api.c.secrets.deliver(
        task, 3, public_key_b64(public)
    )
    assert unavailable == {"missing": "no such secret"}
    by_name = {d.name: d for d in deliveries}
    db = by_name["db"]
    assert db.blob is not None
    assert db.sealed_key is not None
    assert db.envelope is None
    data_key = open_sealed(
        private, db.sealed_key, context=delivery_context("task_x", 3, db.secret_id, db.version)
    )
    ctx = EnvelopeContext(account=db.account, secret_id=db.secret_id, version=db.version)
    assert decrypt_value(data_key, base64.b64decode(db.blob), ctx) == VALUE.encode()
    # Bound to the attempt: the same box does not open for another one.
    with pytest.raises(SealError, match="another context"):
        open_sealed(private, db.sealed_key, context=delivery_context("task_x", 4, db.secret_id, 1))
    ref = by_name["ref"]
    assert ref.ref is not None
    assert ref.ref.path == "p"
    assert ref.blob is None
    sealed = credentials[ref.manager.id]
    plain = open_sealed(private, sealed, context=credentials_context("task_x", 3, ref.manager.id))
    assert json.loads(plain) == {"token": "t0k"}

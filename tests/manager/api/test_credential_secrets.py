"""A secret that holds a secret manager's credentials serves that manager's operations, not
tasks: unless it is given a usage scope of its own, a task or a profile naming it is refused
(4xx naming the secret and why), and delivery refuses it too."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from manager.records import TaskRecord
from manager.schemas.secrets import SecretCreate, SecretManagerCreate
from manager.secrets.ops import manager_spec
from manager.server.app import ManagerConfig, build_app, open_store
from shared.masking import MASK, Masker
from shared.protocol import TaskState
from shared.sealing import generate_keypair, public_key_b64
from shared.secretspec import SecretOpPayload
from tests.manager.api.test_secrets import Api, api

__all__ = ["api"]

TOKEN = '{"token": "hvs.vault-token-0123456789"}'
SCRIPT = 'echo ${secrets.getValue("vault-token")}'


def _running(task_id: str, payload: dict[str, object]) -> TaskRecord:
    """A task in its first attempt, as acquire finds it."""
    return TaskRecord(
        id=task_id,
        type=str(payload["type"]),
        state=TaskState.RUNNING,
        payload=payload,
        selectors=(),
        timeout_s=10,
        queue_timeout_s=10,
        max_attempts=1,
        created_at=0,
        attempt=1,
    )


async def _vault_with_credentials(api: Api) -> None:
    assert (await api.call("POST", "/api/v1/secrets", {"name": "vault-token", "value": TOKEN}))[
        0
    ] == 201
    status, _ = await api.call(
        "POST",
        "/api/v1/secret-managers",
        {"name": "vault", "kind": "vault_kv", "credentials_secret": "vault-token"},
    )
    assert status == 201


async def test_a_task_naming_a_credentials_secret_is_refused(api: Api) -> None:
    await _vault_with_credentials(api)
    status, body = await api.call(
        "POST", "/api/v1/tasks", {"payload": {"type": "shell", "script": SCRIPT}}
    )
    assert status == 403
    message = body["error"]["message"]
    assert "'vault-token'" in message
    assert "credentials of secret manager vault" in message
    assert (await api.call("GET", "/api/v1/tasks"))[1]["tasks"] == []


async def test_a_profile_naming_a_credentials_secret_is_refused(api: Api) -> None:
    await _vault_with_credentials(api)
    status, body = await api.call("PUT", "/api/v1/profiles/p1", {"script": SCRIPT, "selectors": []})
    assert status == 400, body
    assert "'vault-token'" in body["error"]["message"]
    assert "credentials" in body["error"]["message"]


async def test_a_secret_without_that_role_is_usable(api: Api) -> None:
    await api.call("POST", "/api/v1/secrets", {"name": "vault-token", "value": TOKEN})
    status, _ = await api.call(
        "POST", "/api/v1/tasks", {"payload": {"type": "shell", "script": SCRIPT}}
    )
    assert status == 201


async def test_an_explicit_scope_of_its_own_lets_tasks_use_it(api: Api) -> None:
    await _vault_with_credentials(api)
    status, _ = await api.call(
        "PUT",
        f"/api/v1/secrets/{quote('vault-token')}/scope",
        {"scope": {"targets": [{"apps": "all", "envs": "all"}]}},
    )
    assert status == 200
    status, _ = await api.call(
        "POST", "/api/v1/tasks", {"payload": {"type": "shell", "script": SCRIPT}}
    )
    assert status == 201


async def test_delivery_refuses_it_when_it_became_credentials_after_the_submit(api: Api) -> None:
    await api.call("POST", "/api/v1/secrets", {"name": "vault-token", "value": TOKEN})
    await api.call(
        "POST",
        "/api/v1/secret-managers",
        {"name": "vault", "kind": "vault_kv", "credentials_secret": "vault-token"},
    )
    _private, public = generate_keypair()
    task = _running("task_y", {"type": "shell", "script": SCRIPT})
    assert api.c.secrets is not None
    deliveries, _creds, unavailable = await api.c.secrets.deliver(task, 1, public_key_b64(public))
    assert deliveries == []
    assert "credentials of secret manager vault" in unavailable["vault-token"]


async def test_sealing_credentials_for_a_delegate_teaches_the_managers_masker(
    tmp_path: Path,
) -> None:
    """The manager's log output and audit diffs pass this masker: once the credentials
    crossed the process, the token alone is masked, not only the JSON holding it."""
    masker = Masker()
    store = open_store(tmp_path)
    await store.open()
    try:
        _app, c = await build_app(ManagerConfig(data_dir=tmp_path, masker=masker), store)
        assert c.secrets is not None
        await c.secrets.create_secret(SecretCreate(name="vault-token", value=TOKEN))
        await c.secrets.create_manager(
            SecretManagerCreate(name="vault", kind="vault_kv", credentials_secret="vault-token")
        )
        vault = await c.secrets.manager("vault")
        op = _running(
            "task_op", SecretOpPayload(op="check", manager=manager_spec(vault)).model_dump()
        )
        _private, public = generate_keypair()
        _d, credentials, unavailable = await c.secrets.deliver(op, 1, public_key_b64(public))
    finally:
        await store.close()
    assert unavailable == {}
    assert list(credentials) == [vault.id]
    masked = masker.mask_text("token hvs.vault-token-0123456789 refused")
    assert masked == f"token {MASK.decode()} refused"

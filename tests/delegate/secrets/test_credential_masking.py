"""A secret manager's credentials are masked on the delegate: a connection test whose error
quotes the token (as a Vault answer may) shows the mask, not the token."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from delegate.run.executor import execute
from delegate.run.logstream import LogStream
from delegate.secrets.providers import ManagerCredentials
from shared.masking import MASK, Masker
from shared.protocol import LogLine, ShellPayload, TaskSpec
from shared.secretspec import ManagerSpec, SecretOpPayload, credential_values
from tests.delegate.secret_helpers import (
    ATTEMPT,
    TASK_ID,
    acquire,
    delegate_key,
    referenced,
    sealed_credentials,
)
from tests.delegate.test_agent_secrets import agent_with

TOKEN = "hvs.CAESIJ-leaky-vault-token-0123456789"


@pytest.fixture
async def echoing_vault() -> AsyncIterator[str]:
    """A Vault stand-in whose token lookup is refused with the token quoted back."""

    async def lookup(request: web.Request) -> web.Response:
        token = request.headers.get("X-Vault-Token", "")
        body = json.dumps({"errors": [f"token {token} is malformed"]}).encode()
        # hvac reads the errors only under this exact content type (no charset).
        return web.Response(body=body, status=400, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/v1/{rest:.*}", lookup)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


async def test_secret_manager_test_error_quoting_its_token_is_masked(
    echoing_vault: str, tmp_path: Path
) -> None:
    key = delegate_key()
    manager = ManagerSpec(
        id="sm_vault", name="vault", kind="vault_kv", settings={"url": echoing_vault}
    )
    credentials = ManagerCredentials(
        key.private,
        task_id=TASK_ID,
        attempt=ATTEMPT,
        sealed=sealed_credentials(key, manager, {"token": TOKEN}),
    )
    lines: list[LogLine] = []

    async def sink(line: LogLine) -> None:
        lines.append(line)

    masker = Masker()  # knows nothing yet: the credentials must join it on the way
    log = LogStream(masker, sink, flush_after=0.05)
    result = await asyncio.wait_for(
        execute(
            TaskSpec(
                id=TASK_ID, payload=SecretOpPayload(op="check", manager=manager), timeout_s=20
            ),
            secret_env={},
            log=log,
            cancel=asyncio.Event(),
            kill_grace=0.2,
            work_root=tmp_path,
            credentials=credentials,
        ),
        30,
    )
    assert result.status == "failed"
    assert result.error is not None
    assert "malformed" in result.error  # the server's answer did come through
    assert TOKEN not in result.error
    assert MASK.decode() in result.error
    assert all(TOKEN not in line.text for line in lines)


def test_credentials_values_are_the_document_and_each_string() -> None:
    key = delegate_key()
    manager = ManagerSpec(id="sm_x", name="x", kind="vault_kv", settings={"url": "http://x"})
    sealed = sealed_credentials(key, manager, {"role_id": "role-1234567", "secret_id": TOKEN})
    values = ManagerCredentials(key.private, task_id=TASK_ID, attempt=ATTEMPT, sealed=sealed)
    assert {"role-1234567", TOKEN} <= set(values.values())
    # Sealed for another attempt: it does not open, and nothing is made up.
    other = ManagerCredentials(key.private, task_id=TASK_ID, attempt=ATTEMPT + 1, sealed=sealed)
    assert other.values() == []


def test_credential_values_of_a_non_json_document_is_the_document() -> None:
    assert credential_values(b"plain-token-value") == ["plain-token-value"]
    assert credential_values(b'{"a": "x1234567", "n": 3}') == [
        '{"a": "x1234567", "n": 3}',
        "x1234567",
    ]


async def test_a_task_whose_secret_fetch_error_quotes_the_token_shows_the_mask(
    echoing_vault: str, tmp_path: Path
) -> None:
    """Through the agent: the credentials join the task's and the process's maskers before
    the reference is fetched, so the failed task's error does not carry the token."""
    key = delegate_key()
    manager = ManagerSpec(
        id="sm_vault", name="vault", kind="vault_kv", settings={"url": echoing_vault}
    )
    answer = acquire(
        ShellPayload(script='echo ${secrets.getValue("db")}'),
        [referenced(manager, "db", "app/db", key="password")],
        credentials=sealed_credentials(key, manager, {"token": TOKEN}),
    )

    async with agent_with(key, answer, tmp_path / "data") as running:
        result = await running.result()

    assert result.status == "failed"
    assert result.error is not None
    assert "malformed" in result.error
    assert TOKEN not in result.error
    assert running.process_masker.mask_text(TOKEN) == MASK.decode()

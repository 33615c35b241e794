"""Secret operations run through execute(), against real OpenBao Transit and moto KMS."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from delegate.run.executor import ExecutionResult, execute
from delegate.run.logstream import LogStream
from delegate.secrets.aws import AwsKms
from delegate.secrets.base import ProviderConfig
from delegate.secrets.providers import ManagerCredentials
from delegate.secrets.vault import VaultTransit
from shared.envelope import EnvelopeContext, new_data_key
from shared.masking import Masker
from shared.protocol import LogLine, TaskSpec
from shared.sealing import generate_keypair, open_sealed, public_key_b64
from shared.secretspec import ManagerSpec, SecretOpPayload, op_key_context
from tests.delegate.secret_helpers import (
    ATTEMPT,
    TASK_ID,
    DelegateKey,
    delegate_key,
    sealed_credentials,
)
from tests.delegate.secrets.conftest import Bao

pytestmark = pytest.mark.usefixtures("vault_env", "aws_env")

CTX = EnvelopeContext(account="acct_test", secret_id="sec_inline", version=2).canonical()
CTX_B64 = base64.b64encode(CTX).decode()


@dataclass
class Op:
    result: ExecutionResult
    lines: list[LogLine]

    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


@pytest.fixture
def key() -> DelegateKey:
    return delegate_key()


@pytest.fixture
def transit_manager(bao: Bao, transit_key: str) -> ManagerSpec:
    return ManagerSpec(
        id="sm_transit",
        name="transit",
        kind="vault_transit",
        settings={"url": bao.url, "key_name": transit_key},
    )


@pytest.fixture
def kms_manager(moto_endpoint: str) -> ManagerSpec:
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_endpoint)
    key_id = kms.create_key(Description="tether ops")["KeyMetadata"]["KeyId"]
    return ManagerSpec(
        id="sm_kms",
        name="kms",
        kind="aws_kms",
        settings={"key_id": key_id, "region": "us-east-1", "endpoint": moto_endpoint},
    )


def transit(bao: Bao, manager: ManagerSpec) -> VaultTransit:
    return VaultTransit(ProviderConfig(manager.kind, manager.settings, {"token": bao.root_token}))


def kms(manager: ManagerSpec) -> AwsKms:
    return AwsKms(ProviderConfig(manager.kind, manager.settings))


async def run_op(
    payload: SecretOpPayload,
    key: DelegateKey,
    tmp_path: Path,
    *,
    secret_env: Mapping[str, str] | None = None,
    credentials: Mapping[str, str] | None = None,
) -> Op:
    lines: list[LogLine] = []

    async def sink(line: LogLine) -> None:
        lines.append(line)

    # A masker that knows nothing: whatever the operation logs is shipped as it is.
    log = LogStream(Masker(), sink, flush_after=0.05)
    creds = ManagerCredentials(
        key.private, task_id=TASK_ID, attempt=ATTEMPT, sealed=credentials or {}
    )
    result = await asyncio.wait_for(
        execute(
            TaskSpec(id=TASK_ID, payload=payload, timeout_s=20),
            secret_env=secret_env or {},
            credentials=creds,
            log=log,
            cancel=asyncio.Event(),
            kill_grace=0.2,
            work_root=tmp_path,
        ),
        30,
    )
    return Op(result, lines)


def token(key: DelegateKey, bao: Bao, manager: ManagerSpec) -> dict[str, str]:
    return sealed_credentials(key, manager, {"token": bao.root_token})


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --- check -------------------------------------------------------------------------------


async def test_check_passes_with_the_token_from_the_task(
    bao: Bao, transit_manager: ManagerSpec, key: DelegateKey, tmp_path: Path
) -> None:
    payload = SecretOpPayload(op="check", manager=transit_manager)

    op = await run_op(payload, key, tmp_path, credentials=token(key, bao, transit_manager))

    assert (op.result.status, op.result.error, op.result.outputs) == ("succeeded", None, {})
    assert op.text() == "check with secret manager 'transit' (vault_transit): done"


async def test_check_with_a_refused_token_fails_with_a_safe_reason(
    transit_manager: ManagerSpec, key: DelegateKey, tmp_path: Path
) -> None:
    payload = SecretOpPayload(op="check", manager=transit_manager)
    creds = sealed_credentials(key, transit_manager, {"token": "hvs.not-a-real-token"})

    op = await run_op(payload, key, tmp_path, credentials=creds)

    assert op.result.status == "failed"
    assert op.result.error is not None
    assert op.result.error.startswith("check with secret manager 'transit' (vault_transit): ")
    assert "not-a-real-token" not in op.result.error


async def test_check_of_kms_uses_the_delegates_environment(
    kms_manager: ManagerSpec, key: DelegateKey, tmp_path: Path
) -> None:
    op = await run_op(SecretOpPayload(op="check", manager=kms_manager), key, tmp_path)

    assert op.result.status == "succeeded"


# --- wrap ----------------------------------------------------------------------------------


async def test_wrap_with_transit_unwraps_to_the_data_key_and_logs_no_key(
    bao: Bao, transit_manager: ManagerSpec, key: DelegateKey, tmp_path: Path
) -> None:
    data_key = new_data_key()
    payload = SecretOpPayload(op="wrap", manager=transit_manager, context=CTX_B64)

    op = await run_op(
        payload,
        key,
        tmp_path,
        secret_env={"TETHER_DATA_KEY": b64(data_key)},
        credentials=token(key, bao, transit_manager),
    )

    assert op.result.status == "succeeded", op.result.error
    wrapped = base64.b64decode(op.result.outputs["wrapped_key"])
    assert await transit(bao, transit_manager).unwrap_key(wrapped, CTX) == data_key
    assert b64(data_key) not in op.text()
    assert b64(data_key) not in str(op.result.outputs)


async def test_wrap_with_kms_binds_the_context(
    kms_manager: ManagerSpec, key: DelegateKey, tmp_path: Path
) -> None:
    data_key = new_data_key()
    payload = SecretOpPayload(op="wrap", manager=kms_manager, context=CTX_B64)

    op = await run_op(payload, key, tmp_path, secret_env={"TETHER_DATA_KEY": b64(data_key)})

    assert op.result.status == "succeeded", op.result.error
    wrapped = base64.b64decode(op.result.outputs["wrapped_key"])
    assert await kms(kms_manager).unwrap_key(wrapped, CTX) == data_key


async def test_wrap_without_a_data_key_fails(
    kms_manager: ManagerSpec, key: DelegateKey, tmp_path: Path
) -> None:
    payload = SecretOpPayload(op="wrap", manager=kms_manager, context=CTX_B64)

    op = await run_op(payload, key, tmp_path)

    assert op.result.status == "failed"
    assert op.result.error == (
        "wrap with secret manager 'kms' (aws_kms): the sealed env's TETHER_DATA_KEY is missing"
    )


async def test_wrap_under_a_context_that_is_not_an_envelope_context_fails(
    kms_manager: ManagerSpec, key: DelegateKey, tmp_path: Path
) -> None:
    payload = SecretOpPayload(op="wrap", manager=kms_manager, context=b64(b"any bytes"))

    op = await run_op(payload, key, tmp_path, secret_env={"TETHER_DATA_KEY": b64(new_data_key())})

    assert op.result.status == "failed"
    assert op.result.error is not None
    assert "context is not an envelope context" in op.result.error


# --- unwrap --------------------------------------------------------------------------------


async def test_unwrap_seals_the_data_key_to_the_reply_key(
    bao: Bao, transit_manager: ManagerSpec, key: DelegateKey, tmp_path: Path
) -> None:
    data_key = new_data_key()
    wrapped = await transit(bao, transit_manager).wrap_key(data_key, CTX)
    reply_private, reply_public = generate_keypair()
    payload = SecretOpPayload(
        op="unwrap",
        manager=transit_manager,
        context=CTX_B64,
        wrapped_key=b64(wrapped),
        reply_key=public_key_b64(reply_public),
    )

    op = await run_op(payload, key, tmp_path, credentials=token(key, bao, transit_manager))

    assert op.result.status == "succeeded", op.result.error
    sealed = op.result.outputs["sealed_key"]
    assert open_sealed(reply_private, sealed, context=op_key_context(TASK_ID)) == data_key
    assert b64(data_key) not in op.text()


async def test_unwrap_with_kms_under_another_context_fails(
    kms_manager: ManagerSpec, key: DelegateKey, tmp_path: Path
) -> None:
    wrapped = await kms(kms_manager).wrap_key(new_data_key(), CTX)
    other = EnvelopeContext(account="acct_test", secret_id="sec_inline", version=3).canonical()
    _, reply_public = generate_keypair()
    payload = SecretOpPayload(
        op="unwrap",
        manager=kms_manager,
        context=b64(other),
        wrapped_key=b64(wrapped),
        reply_key=public_key_b64(reply_public),
    )

    op = await run_op(payload, key, tmp_path)

    assert op.result.status == "failed"
    assert op.result.error is not None
    assert "another context" in op.result.error


# --- rewrap --------------------------------------------------------------------------------


async def test_rewrap_from_transit_to_kms(
    bao: Bao,
    transit_manager: ManagerSpec,
    kms_manager: ManagerSpec,
    key: DelegateKey,
    tmp_path: Path,
) -> None:
    data_key = new_data_key()
    wrapped = await transit(bao, transit_manager).wrap_key(data_key, CTX)
    payload = SecretOpPayload(
        op="rewrap",
        manager=transit_manager,
        target=kms_manager,
        context=CTX_B64,
        wrapped_key=b64(wrapped),
    )

    op = await run_op(payload, key, tmp_path, credentials=token(key, bao, transit_manager))

    assert op.result.status == "succeeded", op.result.error
    rewrapped = base64.b64decode(op.result.outputs["wrapped_key"])
    assert await kms(kms_manager).unwrap_key(rewrapped, CTX) == data_key
    assert op.text() == (
        "rewrap with secret manager 'transit' (vault_transit) to 'kms' (aws_kms): done"
    )

"""AWS KMS and Secrets Manager against a real moto server."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from delegate.secrets.aws import AwsKms, AwsSecretsManager
from delegate.secrets.base import ProviderConfig, SecretError, SecretRef
from delegate.secrets.registry import make_provider
from shared.envelope import EnvelopeContext, open_with, seal_with
from tests.delegate.secrets.conftest import free_port

pytestmark = pytest.mark.usefixtures("aws_env")

CTX = EnvelopeContext(account="acct-1", secret_id="sec-1", version=3)
OTHER = EnvelopeContext(account="acct-1", secret_id="sec-1", version=4)


@pytest.fixture
def kms_admin(moto_endpoint: str, aws_env: None) -> Any:
    return boto3.client("kms", region_name="us-east-1", endpoint_url=moto_endpoint)


@pytest.fixture
def sm_admin(moto_endpoint: str, aws_env: None) -> Any:
    return boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto_endpoint)


@pytest.fixture
def key_id(kms_admin: Any) -> str:
    key: str = kms_admin.create_key(Description="tether test")["KeyMetadata"]["KeyId"]
    return key


def kms(endpoint: str, key_id: str, **kwargs: Any) -> AwsKms:
    config = ProviderConfig(
        kind="aws_kms", settings={"key_id": key_id, "region": "us-east-1", "endpoint": endpoint}
    )
    return AwsKms(config, **kwargs)


def secrets_manager(endpoint: str, credentials: dict[str, str] | None = None) -> AwsSecretsManager:
    config = ProviderConfig(
        kind="aws_secrets_manager",
        settings={"region": "us-east-1", "endpoint": endpoint},
        credentials=credentials or {},
    )
    return AwsSecretsManager(config)


# --- KMS ---------------------------------------------------------------------------------


async def test_generate_data_key_unwraps_with_the_same_context(
    moto_endpoint: str, key_id: str
) -> None:
    provider = kms(moto_endpoint, key_id)
    plaintext, wrapped = await provider.generate_data_key(CTX.canonical())
    assert len(plaintext) == 32
    assert plaintext not in wrapped
    assert await provider.unwrap_key(wrapped, CTX.canonical()) == plaintext


async def test_generate_data_key_refuses_another_context(moto_endpoint: str, key_id: str) -> None:
    provider = kms(moto_endpoint, key_id)
    _, wrapped = await provider.generate_data_key(CTX.canonical())
    with pytest.raises(SecretError, match="wrapped for another context or key"):
        await provider.unwrap_key(wrapped, OTHER.canonical())


async def test_kms_envelope_round_trip(moto_endpoint: str, key_id: str) -> None:
    provider = kms(moto_endpoint, key_id)
    envelope = await seal_with(provider, "aws_kms", key_id, b"db-password", CTX)
    assert await open_with(provider, envelope, CTX) == b"db-password"


async def test_kms_envelope_wrong_context_fails(moto_endpoint: str, key_id: str) -> None:
    provider = kms(moto_endpoint, key_id)
    envelope = await seal_with(provider, "aws_kms", key_id, b"db-password", CTX)
    with pytest.raises(SecretError, match="wrapped for another context or key"):
        await open_with(provider, envelope, OTHER)


async def test_kms_key_by_alias_works(moto_endpoint: str, key_id: str, kms_admin: Any) -> None:
    alias = f"alias/tether-{key_id[:8]}"
    kms_admin.create_alias(AliasName=alias, TargetKeyId=key_id)
    provider = kms(moto_endpoint, alias)
    wrapped = await provider.wrap_key(b"k" * 32, CTX.canonical())
    assert await provider.unwrap_key(wrapped, CTX.canonical()) == b"k" * 32


async def test_disabled_key_is_refused_on_unwrap(
    moto_endpoint: str, key_id: str, kms_admin: Any
) -> None:
    wrapped = await kms(moto_endpoint, key_id).wrap_key(b"k" * 32, CTX.canonical())
    kms_admin.disable_key(KeyId=key_id)
    with pytest.raises(SecretError, match=f"aws_kms: key '{key_id}' is disabled"):
        await kms(moto_endpoint, key_id).unwrap_key(wrapped, CTX.canonical())


async def test_disabled_key_is_refused_once_the_cached_state_expires(
    moto_endpoint: str, key_id: str, kms_admin: Any
) -> None:
    provider = kms(moto_endpoint, key_id, key_state_ttl=0)
    wrapped = await provider.wrap_key(b"k" * 32, CTX.canonical())
    kms_admin.disable_key(KeyId=key_id)
    with pytest.raises(SecretError, match="is disabled"):
        await provider.unwrap_key(wrapped, CTX.canonical())


async def test_check_refuses_a_disabled_key(
    moto_endpoint: str, key_id: str, kms_admin: Any
) -> None:
    kms_admin.disable_key(KeyId=key_id)
    with pytest.raises(SecretError, match="is disabled"):
        await kms(moto_endpoint, key_id).check()


async def test_check_refuses_a_key_pending_deletion(
    moto_endpoint: str, key_id: str, kms_admin: Any
) -> None:
    kms_admin.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    with pytest.raises(SecretError, match="is pending deletion"):
        await kms(moto_endpoint, key_id).check()


async def test_check_refuses_an_asymmetric_key(moto_endpoint: str, kms_admin: Any) -> None:
    rsa = kms_admin.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
    with pytest.raises(SecretError, match="is not a symmetric encryption key"):
        await kms(moto_endpoint, rsa["KeyMetadata"]["KeyId"]).check()


async def test_check_passes_on_an_enabled_key(moto_endpoint: str, key_id: str) -> None:
    await kms(moto_endpoint, key_id).check()


async def test_missing_key_is_not_found(moto_endpoint: str) -> None:
    with pytest.raises(SecretError, match="aws_kms: not found: describe key 'alias/nope'"):
        await kms(moto_endpoint, "alias/nope").check()


async def test_a_context_that_is_not_an_envelope_context_is_refused(
    moto_endpoint: str, key_id: str
) -> None:
    with pytest.raises(SecretError, match="not an envelope context"):
        await kms(moto_endpoint, key_id).wrap_key(b"k" * 32, b"free-form")


async def test_unreachable_endpoint_is_reported(key_id: str) -> None:
    provider = kms(f"http://127.0.0.1:{free_port()}", key_id, timeout=1)
    with pytest.raises(SecretError, match="cannot reach AWS"):
        await provider.check()


# --- Secrets Manager ---------------------------------------------------------------------


async def test_secrets_manager_reads_the_current_version(
    moto_endpoint: str, sm_admin: Any, unique: str
) -> None:
    sm_admin.create_secret(Name=f"app/{unique}", SecretString="first-value")
    sm_admin.put_secret_value(SecretId=f"app/{unique}", SecretString="second-value")
    value = await secrets_manager(moto_endpoint).fetch(SecretRef(path=f"app/{unique}"))
    assert value == b"second-value"


async def test_secrets_manager_asks_for_awscurrent_by_name(
    moto_endpoint: str, sm_admin: Any, unique: str
) -> None:
    sm_admin.create_secret(Name=f"app/{unique}", SecretString="current-value")
    sm_admin.put_secret_value(
        SecretId=f"app/{unique}", SecretString="pending-value", VersionStages=["AWSPENDING"]
    )
    provider = secrets_manager(moto_endpoint)
    sent: list[dict[str, Any]] = []
    provider._aws.get().meta.events.register(
        "provide-client-params.secrets-manager.GetSecretValue",
        lambda params, **_: sent.append(dict(params)),
    )
    assert await provider.fetch(SecretRef(path=f"app/{unique}")) == b"current-value"
    assert sent == [{"SecretId": f"app/{unique}", "VersionStage": "AWSCURRENT"}]


async def test_secrets_manager_pinned_version_id(
    moto_endpoint: str, sm_admin: Any, unique: str
) -> None:
    first = sm_admin.create_secret(Name=f"app/{unique}", SecretString="first-value")
    sm_admin.put_secret_value(SecretId=f"app/{unique}", SecretString="second-value")
    ref = SecretRef(path=f"app/{unique}", version=first["VersionId"])
    assert await secrets_manager(moto_endpoint).fetch(ref) == b"first-value"


async def test_secrets_manager_json_key(moto_endpoint: str, sm_admin: Any, unique: str) -> None:
    document = {"username": "app", "password": "json-value", "port": 5432}
    sm_admin.create_secret(Name=f"app/{unique}", SecretString=json.dumps(document))
    provider = secrets_manager(moto_endpoint)
    assert await provider.fetch(SecretRef(path=f"app/{unique}", key="password")) == b"json-value"
    assert await provider.fetch(SecretRef(path=f"app/{unique}", key="port")) == b"5432"


async def test_secrets_manager_missing_json_key_names_no_value(
    moto_endpoint: str, sm_admin: Any, unique: str
) -> None:
    sm_admin.create_secret(Name=f"app/{unique}", SecretString='{"password": "json-value"}')
    with pytest.raises(SecretError, match=f"secret 'app/{unique}' has no key 'nope'") as info:
        await secrets_manager(moto_endpoint).fetch(SecretRef(path=f"app/{unique}", key="nope"))
    assert "json-value" not in str(info.value)


async def test_secrets_manager_key_of_a_non_json_secret_is_refused(
    moto_endpoint: str, sm_admin: Any, unique: str
) -> None:
    sm_admin.create_secret(Name=f"app/{unique}", SecretString="plain-value")
    with pytest.raises(SecretError, match="is not a JSON object") as info:
        await secrets_manager(moto_endpoint).fetch(SecretRef(path=f"app/{unique}", key="k"))
    assert "plain-value" not in str(info.value)
    assert info.value.__cause__ is None


async def test_secrets_manager_binary_secret(
    moto_endpoint: str, sm_admin: Any, unique: str
) -> None:
    sm_admin.create_secret(Name=f"bin/{unique}", SecretBinary=b"\x00\x01binary")
    provider = secrets_manager(moto_endpoint)
    assert await provider.fetch(SecretRef(path=f"bin/{unique}")) == b"\x00\x01binary"


async def test_secrets_manager_missing_secret_is_a_clear_error(
    moto_endpoint: str, unique: str
) -> None:
    with pytest.raises(SecretError, match=f"aws_secrets_manager: not found: secret 'app/{unique}'"):
        await secrets_manager(moto_endpoint).fetch(SecretRef(path=f"app/{unique}"))


async def test_secrets_manager_missing_version_is_a_clear_error(
    moto_endpoint: str, sm_admin: Any, unique: str
) -> None:
    sm_admin.create_secret(Name=f"app/{unique}", SecretString="v")
    missing = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(SecretError, match=f"not found: secret 'app/{unique}' version '{missing}'"):
        await secrets_manager(moto_endpoint).fetch(SecretRef(path=f"app/{unique}", version=missing))


async def test_secrets_manager_explicit_credentials_are_used(
    moto_endpoint: str, sm_admin: Any, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    sm_admin.create_secret(Name=f"app/{unique}", SecretString="creds-value")
    provider = secrets_manager(
        moto_endpoint, {"access_key_id": "AKIDTEST", "secret_access_key": "s3cr3t"}
    )
    assert await provider.fetch(SecretRef(path=f"app/{unique}")) == b"creds-value"


async def test_secrets_manager_without_any_credentials_says_so(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(SecretError, match="no AWS credentials found"):
        await secrets_manager(moto_endpoint).fetch(SecretRef(path="app/x"))


def test_partial_credentials_are_refused(moto_endpoint: str) -> None:
    with pytest.raises(SecretError, match="must hold access_key_id and secret_access_key") as info:
        secrets_manager(moto_endpoint, {"access_key_id": "AKIDTEST"})
    assert "AKIDTEST" not in str(info.value)


async def test_secrets_manager_check_passes(moto_endpoint: str) -> None:
    await secrets_manager(moto_endpoint).check()


def test_registry_makes_aws_providers(moto_endpoint: str) -> None:
    settings = {"key_id": "alias/k", "region": "us-east-1", "endpoint": moto_endpoint}
    assert isinstance(make_provider(ProviderConfig("aws_kms", settings)), AwsKms)
    assert isinstance(
        make_provider(ProviderConfig("aws_secrets_manager", {"region": "us-east-1"})),
        AwsSecretsManager,
    )


async def test_malformed_endpoint_is_a_settings_error(key_id: str) -> None:
    with pytest.raises(SecretError, match="aws_kms: unusable settings: Invalid endpoint"):
        await kms("not a url", key_id).check()

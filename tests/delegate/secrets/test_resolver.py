"""SecretResolver: every delivery form against real servers (OpenBao, moto, the in-test Cloud
KMS and Key Vault), and its cache, concurrency and errors against a counting store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from delegate.secrets.aws import AwsKms
from delegate.secrets.azure import AzureKeyVault
from delegate.secrets.base import ProviderConfig, ReferenceProvider, SecretError, SecretRef
from delegate.secrets.cache import SecretCache
from delegate.secrets.gcp import GcpKms
from delegate.secrets.providers import Provider
from delegate.secrets.registry import make_provider
from delegate.secrets.resolver import ResolveError, SecretResolver
from delegate.secrets.vault import VaultTransit
from shared.protocol import ShellPayload
from shared.secretspec import ManagerSpec, SecretDelivery
from tests.delegate.secret_helpers import (
    ATTEMPT,
    DelegateKey,
    acquire,
    builtin,
    delegate_key,
    enveloped,
    referenced,
    sealed_credentials,
)
from tests.delegate.secrets import test_azure, test_gcp
from tests.delegate.secrets.conftest import Bao

# The servers' fixtures, reused under names of their own.
gcp_kms_server = test_gcp.kms
azure_vault = test_azure.vault

PAYLOAD = ShellPayload(script="true")


@pytest.fixture
def key() -> DelegateKey:
    return delegate_key()


def resolver(key: DelegateKey, **kwargs: Any) -> SecretResolver:
    return SecretResolver(key.private, **kwargs)


# --- builtin -----------------------------------------------------------------------------


async def test_builtin_value_opens_with_the_delegate_key(key: DelegateKey) -> None:
    acq = acquire(PAYLOAD, [builtin(key, "db-pass", b"builtin-pa55")])

    resolved = await resolver(key).resolve(acq)

    assert resolved["db-pass"].exposed == b"builtin-pa55"
    assert resolved["db-pass"].type == "text"


async def test_builtin_key_sealed_for_another_attempt_does_not_open(key: DelegateKey) -> None:
    delivery = builtin(key, "db-pass", b"builtin-pa55", attempt=ATTEMPT - 1)

    with pytest.raises(ResolveError) as caught:
        await resolver(key).resolve(acquire(PAYLOAD, [delivery]))

    assert str(caught.value).startswith('secret "db-pass": builtin: its data key cannot be opened')
    assert "builtin-pa55" not in str(caught.value)


async def test_builtin_key_sealed_to_another_delegate_does_not_open(key: DelegateKey) -> None:
    other = delegate_key()
    acq = acquire(PAYLOAD, [builtin(other, "db-pass", b"builtin-pa55")])

    with pytest.raises(ResolveError, match=r'^secret "db-pass": builtin: its data key'):
        await resolver(key).resolve(acq)


# --- Vault (OpenBao) ---------------------------------------------------------------------


def vault_manager(bao: Bao, kind: str, **settings: str) -> ManagerSpec:
    return ManagerSpec(
        id=f"sm_{kind}", name=f"vault-{kind}", kind=kind, settings={"url": bao.url, **settings}
    )


@pytest.mark.usefixtures("vault_env")
async def test_vault_transit_envelope_opens_with_the_token_from_the_task(
    bao: Bao, transit_key: str, key: DelegateKey
) -> None:
    manager = vault_manager(bao, "vault_transit", key_name=transit_key)
    wrapper = VaultTransit(
        ProviderConfig("vault_transit", manager.settings, {"token": bao.root_token})
    )
    delivery = await enveloped(wrapper, manager, "api-token", b"transit-value-1")
    # No VAULT_TOKEN in the environment (vault_env): the sealed credentials are the only way.
    creds = sealed_credentials(key, manager, {"token": bao.root_token})

    resolved = await resolver(key).resolve(acquire(PAYLOAD, [delivery], credentials=creds))

    assert resolved["api-token"].exposed == b"transit-value-1"


@pytest.mark.usefixtures("vault_env")
async def test_vault_without_credentials_fails_with_the_providers_reason(
    bao: Bao, transit_key: str, key: DelegateKey
) -> None:
    manager = vault_manager(bao, "vault_transit", key_name=transit_key)
    wrapper = VaultTransit(
        ProviderConfig("vault_transit", manager.settings, {"token": bao.root_token})
    )
    delivery = await enveloped(wrapper, manager, "api-token", b"transit-value-1")

    with pytest.raises(ResolveError, match=r'^secret "api-token": vault_transit: no Vault cred'):
        await resolver(key).resolve(acquire(PAYLOAD, [delivery]))


@pytest.mark.usefixtures("vault_env")
async def test_vault_kv_reads_the_current_and_a_pinned_version(
    bao: Bao, unique: str, key: DelegateKey
) -> None:
    path = f"app/{unique}"
    bao.client().secrets.kv.v2.create_or_update_secret(path=path, secret={"pw": "kv-first-1"})
    bao.client().secrets.kv.v2.create_or_update_secret(path=path, secret={"pw": "kv-second-2"})
    manager = vault_manager(bao, "vault_kv")
    acq = acquire(
        PAYLOAD,
        [
            referenced(manager, "current", path, key="pw"),
            referenced(manager, "pinned", path, key="pw", pinned="1"),
        ],
        credentials=sealed_credentials(key, manager, {"token": bao.root_token}),
    )

    resolved = await resolver(key).resolve(acq)

    assert resolved["current"].exposed == b"kv-second-2"
    assert resolved["pinned"].exposed == b"kv-first-1"


@pytest.mark.usefixtures("vault_env")
async def test_vault_kv_missing_path_fails_naming_the_secret(
    bao: Bao, unique: str, key: DelegateKey
) -> None:
    manager = vault_manager(bao, "vault_kv")
    acq = acquire(
        PAYLOAD,
        [referenced(manager, "gone", f"app/{unique}-missing", key="pw")],
        credentials=sealed_credentials(key, manager, {"token": bao.root_token}),
    )

    with pytest.raises(ResolveError) as caught:
        await resolver(key).resolve(acq)

    assert list(caught.value.failures) == ["gone"]
    assert str(caught.value).startswith('secret "gone": vault_kv')
    assert bao.root_token not in str(caught.value)


# --- AWS (moto) ----------------------------------------------------------------------------


def aws_manager(moto_endpoint: str, kind: str, **settings: str) -> ManagerSpec:
    return ManagerSpec(
        id=f"sm_{kind}",
        name=f"aws-{kind}",
        kind=kind,
        settings={"region": "us-east-1", "endpoint": moto_endpoint, **settings},
    )


@pytest.fixture
def kms_key(moto_endpoint: str, aws_env: None) -> str:
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_endpoint)
    key_id: str = kms.create_key(Description="tether resolver")["KeyMetadata"]["KeyId"]
    return key_id


@pytest.mark.usefixtures("aws_env")
async def test_aws_kms_envelope_opens_under_its_encryption_context(
    moto_endpoint: str, kms_key: str, key: DelegateKey
) -> None:
    manager = aws_manager(moto_endpoint, "aws_kms", key_id=kms_key)
    wrapper = AwsKms(ProviderConfig("aws_kms", manager.settings))
    delivery = await enveloped(wrapper, manager, "kms-secret", b"kms-value-3", version=3)

    resolved = await resolver(key).resolve(acquire(PAYLOAD, [delivery]))

    assert resolved["kms-secret"].exposed == b"kms-value-3"


@pytest.mark.usefixtures("aws_env")
async def test_aws_kms_envelope_claimed_for_another_version_does_not_open(
    moto_endpoint: str, kms_key: str, key: DelegateKey
) -> None:
    manager = aws_manager(moto_endpoint, "aws_kms", key_id=kms_key)
    wrapper = AwsKms(ProviderConfig("aws_kms", manager.settings))
    delivery = await enveloped(wrapper, manager, "kms-secret", b"kms-value-3", version=3)
    moved = delivery.model_copy(update={"version": 4})

    with pytest.raises(ResolveError, match="another context") as caught:
        await resolver(key).resolve(acquire(PAYLOAD, [moved]))

    assert "kms-value-3" not in str(caught.value)


@pytest.mark.usefixtures("aws_env")
async def test_aws_secrets_manager_field_is_fetched(
    moto_endpoint: str, unique: str, key: DelegateKey
) -> None:
    sm = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto_endpoint)
    sm.create_secret(Name=f"db-{unique}", SecretString=json.dumps({"password": "sm-pa55-x"}))
    manager = aws_manager(moto_endpoint, "aws_secrets_manager")
    delivery = referenced(manager, "db", f"db-{unique}", key="password")

    resolved = await resolver(key).resolve(acquire(PAYLOAD, [delivery]))

    assert resolved["db"].exposed == b"sm-pa55-x"


# --- Google Cloud KMS and Azure Key Vault (in-test servers) -----------------------------


async def test_gcp_kms_envelope_opens(gcp_kms_server: Any, key: DelegateKey) -> None:
    settings = {"key_name": test_gcp.KEY, "endpoint": gcp_kms_server.endpoint, "insecure": "true"}
    manager = ManagerSpec(id="sm_gcp", name="gcp", kind="gcp_kms", settings=settings)
    wrapper = GcpKms(ProviderConfig("gcp_kms", settings), timeout=5.0)
    try:
        delivery = await enveloped(wrapper, manager, "gcp-secret", b"gcp-value-7")
    finally:
        await wrapper.aclose()

    resolved = await resolver(key).resolve(acquire(PAYLOAD, [delivery]))

    assert resolved["gcp-secret"].exposed == b"gcp-value-7"
    assert gcp_kms_server.fake.calls == ["encrypt", "decrypt"]


def azure_factory(vault: Any) -> Callable[[ProviderConfig], Provider]:
    """make_provider, but the Key Vault provider resolves the fake vault's name to loopback."""

    def make(config: ProviderConfig) -> Provider:
        if config.kind == "azure_key_vault":
            return AzureKeyVault(config, retry_total=0, resolver=vault.resolver)
        return make_provider(config)

    return make


async def test_azure_key_vault_current_and_pinned_versions(
    azure_vault: Any, key: DelegateKey
) -> None:
    settings = {"vault_url": azure_vault.url, "ca_file": str(azure_vault.certs.ca_cert)}
    manager = ManagerSpec(id="sm_az", name="azure", kind="azure_key_vault", settings=settings)
    acq = acquire(
        PAYLOAD,
        [
            referenced(manager, "now", "db-password"),
            referenced(manager, "old", "db-password", pinned=test_azure.OLD_VERSION),
        ],
        credentials=sealed_credentials(key, manager, {"access_token": test_azure.TOKEN}),
    )

    resolved = await resolver(key, make_provider=azure_factory(azure_vault)).resolve(acq)

    assert resolved["now"].exposed == b"new-pa55"
    assert resolved["old"].exposed == b"old-pa55"


# --- cache, providers, concurrency, errors (a counting store) ----------------------------


class CountingStore(ReferenceProvider):
    """Values by path; records each fetch, how many run at once, and closes."""

    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values
        self.fetched: list[str] = []
        self.failing: dict[str, Exception] = {}
        self.closed = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate: asyncio.Event | None = None
        self.entered: asyncio.Queue[str] = asyncio.Queue()

    async def fetch(self, ref: SecretRef) -> bytes:
        self.fetched.append(ref.path)
        self.entered.put_nowait(ref.path)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if ref.path in self.failing:
                raise self.failing[ref.path]
            return self.values[ref.path]
        finally:
            self.in_flight -= 1

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        self.closed += 1


STORE = ManagerSpec(id="sm_custom", name="scripts", kind="custom")


class Factory:
    def __init__(self, store: CountingStore) -> None:
        self.store = store
        self.configs: list[ProviderConfig] = []

    def __call__(self, config: ProviderConfig) -> Provider:
        self.configs.append(config)
        return self.store


def ref(name: str, *, version: int = 1, type_: Any = "text") -> SecretDelivery:
    return referenced(STORE, name, name, version=version, type_=type_)


async def test_cached_value_is_not_fetched_again(key: DelegateKey) -> None:
    store = CountingStore({"a": b"value-aaaa"})
    res = resolver(key, cache=SecretCache(), make_provider=Factory(store))

    first = await res.resolve(acquire(PAYLOAD, [ref("a")]))
    second = await res.resolve(acquire(PAYLOAD, [ref("a")]))

    assert first["a"].exposed == second["a"].exposed == b"value-aaaa"
    assert store.fetched == ["a"]


async def test_new_version_is_fetched_anew(key: DelegateKey) -> None:
    store = CountingStore({"a": b"value-aaaa"})
    res = resolver(key, cache=SecretCache(), make_provider=Factory(store))
    await res.resolve(acquire(PAYLOAD, [ref("a", version=1)]))
    store.values["a"] = b"value-bbbb"

    resolved = await res.resolve(acquire(PAYLOAD, [ref("a", version=2)]))

    assert resolved["a"].exposed == b"value-bbbb"
    assert store.fetched == ["a", "a"]


async def test_without_a_cache_every_task_fetches(key: DelegateKey) -> None:
    store = CountingStore({"a": b"value-aaaa"})
    res = resolver(key, cache=None, make_provider=Factory(store))

    await res.resolve(acquire(PAYLOAD, [ref("a")]))
    await res.resolve(acquire(PAYLOAD, [ref("a")]))

    assert store.fetched == ["a", "a"]


async def test_failed_fetch_is_not_cached(key: DelegateKey) -> None:
    store = CountingStore({"a": b"value-aaaa"})
    store.failing["a"] = SecretError("custom: the script exited with 1")
    res = resolver(key, cache=SecretCache(), make_provider=Factory(store))
    with pytest.raises(ResolveError):
        await res.resolve(acquire(PAYLOAD, [ref("a")]))
    del store.failing["a"]

    resolved = await res.resolve(acquire(PAYLOAD, [ref("a")]))

    assert resolved["a"].exposed == b"value-aaaa"
    assert store.fetched == ["a", "a"]


async def test_one_provider_per_manager_per_task_closed_afterwards(key: DelegateKey) -> None:
    store = CountingStore({"a": b"value-aaaa", "b": b"value-bbbb"})
    factory = Factory(store)

    await resolver(key, make_provider=factory).resolve(acquire(PAYLOAD, [ref("a"), ref("b")]))

    assert len(factory.configs) == 1
    assert store.closed == 1


async def test_provider_is_closed_when_a_fetch_fails(key: DelegateKey) -> None:
    store = CountingStore({})
    store.failing["a"] = SecretError("custom: the script exited with 1")

    with pytest.raises(ResolveError):
        await resolver(key, make_provider=Factory(store)).resolve(acquire(PAYLOAD, [ref("a")]))

    assert store.closed == 1


async def test_sealed_credentials_reach_the_provider(key: DelegateKey) -> None:
    factory = Factory(CountingStore({"a": b"value-aaaa"}))
    creds = sealed_credentials(key, STORE, {"API_TOKEN": "cred-token-9"})

    await resolver(key, make_provider=factory).resolve(
        acquire(PAYLOAD, [ref("a")], credentials=creds)
    )

    assert dict(factory.configs[0].credentials) == {"API_TOKEN": "cred-token-9"}


async def test_credentials_sealed_for_another_attempt_fail_that_managers_secrets(
    key: DelegateKey,
) -> None:
    factory = Factory(CountingStore({"a": b"value-aaaa"}))
    creds = sealed_credentials(key, STORE, {"API_TOKEN": "cred-token-9"}, attempt=ATTEMPT + 1)
    acq = acquire(PAYLOAD, [ref("a"), builtin(key, "b", b"builtin-bbbb")], credentials=creds)

    with pytest.raises(ResolveError) as caught:
        await resolver(key, make_provider=factory).resolve(acq)

    assert list(caught.value.failures) == ["a"]
    assert "secret manager 'scripts': its credentials cannot be opened" in str(caught.value)
    assert "cred-token-9" not in str(caught.value)
    assert factory.configs == []


async def test_fetches_run_concurrently_but_bounded(key: DelegateKey) -> None:
    store = CountingStore({name: f"value-{name}".encode() for name in "abcde"})
    store.gate = asyncio.Event()
    res = resolver(key, make_provider=Factory(store), concurrency=2)
    running = asyncio.create_task(res.resolve(acquire(PAYLOAD, [ref(n) for n in "abcde"])))
    # Two fetches wait at the gate together; the rest wait for a place.
    await store.entered.get()
    await store.entered.get()
    store.gate.set()

    resolved = await running

    assert store.most_in_flight == 2
    assert sorted(resolved) == list("abcde")


async def test_every_failure_is_listed_by_name_without_values(key: DelegateKey) -> None:
    store = CountingStore({"ok": b"value-okok"})
    store.failing["down"] = SecretError("custom: the script exited with 3")
    # A vendor exception whose text quotes what it handled must not reach the message.
    store.failing["odd"] = RuntimeError("leaked hunter2-value")
    acq = acquire(PAYLOAD, [ref("ok"), ref("down"), ref("odd")])

    with pytest.raises(ResolveError) as caught:
        await resolver(key, make_provider=Factory(store)).resolve(acq)

    assert caught.value.failures == {
        "down": "custom: the script exited with 3",
        "odd": "custom: failed (RuntimeError)",
    }
    assert str(caught.value) == (
        'secret "down": custom: the script exited with 3; '
        'secret "odd": custom: failed (RuntimeError)'
    )
    assert "hunter2" not in str(caught.value)
    assert "value-okok" not in str(caught.value)


async def test_unavailable_names_fail_before_anything_is_fetched(key: DelegateKey) -> None:
    store = CountingStore({"a": b"value-aaaa"})
    acq = acquire(PAYLOAD, [ref("a")], unavailable={"db-pass": "no such secret"})

    with pytest.raises(ResolveError) as caught:
        await resolver(key, make_provider=Factory(store)).resolve(acq)

    assert str(caught.value) == 'secret "db-pass": no such secret'
    assert store.fetched == []


async def test_expected_name_the_manager_did_not_send_fails(key: DelegateKey) -> None:
    acq = acquire(PAYLOAD, [builtin(key, "a", b"value-aaaa")])

    with pytest.raises(ResolveError) as caught:
        await resolver(key).resolve(acq, expected={"a", "b"})

    assert str(caught.value) == 'secret "b": not delivered by the manager'


# --- structured types ---------------------------------------------------------------------


async def test_ssh_key_and_winrm_values_are_parsed(key: DelegateKey) -> None:
    ssh = {"key": "-----BEGIN KEY-----\nabc\n-----END KEY-----", "user": "deploy"}
    winrm = {"user": "admin", "password": "winrm-pa55", "domain": "CORP"}
    acq = acquire(
        PAYLOAD,
        [
            builtin(key, "ssh", json.dumps(ssh).encode(), type_="ssh_key"),
            builtin(key, "win", json.dumps(winrm).encode(), type_="winrm"),
        ],
    )

    resolved = await resolver(key).resolve(acq)

    assert dict(resolved["ssh"].fields) == ssh
    assert resolved["ssh"].exposed == ssh["key"].encode()
    assert dict(resolved["win"].fields) == winrm
    assert resolved["win"].exposed == b"winrm-pa55"


async def test_referenced_ssh_key_that_is_not_json_is_the_key(key: DelegateKey) -> None:
    pem = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n"
    store = CountingStore({"k": pem})
    acq = acquire(PAYLOAD, [ref("k", type_="ssh_key")])

    resolved = await resolver(key, make_provider=Factory(store)).resolve(acq)

    assert resolved["k"].fields == {"key": pem.decode()}
    assert resolved["k"].exposed == pem


async def test_builtin_ssh_key_that_is_not_json_is_refused(key: DelegateKey) -> None:
    acq = acquire(PAYLOAD, [builtin(key, "k", b"not-json-key-material", type_="ssh_key")])

    with pytest.raises(ResolveError) as caught:
        await resolver(key).resolve(acq)

    assert str(caught.value).startswith('secret "k": ssh_key value is not a JSON object')
    assert "not-json-key-material" not in str(caught.value)


async def test_malformed_winrm_value_is_refused_without_its_fields(key: DelegateKey) -> None:
    value = json.dumps({"user": "admin", "pass": "winrm-hunter2"}).encode()
    acq = acquire(PAYLOAD, [builtin(key, "win", value, type_="winrm")])

    with pytest.raises(ResolveError) as caught:
        await resolver(key).resolve(acq)

    message = str(caught.value)
    assert message.startswith('secret "win": winrm value fields are wrong')
    assert "missing 'password'" in message
    assert "unknown 'pass'" in message
    assert "winrm-hunter2" not in message

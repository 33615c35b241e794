"""Vault KV v2 and Transit against a real OpenBao dev server."""

from __future__ import annotations

import json
from pathlib import Path

import hvac
import pytest

from delegate.secrets.base import ProviderConfig, SecretError, SecretRef
from delegate.secrets.registry import make_provider
from delegate.secrets.vault import VaultKv, VaultTransit
from shared.envelope import EnvelopeContext, open_with, seal_with
from tests.delegate.secrets.conftest import AppRole, Bao, free_port

pytestmark = pytest.mark.usefixtures("vault_env")

CTX = EnvelopeContext(account="acct-1", secret_id="sec-1", version=1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def kv(bao: Bao, credentials: dict[str, str] | None = None, **settings: str) -> VaultKv:
    return VaultKv(
        ProviderConfig(
            kind="vault_kv",
            settings={"url": bao.url, **settings},
            credentials=credentials if credentials is not None else {"token": bao.root_token},
        )
    )


def write(bao: Bao, path: str, data: dict[str, str]) -> None:
    bao.client().secrets.kv.v2.create_or_update_secret(path=path, secret=data)


def transit(bao: Bao, key: str, **settings: str) -> VaultTransit:
    return VaultTransit(
        ProviderConfig(
            kind="vault_transit",
            settings={"url": bao.url, "key_name": key, **settings},
            credentials={"token": bao.root_token},
        )
    )


# --- KV v2 -------------------------------------------------------------------------------


async def test_kv_reads_the_current_version(bao: Bao, unique: str) -> None:
    write(bao, f"app/{unique}", {"password": "first-value"})
    write(bao, f"app/{unique}", {"password": "second-value"})
    value = await kv(bao).fetch(SecretRef(path=f"app/{unique}", key="password"))
    assert value == b"second-value"


async def test_kv_pinned_version_returns_that_version(bao: Bao, unique: str) -> None:
    write(bao, f"app/{unique}", {"password": "first-value"})
    write(bao, f"app/{unique}", {"password": "second-value"})
    value = await kv(bao).fetch(SecretRef(path=f"app/{unique}", key="password", version="1"))
    assert value == b"first-value"


async def test_kv_without_key_returns_the_only_field(bao: Bao, unique: str) -> None:
    write(bao, f"app/{unique}", {"token": "only-value"})
    assert await kv(bao).fetch(SecretRef(path=f"app/{unique}")) == b"only-value"


async def test_kv_without_key_refuses_a_secret_with_several_fields(bao: Bao, unique: str) -> None:
    write(bao, f"app/{unique}", {"user": "alice-value", "password": "pw-value"})
    with pytest.raises(SecretError, match="has 2 keys; the reference must name one") as info:
        await kv(bao).fetch(SecretRef(path=f"app/{unique}"))
    assert "value" not in str(info.value).replace("has 2 keys", "")


async def test_kv_non_string_field_is_returned_as_json(bao: Bao, unique: str) -> None:
    bao.client().secrets.kv.v2.create_or_update_secret(
        path=f"app/{unique}", secret={"cfg": {"port": 5432}}
    )
    assert await kv(bao).fetch(SecretRef(path=f"app/{unique}", key="cfg")) == b'{"port":5432}'


async def test_kv_missing_path_error_names_the_path(bao: Bao, unique: str) -> None:
    with pytest.raises(SecretError, match=f"vault_kv: not found: secret 'app/{unique}'"):
        await kv(bao).fetch(SecretRef(path=f"app/{unique}", key="password"))


async def test_kv_missing_key_error_names_the_key_and_no_value(bao: Bao, unique: str) -> None:
    write(bao, f"app/{unique}", {"password": "hunter2-secret"})
    with pytest.raises(SecretError) as info:
        await kv(bao).fetch(SecretRef(path=f"app/{unique}", key="nope"))
    message = str(info.value)
    assert f"'app/{unique}'" in message
    assert "no key 'nope'" in message
    assert "hunter2" not in message
    assert "password" not in message


async def test_kv_missing_pinned_version_is_not_found(bao: Bao, unique: str) -> None:
    write(bao, f"app/{unique}", {"password": "v1"})
    with pytest.raises(SecretError, match=r"not found: .* version 7"):
        await kv(bao).fetch(SecretRef(path=f"app/{unique}", key="password", version="7"))


async def test_kv_deleted_version_is_reported_as_deleted(bao: Bao, unique: str) -> None:
    write(bao, f"app/{unique}", {"password": "gone-value"})
    bao.client().secrets.kv.v2.delete_latest_version_of_secret(path=f"app/{unique}")
    with pytest.raises(SecretError, match="is deleted or destroyed"):
        await kv(bao).fetch(SecretRef(path=f"app/{unique}", key="password"))


async def test_kv_version_must_be_a_positive_integer(bao: Bao) -> None:
    with pytest.raises(SecretError, match="a KV version is a positive integer"):
        await kv(bao).fetch(SecretRef(path="app/x", version="latest"))


async def test_kv_other_mount_is_used(bao: Bao, unique: str) -> None:
    root = bao.client()
    root.sys.enable_secrets_engine("kv", path=f"kv-{unique}", options={"version": "2"})
    root.secrets.kv.v2.create_or_update_secret(
        path="db", secret={"password": "mounted-value"}, mount_point=f"kv-{unique}"
    )
    provider = kv(bao, mount=f"kv-{unique}")
    assert await provider.fetch(SecretRef(path="db", key="password")) == b"mounted-value"


async def test_kv_namespace_is_sent(bao: Bao, unique: str) -> None:
    bao.client().adapter.post(f"/v1/sys/namespaces/ns-{unique}")
    in_ns = hvac.Client(url=bao.url, token=bao.root_token, namespace=f"ns-{unique}")
    in_ns.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    in_ns.secrets.kv.v2.create_or_update_secret(path="db", secret={"password": "ns-value"})
    provider = kv(bao, namespace=f"ns-{unique}")
    assert await provider.fetch(SecretRef(path="db", key="password")) == b"ns-value"
    with pytest.raises(SecretError, match="not found"):
        await kv(bao).fetch(SecretRef(path="db", key="password"))


async def test_kv_over_tls_trusts_the_ca_file(bao_tls: tuple[Bao, Path], unique: str) -> None:
    server, ca_file = bao_tls
    root = hvac.Client(url=server.url, token=server.root_token, verify=str(ca_file))
    root.secrets.kv.v2.create_or_update_secret(path=f"app/{unique}", secret={"k": "tls-value"})
    provider = kv(server, ca_file=str(ca_file))
    assert await provider.fetch(SecretRef(path=f"app/{unique}", key="k")) == b"tls-value"


async def test_kv_over_tls_refuses_an_unknown_ca(bao_tls: tuple[Bao, Path]) -> None:
    server, _ = bao_tls
    with pytest.raises(SecretError, match=r"TLS with Vault at .* failed \(is 'ca_file' right\?\)"):
        await kv(server).fetch(SecretRef(path="app/x", key="k"))


# --- authentication ----------------------------------------------------------------------


async def test_approle_credentials_log_in_and_read(bao: Bao, approle: AppRole, unique: str) -> None:
    write(bao, f"app/{unique}", {"password": "approle-value"})
    provider = kv(bao, {"role_id": approle.role_id, "secret_id": approle.secret_id})
    assert await provider.fetch(SecretRef(path=f"app/{unique}", key="password")) == (
        b"approle-value"
    )


async def test_approle_file_from_the_environment_works(
    bao: Bao, approle: AppRole, unique: str, tmp_path: Path
) -> None:
    write(bao, f"app/{unique}", {"password": "file-value"})
    approle_file = tmp_path / "approle.json"
    approle_file.write_text(
        json.dumps({"role_id": approle.role_id, "secret_id": approle.secret_id})
    )
    provider = kv(bao, {}, approle_file=str(approle_file))
    assert await provider.fetch(SecretRef(path=f"app/{unique}", key="password")) == b"file-value"


async def test_vault_token_variable_is_the_fallback(
    bao: Bao, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(bao, f"app/{unique}", {"password": "env-value"})
    monkeypatch.setenv("VAULT_TOKEN", bao.root_token)
    provider = kv(bao, {})
    assert await provider.fetch(SecretRef(path=f"app/{unique}", key="password")) == b"env-value"


async def test_approle_token_revoked_is_replaced_by_a_new_login(
    bao: Bao, approle: AppRole, unique: str
) -> None:
    write(bao, f"app/{unique}", {"password": "relogin-value"})
    provider = kv(bao, {"role_id": approle.role_id, "secret_id": approle.secret_id})
    ref = SecretRef(path=f"app/{unique}", key="password")
    await provider.fetch(ref)
    revoked = provider._session.client.token
    bao.client().auth.token.revoke(revoked)
    assert await provider.fetch(ref) == b"relogin-value"
    assert provider._session.client.token != revoked


async def test_approle_policy_refusal_does_not_log_in_again(
    bao: Bao, approle: AppRole, unique: str
) -> None:
    write(bao, f"other/{unique}", {"password": "outside-value"})
    provider = kv(bao, {"role_id": approle.role_id, "secret_id": approle.secret_id})
    await provider.check()
    token = provider._session.client.token
    with pytest.raises(SecretError, match=f"permission denied: secret 'other/{unique}'"):
        await provider.fetch(SecretRef(path=f"other/{unique}", key="password"))
    assert provider._session.client.token == token


async def test_approle_token_is_renewed_after_two_thirds_of_its_ttl(
    bao: Bao, approle: AppRole, unique: str
) -> None:
    write(bao, f"app/{unique}", {"password": "renew-value"})
    clock = FakeClock()
    provider = VaultKv(
        ProviderConfig(
            kind="vault_kv",
            settings={"url": bao.url},
            credentials={"role_id": approle.role_id, "secret_id": approle.secret_id},
        ),
        clock=clock,
    )
    ref = SecretRef(path=f"app/{unique}", key="password")
    await provider.fetch(ref)
    token = provider._session.client.token
    clock.now += 3600 * 2 / 3 + 1
    assert await provider.fetch(ref) == b"renew-value"
    # Renewed, not replaced: the same token, with a fresh TTL.
    assert provider._session.client.token == token
    assert provider._session._renew_at is not None
    assert provider._session._renew_at > clock.now


async def test_token_file_is_read_again_after_a_refusal(
    bao: Bao, approle: AppRole, unique: str, tmp_path: Path
) -> None:
    write(bao, f"app/{unique}", {"password": "rotated-value"})
    root = bao.client()
    first = root.auth.token.create(policies=[approle.policy], ttl="1h")["auth"]["client_token"]
    token_file = tmp_path / "token"
    token_file.write_text(first + "\n")
    provider = kv(bao, {}, token_file=str(token_file))
    ref = SecretRef(path=f"app/{unique}", key="password")
    await provider.fetch(ref)
    root.auth.token.revoke(first)
    second = root.auth.token.create(policies=[approle.policy], ttl="1h")["auth"]["client_token"]
    token_file.write_text(second)
    assert await provider.fetch(ref) == b"rotated-value"


async def test_token_without_permission_gets_permission_denied(bao: Bao, unique: str) -> None:
    write(bao, f"app/{unique}", {"password": "forbidden-value"})
    weak = bao.client().auth.token.create(policies=["default"], ttl="1h")["auth"]["client_token"]
    with pytest.raises(SecretError, match=f"vault_kv: permission denied: secret 'app/{unique}'"):
        await kv(bao, {"token": weak}).fetch(SecretRef(path=f"app/{unique}", key="password"))


async def test_wrong_approle_secret_id_fails_the_login(bao: Bao, approle: AppRole) -> None:
    provider = kv(bao, {"role_id": approle.role_id, "secret_id": "not-the-secret-id"})
    with pytest.raises(SecretError, match="AppRole login at mount 'approle'") as info:
        await provider.fetch(SecretRef(path="app/x", key="password"))
    assert "not-the-secret-id" not in str(info.value)


def test_no_credentials_anywhere_is_refused(bao: Bao) -> None:
    with pytest.raises(SecretError, match="no Vault credentials"):
        kv(bao, {})


def test_unknown_credential_shape_is_refused(bao: Bao) -> None:
    with pytest.raises(SecretError, match="credentials must hold") as info:
        kv(bao, {"password": "hunter2"})
    assert "hunter2" not in str(info.value)


async def test_unreachable_vault_is_reported(bao: Bao) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    provider = VaultKv(
        ProviderConfig(kind="vault_kv", settings={"url": url}, credentials={"token": "t"}),
        timeout=2,
    )
    with pytest.raises(SecretError, match=f"cannot reach Vault at {url}"):
        await provider.fetch(SecretRef(path="app/x", key="k"))


async def test_kv_check_passes_with_a_valid_token(bao: Bao) -> None:
    await kv(bao).check()


async def test_kv_check_reports_a_revoked_token(bao: Bao) -> None:
    token = bao.client().auth.token.create(ttl="1h")["auth"]["client_token"]
    bao.client().auth.token.revoke(token)
    with pytest.raises(SecretError, match="permission denied: token lookup"):
        await kv(bao, {"token": token}).check()


# --- Transit -----------------------------------------------------------------------------


async def test_transit_envelope_round_trip(bao: Bao, transit_key: str) -> None:
    provider = transit(bao, transit_key)
    envelope = await seal_with(provider, "vault_transit", transit_key, b"db-password", CTX)
    assert envelope.wrapped_key.startswith(b"vault:v1:")
    assert await open_with(provider, envelope, CTX) == b"db-password"


async def test_transit_wrong_context_fails(bao: Bao, transit_key: str) -> None:
    provider = transit(bao, transit_key)
    envelope = await seal_with(provider, "vault_transit", transit_key, b"db-password", CTX)
    other = EnvelopeContext(account="acct-1", secret_id="sec-2", version=1)
    with pytest.raises(SecretError, match="wrapped for another context or key"):
        await open_with(provider, envelope, other)


async def test_transit_binds_the_context_on_a_derived_key(bao: Bao, unique: str) -> None:
    bao.client().secrets.transit.create_key(
        f"derived-{unique}", key_type="aes256-gcm96", derived=True
    )
    provider = transit(bao, f"derived-{unique}")
    wrapped = await provider.wrap_key(b"k" * 32, b"context-a")
    assert await provider.unwrap_key(wrapped, b"context-a") == b"k" * 32
    with pytest.raises(SecretError, match="another context"):
        await provider.unwrap_key(wrapped, b"context-b")


async def test_transit_check_passes_on_an_aead_key(bao: Bao, transit_key: str) -> None:
    await transit(bao, transit_key).check()


async def test_transit_check_refuses_a_key_that_cannot_bind_a_context(
    bao: Bao, unique: str
) -> None:
    bao.client().secrets.transit.create_key(f"rsa-{unique}", key_type="rsa-2048")
    with pytest.raises(SecretError, match="cannot bind a context"):
        await transit(bao, f"rsa-{unique}").check()


async def test_transit_corrupt_ciphertext_is_refused(bao: Bao, transit_key: str) -> None:
    with pytest.raises(SecretError, match="the wrapped key is corrupt"):
        await transit(bao, transit_key).unwrap_key(b"vault:v1:bm90LWEtY2lwaGVydGV4dA==", b"c")


async def test_transit_malformed_ciphertext_is_refused(bao: Bao, transit_key: str) -> None:
    with pytest.raises(SecretError, match="vault_transit: refused: unwrap with transit key"):
        await transit(bao, transit_key).unwrap_key(b"not-a-transit-ciphertext", b"c")


def test_transit_needs_a_key_name(bao: Bao) -> None:
    with pytest.raises(SecretError, match="'key_name' is required"):
        VaultTransit(
            ProviderConfig(
                kind="vault_transit", settings={"url": bao.url}, credentials={"token": "t"}
            )
        )


def test_registry_makes_vault_providers(bao: Bao) -> None:
    creds = {"token": "t"}
    assert isinstance(make_provider(ProviderConfig("vault_kv", {"url": bao.url}, creds)), VaultKv)
    assert isinstance(
        make_provider(ProviderConfig("vault_transit", {"url": bao.url, "key_name": "k"}, creds)),
        VaultTransit,
    )

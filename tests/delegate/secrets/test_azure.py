"""AzureKeyVault against an HTTPS fake of Key Vault's secrets API.

The fake answers as the service does: a request without a bearer token gets 401 and the
challenge (tenant and resource), a secret is the service's JSON, a missing one its error
JSON. It listens on loopback under a real-looking vault name, ``*.vault.azure.net``, which
the test resolver points at it, so the SDK's challenge-resource check runs as in production.
Each test has a vault name of its own: the SDK caches challenges per host, process-wide.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from delegate.secrets.azure import AzureKeyVault, StaticTokenCredential
from delegate.secrets.base import ProviderConfig, SecretError, SecretRef
from shared.tls import CertPaths, ensure_manager_certificates, server_context

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.test-token"
OLD_VERSION = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
NEW_VERSION = "f9e8d7c6b5a4938271605f4e3d2c1b0a"


@dataclass
class FakeVault:
    """Secrets by name, versions oldest first; the requests it saw, in order."""

    url: str
    secrets: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)
    resource: str = "https://vault.azure.net"
    seen: list[tuple[str, str | None]] = field(default_factory=list)

    def challenge(self) -> web.Response:
        header = (
            f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
            f'resource="{self.resource}"'
        )
        body = {
            "error": {
                "code": "Unauthorized",
                "message": "AKV10000: Request is missing a Bearer or PoP token.",
            }
        }
        return web.json_response(body, status=401, headers={"WWW-Authenticate": header})

    async def get_secret(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        self.seen.append((request.path_qs, auth))
        if "api-version" not in request.query:
            return web.json_response({"error": {"code": "BadParameter"}}, status=400)
        if auth != f"Bearer {TOKEN}":
            return self.challenge()
        name = request.match_info["name"]
        wanted = request.match_info.get("version", "")
        versions = self.secrets.get(name, [])
        found = [item for item in versions if item[0] == wanted] if wanted else versions[-1:]
        if not found:
            message = (
                f"A secret with (name/id) {name} was not found in this key vault. If you "
                "recently deleted this secret you may be able to recover it using the "
                "correct recovery command."
            )
            body = {"error": {"code": "SecretNotFound", "message": message}}
            return web.json_response(body, status=404)
        if name in self.disabled:
            disabled: dict[str, object] = {
                "error": {
                    "code": "Forbidden",
                    "message": "Operation get is not allowed on a disabled secret.",
                    "innererror": {"code": "SecretDisabled"},
                }
            }
            return web.json_response(disabled, status=403)
        version, value = found[0]
        return web.json_response(
            {
                "value": value,
                "id": f"{self.url}/secrets/{name}/{version}",
                "attributes": {
                    "enabled": True,
                    "created": 1_700_000_000,
                    "updated": 1_700_000_000,
                    "recoveryLevel": "Recoverable+Purgeable",
                    "recoverableDays": 90,
                },
                "tags": {},
            }
        )


class LoopbackResolver(AbstractResolver):
    """Resolves the fake vault's name, port 443, to its loopback address and port."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self.host:
            raise OSError(f"test resolver knows only {self.host}")
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=self.port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


@dataclass
class Vault:
    url: str
    fake: FakeVault
    resolver: LoopbackResolver
    certs: CertPaths


@pytest.fixture
async def vault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Vault]:
    # The provider honours proxy variables, as a delegate behind a corporate proxy must.
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    host = f"tether-{secrets.token_hex(6)}.vault.azure.net"
    url = f"https://{host}"
    certs = ensure_manager_certificates(tmp_path / "tls", [host])
    fake = FakeVault(url)
    fake.secrets["db-password"] = [(OLD_VERSION, "old-pa55"), (NEW_VERSION, "new-pa55")]
    fake.secrets["db-creds"] = [
        (NEW_VERSION, json.dumps({"username": "app", "password": "s3cret", "port": 5432}))
    ]
    app = web.Application()
    # The SDK asks for the current version as /secrets/{name}/ (an empty version).
    app.router.add_get("/secrets/{name}", fake.get_secret)
    app.router.add_get("/secrets/{name}/", fake.get_secret)
    app.router.add_get("/secrets/{name}/{version}", fake.get_secret)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    site = web.SockSite(
        runner, sock, ssl_context=server_context(certs.server_cert, certs.server_key)
    )
    await site.start()
    try:
        yield Vault(url, fake, LoopbackResolver(host, port), certs)
    finally:
        await runner.cleanup()


def _config(vault: Vault, **settings: str) -> ProviderConfig:
    return ProviderConfig(
        "azure_key_vault",
        {"vault_url": vault.url, "ca_file": str(vault.certs.ca_cert), **settings},
        credentials={"access_token": TOKEN},
    )


@pytest.fixture
async def provider(vault: Vault) -> AsyncIterator[AzureKeyVault]:
    azure = AzureKeyVault(_config(vault), retry_total=0, resolver=vault.resolver)
    yield azure
    await azure.aclose()


async def test_fetch_without_version_returns_the_current_value(provider: AzureKeyVault) -> None:
    assert await provider.fetch(SecretRef("db-password")) == b"new-pa55"


async def test_fetch_pinned_version_returns_that_version(provider: AzureKeyVault) -> None:
    assert await provider.fetch(SecretRef("db-password", version=OLD_VERSION)) == b"old-pa55"


async def test_fetch_json_key_returns_that_field(provider: AzureKeyVault) -> None:
    assert await provider.fetch(SecretRef("db-creds", key="password")) == b"s3cret"
    assert await provider.fetch(SecretRef("db-creds", key="port")) == b"5432"


async def test_missing_json_key_names_the_key_not_the_value(provider: AzureKeyVault) -> None:
    with pytest.raises(SecretError, match="has no key 'token'") as caught:
        await provider.fetch(SecretRef("db-creds", key="token"))
    assert "s3cret" not in str(caught.value)


async def test_key_of_a_non_json_secret_is_refused_without_its_value(
    provider: AzureKeyVault,
) -> None:
    with pytest.raises(SecretError, match="is not JSON") as caught:
        await provider.fetch(SecretRef("db-password", key="password"))
    assert "pa55" not in str(caught.value)
    assert caught.value.__suppress_context__


async def test_missing_secret_is_reported_by_name(vault: Vault, provider: AzureKeyVault) -> None:
    with pytest.raises(SecretError, match="secret 'nope' not found") as caught:
        await provider.fetch(SecretRef("nope"))
    assert vault.url in str(caught.value)


async def test_missing_version_is_reported_with_the_version(provider: AzureKeyVault) -> None:
    with pytest.raises(SecretError, match=f"version '{'0' * 32}' not found"):
        await provider.fetch(SecretRef("db-password", version="0" * 32))


async def test_bearer_token_is_sent_only_after_the_challenge(
    vault: Vault, provider: AzureKeyVault
) -> None:
    await provider.fetch(SecretRef("db-password"))
    await provider.fetch(SecretRef("db-password", version=OLD_VERSION))
    auths = [auth for _path, auth in vault.fake.seen]
    # One challenge for the client, then the token on every request.
    assert auths == [None, f"Bearer {TOKEN}", f"Bearer {TOKEN}"]
    paths = [path for path, _auth in vault.fake.seen]
    assert paths[0].startswith("/secrets/db-password/?api-version=")
    assert paths[2].startswith(f"/secrets/db-password/{OLD_VERSION}?api-version=")


async def test_challenge_for_another_resource_gets_no_token(vault: Vault) -> None:
    vault.fake.resource = "https://vault.example.com"
    azure = AzureKeyVault(_config(vault), retry_total=0, resolver=vault.resolver)
    try:
        with pytest.raises(SecretError, match="challenge does not match"):
            await azure.fetch(SecretRef("db-password"))
    finally:
        await azure.aclose()
    assert [auth for _path, auth in vault.fake.seen] == [None]


async def test_refused_token_is_an_authentication_error(vault: Vault) -> None:
    config = ProviderConfig(
        "azure_key_vault",
        {"vault_url": vault.url, "ca_file": str(vault.certs.ca_cert)},
        credentials={"access_token": "expired-token"},
    )
    azure = AzureKeyVault(config, retry_total=0, resolver=vault.resolver)
    try:
        with pytest.raises(SecretError, match="authentication failed") as caught:
            await azure.fetch(SecretRef("db-password"))
    finally:
        await azure.aclose()
    assert "expired-token" not in str(caught.value)


async def test_disabled_secret_is_access_denied(vault: Vault, provider: AzureKeyVault) -> None:
    vault.fake.disabled.add("db-password")
    with pytest.raises(SecretError, match="disabled"):
        await provider.fetch(SecretRef("db-password"))


async def test_vault_certificate_from_an_unknown_ca_is_refused(vault: Vault) -> None:
    config = ProviderConfig(
        "azure_key_vault", {"vault_url": vault.url}, credentials={"access_token": TOKEN}
    )
    azure = AzureKeyVault(config, retry_total=0, resolver=vault.resolver)
    try:
        with pytest.raises(SecretError, match="cannot reach the vault"):
            await azure.fetch(SecretRef("db-password"))
    finally:
        await azure.aclose()
    assert vault.fake.seen == []


async def test_check_passes_when_the_vault_answers(provider: AzureKeyVault) -> None:
    await provider.check()


async def test_check_reports_a_refused_token(vault: Vault) -> None:
    config = ProviderConfig(
        "azure_key_vault",
        {"vault_url": vault.url, "ca_file": str(vault.certs.ca_cert)},
        credentials={"access_token": "wrong"},
    )
    azure = AzureKeyVault(config, retry_total=0, resolver=vault.resolver)
    try:
        with pytest.raises(SecretError, match="authentication failed"):
            await azure.check()
    finally:
        await azure.aclose()


@pytest.mark.parametrize("name", ["", "a/b", "../keys/x", "a" * 128, "name_with_underscore"])
async def test_invalid_secret_name_is_refused_before_any_request(
    vault: Vault, provider: AzureKeyVault, name: str
) -> None:
    with pytest.raises(SecretError, match="secret name"):
        await provider.fetch(SecretRef(name))
    assert vault.fake.seen == []


@pytest.mark.parametrize(
    "url", ["http://x.vault.azure.net", "https://x.vault.azure.net/secrets", "x.vault.azure.net"]
)
def test_vault_url_must_be_an_https_origin(url: str) -> None:
    with pytest.raises(SecretError, match="vault_url"):
        AzureKeyVault(ProviderConfig("azure_key_vault", {"vault_url": url}))


@pytest.mark.parametrize(
    "credentials",
    [{"tenant_id": "t", "client_id": "c"}, {"client_secret": "hunter2"}, {"access_token": ""}],
)
def test_incomplete_credentials_are_refused_naming_fields_only(
    credentials: dict[str, str],
) -> None:
    settings = {"vault_url": "https://x.vault.azure.net"}
    config = ProviderConfig("azure_key_vault", settings, credentials=credentials)
    with pytest.raises(SecretError, match="credential") as caught:
        AzureKeyVault(config)
    assert "hunter2" not in str(caught.value)


async def test_static_token_credential_returns_its_token_with_a_future_expiry() -> None:
    credential = StaticTokenCredential("abc", lifetime=60.0, clock=lambda: 1000.0)
    token = await credential.get_token("https://vault.azure.net/.default")
    info = await credential.get_token_info("https://vault.azure.net/.default")
    assert (token.token, token.expires_on) == ("abc", 1060)
    assert (info.token, info.expires_on) == ("abc", 1060)
    assert "abc" not in repr(credential)

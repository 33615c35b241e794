"""Azure Key Vault as a reference provider, through azure-keyvault-secrets' async client.

Settings:

- ``vault_url``: ``https://<name>.vault.azure.net`` (or a sovereign cloud's vault domain).
- ``ca_file`` (optional): trust only this CA for the vault's TLS certificate (a
  TLS-inspecting proxy's CA, say). Without it, the system store.

Credentials, from the builtin secret manager:

- ``{"tenant_id", "client_id", "client_secret"}``: a service principal
  (azure-identity's ClientSecretCredential);
- ``{"access_token"}``: a bearer token for the vault, sent as it is until the vault refuses
  it (:class:`StaticTokenCredential`). For a token made by something else (a pipeline step,
  ``az account get-access-token --resource https://vault.azure.net``). It is a credential,
  so it belongs with the credentials and not the plain settings;
- nothing: the delegate's environment (DefaultAzureCredential: environment variables,
  workload identity, managed identity, Azure CLI).

Key Vault's authentication starts with a challenge: the SDK's first request goes without a
token, the vault answers 401 naming its tenant and resource, and only then is a token asked
for and sent. The SDK checks that the challenge's resource is a parent domain of the vault's
host, so a server posing as the vault cannot obtain a token meant for another resource. That
check is always on here; there is no setting to turn it off. Tests keep it on too: they give
the fake a real-looking vault name (``*.vault.azure.net``) and point that name at loopback
with the ``resolver`` argument.

A reference's ``path`` is the secret name, ``version`` pins a version (None: the current
one), and ``key`` takes one field of a secret whose value is a JSON object: a string field as
it is, any other JSON value as compact JSON text.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiohttp.abc import AbstractResolver
from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import AioHttpTransport
from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential
from azure.keyvault.secrets.aio import SecretClient

from delegate.secrets.base import ProviderConfig, ReferenceProvider, SecretError, SecretRef

__all__ = ["AzureKeyVault", "StaticTokenCredential"]

# Key Vault's own rules for object names and version identifiers.
_SECRET_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_VERSION = re.compile(r"[0-9A-Za-z]{1,64}")
_SERVICE_PRINCIPAL = ("tenant_id", "client_id", "client_secret")
# check() asks for this name: 404 proves the vault is reached and the token accepted.
_PROBE_NAME = "tether-connection-check"


class StaticTokenCredential:
    """An async token credential that always returns the same bearer token.

    Satisfies azure-core's AsyncTokenCredential and AsyncSupportsTokenInfo protocols. The
    token's real expiry is unknown, so each answer says it is good for ``lifetime`` more
    seconds; once the vault refuses it, requests fail with an authentication error.
    """

    def __init__(
        self,
        token: str,
        *,
        lifetime: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not token:
            raise ValueError("an access token is required")
        self._token = token
        self._lifetime = lifetime
        self._clock = clock

    def __repr__(self) -> str:
        return "StaticTokenCredential(token=<hidden>)"

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        return AccessToken(self._token, self._expires_on())

    async def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        return AccessTokenInfo(self._token, self._expires_on())

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        return None

    def _expires_on(self) -> int:
        return int(self._clock() + self._lifetime)


class AzureKeyVault(ReferenceProvider):
    """Fetches secrets from one Azure Key Vault."""

    def __init__(
        self,
        config: ProviderConfig,
        *,
        timeout: float = 10.0,
        retry_total: int = 3,
        resolver: AbstractResolver | None = None,
    ) -> None:
        """``resolver``: where host names resolve (aiohttp's resolver; None: the system's).
        Tests use it to send a real-looking vault name to a loopback fake."""
        self.kind = config.kind
        self._vault_url = _vault_url(config.settings.get("vault_url", ""))
        ca_file = config.settings.get("ca_file", "").strip()
        self._ca_file = ca_file or None
        self._credentials = _check_credentials(config.credentials, self._vault_url)
        self._timeout = timeout
        self._retry_total = retry_total
        self._resolver = resolver
        self._client: SecretClient | None = None
        self._credential: AsyncTokenCredential | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"AzureKeyVault(vault_url={self._vault_url!r})"

    async def fetch(self, ref: SecretRef) -> bytes:
        where = _describe(ref)
        if _SECRET_NAME.fullmatch(ref.path) is None:
            raise SecretError(
                f"azure_key_vault {self._vault_url}: {where}: a secret name is 1-127 "
                "letters, digits and '-'"
            )
        if ref.version is not None and _VERSION.fullmatch(ref.version) is None:
            raise SecretError(f"azure_key_vault {self._vault_url}: {where}: invalid version")
        value = await self._get(ref.path, ref.version, where)
        if value is None:
            raise SecretError(f"azure_key_vault {self._vault_url}: {where} has no value")
        if ref.key is None:
            return value.encode()
        return _field(value, ref.key, f"azure_key_vault {self._vault_url}: {where}")

    async def check(self) -> None:
        """Ask for a secret that should not exist: not found means reached and accepted."""
        try:
            await self._get(_PROBE_NAME, None, f"secret {_PROBE_NAME!r}")
        except _NotFound:
            return

    async def aclose(self) -> None:
        """Close the HTTP session and the credential. A later call opens new ones."""
        client, self._client = self._client, None
        credential, self._credential = self._credential, None
        if client is not None:
            await client.close()
        if credential is not None:
            await credential.close()

    async def _get(self, name: str, version: str | None, where: str) -> str | None:
        client = await self._get_client()
        prefix = f"azure_key_vault {self._vault_url}: {where}"
        try:
            secret = await client.get_secret(name, version)
        except ResourceNotFoundError:
            raise _NotFound(f"{prefix} not found") from None
        except ClientAuthenticationError as exc:
            raise SecretError(f"{prefix}: authentication failed ({type(exc).__name__})") from None
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise SecretError(
                    f"{prefix}: access denied, or the secret is disabled "
                    "(the caller needs the secrets/get permission)"
                ) from None
            raise SecretError(f"{prefix}: the vault answered HTTP {exc.status_code}") from None
        except ServiceRequestError:
            raise SecretError(
                f"{prefix}: cannot reach the vault (network or TLS certificate)"
            ) from None
        except ServiceResponseError:
            raise SecretError(f"{prefix}: the connection broke before an answer") from None
        except AzureError as exc:
            raise SecretError(f"{prefix}: failed ({type(exc).__name__})") from None
        except ValueError as exc:
            # The SDK's challenge check: the 401 named a resource outside the vault's domain.
            if "challenge" in str(exc):
                raise SecretError(
                    f"{prefix}: the vault's authentication challenge does not match its domain"
                ) from None
            raise SecretError(f"{prefix}: failed (ValueError)") from None
        return secret.value

    async def _get_client(self) -> SecretClient:
        async with self._lock:
            if self._client is None:
                self._credential = self._make_credential()
                self._client = SecretClient(
                    self._vault_url,
                    self._credential,
                    transport=self._transport(),
                    retry_total=self._retry_total,
                )
            return self._client

    def _make_credential(self) -> AsyncTokenCredential:
        creds = self._credentials
        if "access_token" in creds:
            return StaticTokenCredential(creds["access_token"])
        if creds:
            return ClientSecretCredential(
                creds["tenant_id"], creds["client_id"], creds["client_secret"]
            )
        return DefaultAzureCredential()

    def _transport(self) -> AioHttpTransport:
        options: dict[str, Any] = {
            "connection_verify": self._ca_file or True,
            "connection_timeout": self._timeout,
            "read_timeout": self._timeout,
        }
        if self._resolver is None:
            return AioHttpTransport(**options)
        # The same session the transport would make, with the resolver in its connector.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=self._resolver),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=True,
        )
        return AioHttpTransport(session=session, session_owner=True, **options)


class _NotFound(SecretError):
    """The vault answered that the secret (or that version) does not exist."""


def _vault_url(raw: str) -> str:
    url = raw.strip().rstrip("/")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError on a malformed port
    except ValueError:
        raise SecretError("azure_key_vault: vault_url is not a valid URL") from None
    if parts.scheme != "https" or not parts.hostname:
        raise SecretError("azure_key_vault: vault_url must be https://<vault host>")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise SecretError("azure_key_vault: vault_url must be only https://<vault host>")
    return url


def _check_credentials(credentials: Mapping[str, str], vault_url: str) -> Mapping[str, str]:
    fields = set(credentials)
    if not fields or fields == {"access_token"} or fields == set(_SERVICE_PRINCIPAL):
        if any(not value for value in credentials.values()):
            raise SecretError(f"azure_key_vault {vault_url}: a credential field is empty")
        return credentials
    raise SecretError(
        f"azure_key_vault {vault_url}: credentials must be tenant_id, client_id and "
        f"client_secret, or access_token; got fields {sorted(fields)}"
    )


def _field(value: str, key: str, prefix: str) -> bytes:
    # Parser messages are dropped (from None): they can quote the secret's text.
    try:
        document = json.loads(value)
    except ValueError:
        raise SecretError(f"{prefix} is not JSON, so it has no key {key!r}") from None
    if not isinstance(document, dict):
        raise SecretError(f"{prefix} is not a JSON object, so it has no key {key!r}")
    if key not in document:
        raise SecretError(f"{prefix} has no key {key!r}")
    item = document[key]
    if isinstance(item, str):
        return item.encode()
    return json.dumps(item, separators=(",", ":")).encode()


def _describe(ref: SecretRef) -> str:
    version = f" version {ref.version!r}" if ref.version is not None else ""
    return f"secret {ref.path[:128]!r}{version}"

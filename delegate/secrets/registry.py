"""From a secret manager's kind to the provider that talks to it.

Each vendor module is imported only when its kind is asked for: a delegate that never
talks to Google or Azure does not pay for importing their clients, and a missing module
(or vendor library) fails that kind alone, with a clear message.
"""

from __future__ import annotations

import importlib

from delegate.secrets.base import EnvelopeProvider, ProviderConfig, ReferenceProvider, SecretError
from shared.extras import missing_library

__all__ = ["ENVELOPE_KINDS", "REFERENCE_KINDS", "make_provider"]

# kind -> (module, class)
_PROVIDERS: dict[str, tuple[str, str]] = {
    "vault_kv": ("delegate.secrets.vault", "VaultKv"),
    "vault_transit": ("delegate.secrets.vault", "VaultTransit"),
    "aws_kms": ("delegate.secrets.aws", "AwsKms"),
    "aws_secrets_manager": ("delegate.secrets.aws", "AwsSecretsManager"),
    "custom": ("delegate.secrets.custom", "CustomScript"),
    "gcp_kms": ("delegate.secrets.gcp", "GcpKms"),
    "azure_key_vault": ("delegate.secrets.azure", "AzureKeyVault"),
}

ENVELOPE_KINDS = frozenset({"aws_kms", "gcp_kms", "vault_transit"})
REFERENCE_KINDS = frozenset({"vault_kv", "aws_secrets_manager", "azure_key_vault", "custom"})


def make_provider(config: ProviderConfig) -> EnvelopeProvider | ReferenceProvider:
    """A provider for ``config.kind``; SecretError for a kind this delegate cannot serve."""
    try:
        module_name, class_name = _PROVIDERS[config.kind]
    except KeyError:
        raise SecretError(f"unknown secret manager kind {config.kind!r}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        # The vendor libraries are extras: the message names the one to install.
        raise SecretError(f"{config.kind}: {missing_library(exc, 'this delegate')}") from exc
    factory = getattr(module, class_name, None)
    if factory is None:
        raise SecretError(f"{config.kind}: not available on this delegate ({class_name} missing)")
    provider: object = factory(config)
    if not isinstance(provider, (EnvelopeProvider, ReferenceProvider)):
        raise SecretError(f"{config.kind}: {class_name} is not a secret provider")
    return provider

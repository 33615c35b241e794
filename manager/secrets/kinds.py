"""What each kind of secret manager takes, checked before anything is stored.

The manager never talks to a customer's secret manager, so it cannot test settings itself;
it only refuses what no delegate could use (a missing key name, an unknown setting, a
credential that points into another external manager). The connection test, run on a
delegate, finds the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from manager.errors import Invalid
from shared.secretspec import ENVELOPE_KINDS, MANAGER_KINDS, REFERENCE_KINDS

__all__ = ["KindRules", "check_settings", "rules_for"]


@dataclass(frozen=True, slots=True)
class KindRules:
    required: frozenset[str]
    optional: frozenset[str]
    # At least one of these, for kinds with alternatives (a custom script or inline text).
    one_of: frozenset[str] = frozenset()

    @property
    def known(self) -> frozenset[str]:
        return self.required | self.optional | self.one_of


_VAULT = frozenset({"url", "namespace", "ca_file", "token_file", "approle_file", "approle_mount"})
_AWS = frozenset({"region", "endpoint"})

_RULES: dict[str, KindRules] = {
    "builtin": KindRules(frozenset(), frozenset()),
    "vault_kv": KindRules(frozenset(), _VAULT | {"mount"}),
    "vault_transit": KindRules(frozenset({"key_name"}), _VAULT | {"mount"}),
    "aws_kms": KindRules(frozenset({"key_id"}), _AWS),
    "aws_secrets_manager": KindRules(frozenset(), _AWS),
    "gcp_kms": KindRules(
        frozenset({"key_name"}), frozenset({"endpoint", "ca_file", "insecure", "anonymous"})
    ),
    "azure_key_vault": KindRules(frozenset({"vault_url"}), frozenset({"ca_file"})),
    "custom": KindRules(
        frozenset(),
        frozenset({"shell", "timeout", "workdir"}),
        one_of=frozenset({"script", "inline"}),
    ),
}
assert set(_RULES) == MANAGER_KINDS, "every kind has its rules"
assert ENVELOPE_KINDS | REFERENCE_KINDS == MANAGER_KINDS


def rules_for(kind: str) -> KindRules:
    try:
        return _RULES[kind]
    except KeyError:
        kinds = ", ".join(sorted(MANAGER_KINDS - {"builtin"}))
        raise Invalid("invalid", f"unknown kind {kind!r}; one of: {kinds}", field="kind") from None


def check_settings(kind: str, settings: Mapping[str, str]) -> None:
    """Invalid, naming the first setting that is missing, unknown or empty."""
    rules = rules_for(kind)
    unknown = sorted(set(settings) - rules.known)
    if unknown:
        allowed = ", ".join(sorted(rules.known)) or "none"
        raise Invalid(
            "invalid",
            f"{kind} takes no setting {unknown[0]!r} (it takes: {allowed})",
            field=f"settings.{unknown[0]}",
        )
    for name in sorted(rules.required):
        if not settings.get(name, "").strip():
            raise Invalid("invalid", f"{kind} needs the setting {name!r}", field=f"settings.{name}")
    if rules.one_of:
        given = [name for name in sorted(rules.one_of) if settings.get(name, "").strip()]
        if len(given) != 1:
            names = " or ".join(sorted(rules.one_of))
            raise Invalid(
                "invalid",
                f"{kind} needs exactly one of the settings {names}",
                field="settings",
            )
    for name, value in sorted(settings.items()):
        # Settings are metadata: any signed-in user reads them, and they go into audit
        # diffs. A password in a URL would go with them (a red-team finding); credentials
        # belong in a builtin secret named by credentials_secret.
        if "://" in value and "@" in urlsplit(value.strip()).netloc:
            raise Invalid(
                "invalid",
                f"{name}: a URL with a user or password in it; keep credentials in a builtin"
                " secret (credentials_secret), not in the settings",
                field=f"settings.{name}",
            )
    if kind == "custom" and "timeout" in settings:
        try:
            ok = 0 < float(settings["timeout"]) <= 600
        except ValueError:
            ok = False
        if not ok:
            raise Invalid(
                "invalid",
                "timeout: seconds, above 0 and at most 600",
                field="settings.timeout",
            )

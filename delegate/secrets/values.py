"""A resolved secret: its bytes and, for the structured types, its fields.

``text`` and ``file`` secrets are bytes as they are. ``ssh_key`` and ``winrm`` secrets are
JSON objects of strings::

    ssh_key  {"key": ..., "passphrase": ... (optional), "user": ... (optional)}
    winrm    {"user": ..., "password": ..., "domain": ... (optional)}

except that an ``ssh_key`` kept in a customer's store (a reference) whose value is not a JSON
object is taken whole as the key, since that is how a key is usually kept there.

What an expression inserts (:attr:`ResolvedSecret.exposed`) is the value of a text or file
secret, the key of an ssh_key and the password of a winrm secret.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.secretspec import SecretType

__all__ = ["MalformedValue", "ResolvedSecret", "parse_value"]

# (required, optional) fields of each structured type.
_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "ssh_key": (frozenset({"key"}), frozenset({"passphrase", "user"})),
    "winrm": (frozenset({"user", "password"}), frozenset({"domain"})),
}
_EXPOSED = {"ssh_key": "key", "winrm": "password"}
_NAME_SHOWN = 32


class MalformedValue(ValueError):
    """A structured secret whose value does not have its type's shape. Never holds it."""


@dataclass(frozen=True, slots=True, repr=False)
class ResolvedSecret:
    name: str
    type: SecretType
    # The value as delivered or fetched (for ssh_key and winrm usually a JSON object).
    value: bytes
    # What the expressions insert; see the module docstring.
    exposed: bytes
    # ssh_key and winrm only; optional fields that were absent are absent here too.
    fields: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"ResolvedSecret(name={self.name!r}, type={self.type!r}, <{len(self.value)} bytes>)"

    def sensitive(self) -> list[bytes]:
        """Everything of this secret a task may print, each once: the maskers must know all.

        Not the user and domain of an ssh_key or winrm secret: they name an account and are
        no credential, and masking a word like "deploy" everywhere would hide the log.
        """
        fields = [v.encode() for k, v in self.fields.items() if k not in _IDENTITY_FIELDS]
        return list(dict.fromkeys([self.value, self.exposed, *fields]))


_IDENTITY_FIELDS = frozenset({"user", "domain"})


def parse_value(
    name: str, type_: SecretType, value: bytes, *, by_reference: bool
) -> ResolvedSecret:
    """The secret ``name`` of type ``type_``; MalformedValue if a structured value is unfit."""
    shape = _FIELDS.get(type_)
    if shape is None:
        return ResolvedSecret(name, type_, value, value)
    document = _json_object(value)
    if document is None and type_ == "ssh_key" and by_reference:
        return ResolvedSecret(name, type_, value, value, {"key": _text(value)})
    required, optional = shape
    expected = _describe(type_, required, optional)
    if document is None:
        raise MalformedValue(f"{type_} value is not a JSON object: {expected}")
    # A null optional field reads as an absent one, as most stores write it.
    present = {k: v for k, v in document.items() if not (v is None and k in optional)}
    missing = sorted(repr(k) for k in required - set(present))
    unknown = sorted(_short(k) for k in set(present) - required - optional)
    if missing or unknown:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unknown {', '.join(unknown)}"] if unknown else []
        raise MalformedValue(f"{type_} value fields are wrong ({'; '.join(problems)}): {expected}")
    if not all(isinstance(v, str) for v in present.values()):
        raise MalformedValue(f"{type_} value fields must be strings: {expected}")
    fields: dict[str, str] = dict(present)
    exposed = _EXPOSED[type_]
    if not fields[exposed]:
        raise MalformedValue(f"{type_} value has an empty {exposed!r}")
    return ResolvedSecret(name, type_, value, fields[exposed].encode(), fields)


def _json_object(value: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(value)
    except ValueError:
        # Not chained anywhere: a decode error quotes the document, which is the secret.
        return None
    return document if isinstance(document, dict) else None


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedValue("ssh_key value is not UTF-8 text") from None


def _short(field_name: str) -> str:
    # Field names are quoted back so a typo shows; a long "name" may be a pasted value.
    return repr(field_name) if len(field_name) <= _NAME_SHOWN else "(a long name)"


def _describe(type_: str, required: frozenset[str], optional: frozenset[str]) -> str:
    names = [f'"{n}"' for n in sorted(required)] + [f'"{n}" (optional)' for n in sorted(optional)]
    return f"{type_} takes {', '.join(names)}"

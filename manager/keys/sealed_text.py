"""A data-key-sealed record kept in a text column (a JSON body's string field): ``dk1:`` and
the record in base64. Values sealed the older way, directly with the master key, are base64
alone, which never holds a ``:``; :func:`is_sealed_text` tells the two apart."""

from __future__ import annotations

import base64
import binascii

from manager.keys.data_keys import DataKey, DataKeyError

__all__ = ["is_sealed_text", "open_text", "seal_text"]

_PREFIX = "dk1:"


def is_sealed_text(value: str) -> bool:
    return value.startswith(_PREFIX)


def seal_text(key: DataKey, field: str, plaintext: bytes) -> str:
    return _PREFIX + base64.b64encode(key.seal(field, 0, plaintext)).decode()


def open_text(key: DataKey | None, owner: str, field: str, sealed: str) -> bytes:
    """``key``: ``owner``'s data key, None when it has none (DataKeyError: the value cannot
    open, e.g. its owner was purged)."""
    if key is None:
        raise DataKeyError(f"{owner} has no data key")
    try:
        blob = base64.b64decode(sealed[len(_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise DataKeyError(f"{owner} {field}: the sealed value is not base64") from None
    return key.open(field, 0, blob)

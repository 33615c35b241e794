"""Idempotency keys belong to whoever submits them, in the place they submit to.

A key is stored behind its scope: the submitter's actor id, the application id and the
environment id, joined by the ASCII unit separator (which ids never hold). So another
principal's key, or the same key in another place, never finds someone else's task; the
store's unique column needs no second index. Stored rows from before this rule were scoped to
their task's submitter and place by migration 12.

The same submitter replaying a key with a different request gets a 409 naming what differs
(:func:`differences`) rather than the earlier task: a retry must not stand in for a different
deploy.
"""

from __future__ import annotations

import hmac
import json

from manager.records import TaskRecord

__all__ = ["differences", "scoped", "shown"]

_SEP = "\x1f"


def scoped(key: str, submitted_by: str | None, app_id: str | None, env_id: str | None) -> str:
    parts = (submitted_by or "", app_id or "", env_id or "")
    # The scope's parts are ids the manager made; a separator in one would shift the key.
    clean = [p.replace(_SEP, "") for p in parts]
    return _SEP.join([*clean, key])


def shown(stored: str | None) -> str | None:
    """The key as its submitter gave it."""
    if stored is None:
        return None
    parts = stored.split(_SEP, 3)
    return parts[3] if len(parts) == 4 else stored


# What a submit asked for; anything else (state, timestamps, outcome) is the task's own.
_REQUEST_FIELDS = (
    "type",
    "payload",
    "selectors",
    "timeout_s",
    "queue_timeout_s",
    "max_attempts",
    "secret_env_names",
    "deployment",
    "app_id",
    "env_id",
    "name",
    "labels",
)


def differences(
    asked: TaskRecord, earlier: TaskRecord, asked_env: bytes, earlier_env: bytes
) -> list[str]:
    """The request fields in which ``asked`` differs from ``earlier``; secret values are
    compared (as their serialised form) without ever being named."""
    out = [
        f
        for f in _REQUEST_FIELDS
        if _canonical(getattr(asked, f)) != _canonical(getattr(earlier, f))
    ]
    if not hmac.compare_digest(asked_env, earlier_env):
        out.append("secret_env")
    return out


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=list)

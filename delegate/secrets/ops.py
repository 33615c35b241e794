"""The manager's secret operations, done here because only a delegate reaches the customer's
secret managers (the manager never talks to them).

- ``check``: the manager's connection test;
- ``wrap``: wrap the data key the task's sealed env carries (``TETHER_DATA_KEY``);
- ``unwrap``: unwrap a data key and seal it to the one-off key the manager sent;
- ``rewrap``: unwrap with one manager, wrap with another (a migration).

A data key is held only in memory for the length of the call: it is written to no log and
no file, and travels back to the manager only wrapped or sealed.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from delegate.secrets.base import SecretError
from delegate.secrets.providers import Providers
from shared.envelope import DATA_KEY_LEN, EnvelopeContext, EnvelopeError
from shared.sealing import SealError, seal
from shared.secretspec import ManagerSpec, SecretOpPayload, op_key_context

__all__ = ["DATA_KEY_ENV", "describe", "run_secret_op"]

DATA_KEY_ENV = "TETHER_DATA_KEY"


def describe(payload: SecretOpPayload) -> str:
    """What the operation does, for the task log: names and kinds only."""
    text = f"{payload.op} with secret manager {_name(payload.manager)}"
    if payload.target is not None:
        text += f" to {_name(payload.target)}"
    return text


async def run_secret_op(
    payload: SecretOpPayload,
    *,
    task_id: str,
    secret_env: Mapping[str, str],
    providers: Providers,
) -> dict[str, str]:
    """The operation's outputs; SecretError with a safe message when it fails."""
    if payload.op == "check":
        await providers.get(payload.manager).check()
        return {}
    context = _context(payload.context)
    if payload.op == "wrap":
        data_key = _decode(secret_env.get(DATA_KEY_ENV), f"the sealed env's {DATA_KEY_ENV}")
        _check_length(data_key)
        wrapped = await providers.envelope(payload.manager).wrap_key(data_key, context)
        return {"wrapped_key": _encode(wrapped)}
    wrapped_in = _decode(payload.wrapped_key, "wrapped_key")
    data_key = await providers.envelope(payload.manager).unwrap_key(wrapped_in, context)
    _check_length(data_key)
    if payload.op == "unwrap":
        assert payload.reply_key is not None  # SecretOpPayload requires it for unwrap
        try:
            sealed = seal(payload.reply_key, data_key, context=op_key_context(task_id))
        except SealError as exc:
            raise SecretError(f"reply_key is unusable: {exc}") from None
        return {"sealed_key": sealed}
    assert payload.target is not None  # SecretOpPayload requires it for rewrap
    wrapped = await providers.envelope(payload.target).wrap_key(data_key, context)
    return {"wrapped_key": _encode(wrapped)}


def _context(encoded: str | None) -> bytes:
    context = _decode(encoded, "context")
    try:
        # Only an envelope's own context: the key services bind it to the wrapped key.
        EnvelopeContext.from_canonical(context)
    except EnvelopeError as exc:
        raise SecretError(f"context is not an envelope context: {exc}") from None
    return context


def _decode(value: str | None, what: str) -> bytes:
    if not value:
        raise SecretError(f"{what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(f"{what} is not valid base64") from None


def _encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _check_length(data_key: bytes) -> None:
    if len(data_key) != DATA_KEY_LEN:
        raise SecretError(f"the data key is not {DATA_KEY_LEN} bytes long")


def _name(manager: ManagerSpec) -> str:
    return f"{manager.name!r} ({manager.kind})"

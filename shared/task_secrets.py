"""Where a task's payload may hold secret expressions, read the same way on both sides.

The manager reads a payload to learn which secrets to deliver (and refuses a malformed
expression at submit with a 400); the delegate renders the same fields with the values.
Expressions are honoured in a shell task's script and env values and in an http task's
url, header values and body; ``credential_secrets`` names ssh_key and winrm secrets.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import TypeVar

from pydantic import BaseModel

from shared.expressions import ExpressionError, SecretExpr, find_expressions, render
from shared.protocol import CapabilityPayload, HttpPayload, ShellPayload, VerifyPayload

__all__ = [
    "RenderError",
    "credential_expression",
    "expression_fields",
    "referenced_secrets",
    "render_payload",
]

Payload = ShellPayload | HttpPayload | CapabilityPayload | VerifyPayload


def credential_expression(name: str) -> str:
    """The expression a verify payload's credential role holds for the secret ``name``."""
    return f'${{secrets.getValue("{name}")}}'


P = TypeVar("P", bound=BaseModel)


class RenderError(ValueError):
    """An expression that cannot be replaced: the field and the secret, never a value."""


def expression_fields(payload: object) -> Iterator[tuple[str, str]]:
    """(field, text) for every field of ``payload`` that may hold expressions."""
    if isinstance(payload, ShellPayload):
        yield "script", payload.script
        for name, value in payload.env.items():
            yield f"env.{name}", value
    elif isinstance(payload, HttpPayload):
        yield "url", payload.url
        for name, value in payload.headers.items():
            yield f"headers.{name}", value
        if payload.body is not None:
            yield "body", payload.body
    elif isinstance(payload, VerifyPayload):
        for role, value in payload.credentials.items():
            yield f"credentials.{role}", value


def referenced_secrets(payload: object) -> set[str]:
    """The names of every secret ``payload`` uses; ValueError naming the field and the
    position (never a value) when an expression is malformed.
    """
    names: set[str] = set()
    for field, text in expression_fields(payload):
        try:
            names.update(expr.name for expr in find_expressions(text))
        except ExpressionError as exc:
            raise ValueError(f"{field}: {exc}") from None
    if isinstance(payload, ShellPayload):
        names.update(payload.credential_secrets)
    return names


def render_payload(payload: P, resolve: Callable[[str], bytes]) -> P:
    """A copy of ``payload`` with every expression replaced; other payloads as they are.

    ``resolve(name)`` gives the bytes a secret's expressions insert, or raises KeyError
    for a name it does not know (a RenderError here). ``getValue`` and ``getAsString`` insert them
    as UTF-8 text, and refuse bytes that are not: a script or an environment value is text,
    and a lossy decode would hand the task a value that is not the secret.
    ``getAsBase64`` inserts them in standard base64, whatever they are.

    The copy is not validated again: a rendered script may well pass the submit size limit.
    """
    if isinstance(payload, ShellPayload):
        update: dict[str, object] = {
            "script": _render_field("script", payload.script, resolve),
            "env": {k: _render_field(f"env.{k}", v, resolve) for k, v in payload.env.items()},
        }
    elif isinstance(payload, HttpPayload):
        update = {
            "url": _render_field("url", payload.url, resolve),
            "headers": {
                k: _render_field(f"headers.{k}", v, resolve) for k, v in payload.headers.items()
            },
        }
        if payload.body is not None:
            update["body"] = _render_field("body", payload.body, resolve)
    elif isinstance(payload, VerifyPayload):
        update = {
            "credentials": {
                k: _render_field(f"credentials.{k}", v, resolve)
                for k, v in payload.credentials.items()
            }
        }
    else:
        return payload
    return payload.model_copy(update=update)


def _render_field(field: str, text: str, resolve: Callable[[str], bytes]) -> str:
    def one(expr: SecretExpr) -> str:
        try:
            raw = resolve(expr.name)
        except KeyError:
            raise RenderError(f'{field}: secret "{expr.name}" is not known to the task') from None
        if expr.kind == "file_base64":
            return base64.b64encode(raw).decode("ascii")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RenderError(
                f'{field}: secret "{expr.name}" is not UTF-8 text; insert it with '
                f'${{configFile.getAsBase64("{expr.name}")}} and decode it where it is used'
            ) from None

    try:
        return render(text, one)
    except ExpressionError as exc:
        raise RenderError(f"{field}: {exc}") from None

"""A task step as the task it submits.

Inputs never enter a script: the script is sent as the runbook wrote it, and each input
reaches it as an ``INPUT_<NAME>`` environment variable, in the task's sealed environment
(encrypted at rest and to the delegate, like ``--secret-env``). A secret input reaches it as
the secret expression the delegate resolves, so its value is never held by the manager.

An http step's fields are templates. A value put into one is escaped so that text in an
input that looks like a secret expression stays text: an input cannot make the delegate
fetch a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from manager.core.runexpr import Scope, SecretRef, as_text, evaluate, parse
from manager.schemas.runbooks import StepDef
from manager.schemas.tasks import TaskSubmit
from shared.protocol import HttpPayload, ShellPayload

__all__ = ["escape_expressions", "task_for"]

_TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
_EXPRESSION_START = re.compile(r"(\$+)(\{(?:secrets|configFile)\.)")


def escape_expressions(text: str) -> str:
    """``text`` as literal text for shared.expressions: one more ``$`` before each brace
    that would start (or is already an escaped) secret expression."""
    return _EXPRESSION_START.sub(r"$\1\2", text)


def _render(text: str, scope: Scope) -> str:
    def one(match: re.Match[str]) -> str:
        value = evaluate(parse(match.group(1)), scope)
        if isinstance(value, SecretRef):
            return value.expression()
        return escape_expressions(as_text(value))

    return _TEMPLATE.sub(one, text)


def _env_name(name: str) -> str:
    return "INPUT_" + name.upper()


def task_for(
    step: StepDef,
    scope: Scope,
    inputs: Mapping[str, Any],
    *,
    app: str,
    env: str,
    idempotency_key: str,
) -> TaskSubmit:
    if step.kind == "shell":
        assert step.script is not None
        plain_env: dict[str, str] = {}
        payload_env: dict[str, str] = {}
        for name, value in inputs.items():
            if isinstance(value, SecretRef):
                payload_env[_env_name(name)] = value.expression()
            else:
                plain_env[_env_name(name)] = as_text(value)
        for name, template in step.env.items():
            rendered = _render(template, scope)
            # checks.py allows a secret input in a value only alone with others of its kind.
            if "${secrets." in template or _has_secret(template, scope):
                payload_env[name] = rendered
            else:
                plain_env[name] = _TEMPLATE.sub(
                    lambda m: as_text(evaluate(parse(m.group(1)), scope)), template
                )
        payload: ShellPayload | HttpPayload = ShellPayload(
            script=step.script, interpreter=step.interpreter, env=payload_env
        )
        secret_env = plain_env
    else:
        assert step.url is not None
        payload = HttpPayload(
            method=step.method,
            url=_render(step.url, scope),
            headers={k: _render(v, scope) for k, v in step.headers.items()},
            body=None if step.body is None else _render(step.body, scope),
            expect_status=step.expect_status,
        )
        secret_env = {}
    return TaskSubmit(
        payload=payload,
        selectors=step.selectors,
        timeout_s=step.timeout_s,
        idempotency_key=idempotency_key,
        secret_env=secret_env,
        app=app,
        env=env,
    )


def _has_secret(template: str, scope: Scope) -> bool:
    for match in _TEMPLATE.finditer(template):
        if isinstance(evaluate(parse(match.group(1)), scope), SecretRef):
            return True
    return False

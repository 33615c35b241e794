"""A task step as the task it submits.

Inputs never enter a script: the script is sent as the runbook wrote it, and each input
reaches it as an ``INPUT_<NAME>`` environment variable (``env`` values are templates too). A
secret input reaches it as the secret expression the delegate resolves (and masks), so its
value is never held by the manager.

Plain inputs go in the task's payload, not its sealed ``secret_env``: the delegate masks
every sealed value in the log, and an input such as ``prod`` would blank that word out of
every line. The payload is the task's own data (per-task data keys will cover it).

Every value put into a field the delegate reads for secret expressions (env values, an http
step's url, headers and body) is escaped, so that text in an input that looks like a secret
expression stays text: an input cannot make the delegate fetch a secret.
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
        variables: dict[str, str] = {}
        for name, value in inputs.items():
            if isinstance(value, SecretRef):
                variables[_env_name(name)] = value.expression()
            else:
                variables[_env_name(name)] = escape_expressions(as_text(value))
        for name, template in step.env.items():
            variables[name] = _render(template, scope)
        payload: ShellPayload | HttpPayload = ShellPayload(
            script=step.script, interpreter=step.interpreter, env=variables
        )
    else:
        assert step.url is not None
        payload = HttpPayload(
            method=step.method,
            url=_render(step.url, scope),
            headers={k: _render(v, scope) for k, v in step.headers.items()},
            body=None if step.body is None else _render(step.body, scope),
            expect_status=step.expect_status,
        )
    return TaskSubmit(
        payload=payload,
        selectors=step.selectors,
        timeout_s=step.timeout_s,
        idempotency_key=idempotency_key,
        app=app,
        env=env,
    )

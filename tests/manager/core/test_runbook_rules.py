"""Runbook expressions, typed inputs and governance scores: plain functions, table-tested,
and inputs under hypothesis."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manager.core.runexpr import ExprError, Scope, SecretRef, evaluate, parse, render
from manager.core.runinputs import InputError, validate_inputs
from manager.core.standards import refusal, score
from manager.runbooks.steps import escape_expressions, task_for
from manager.schemas.runbooks import RunbookDefinition, StandardDefinition, StepDef
from shared.expressions import find_expressions
from shared.expressions import render as render_secrets
from shared.protocol import ShellPayload

SCOPE = Scope(
    {"n": 3.0, "name": "api", "flag": False, "token": SecretRef("prod/token")},
    {"check": ("succeeded", {"healthy": "true", "count": "12"})},
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("inputs.n == 3", True),
        ("inputs.n > 2 && inputs.name == 'api'", True),
        ("!inputs.flag", True),
        ("inputs.flag || steps.check.outputs.healthy", True),
        ("steps.check.outputs.count >= 12", True),
        ('steps.check.status == "succeeded"', True),
        ("steps.check.outputs.missing == null", True),
        ("(inputs.n < 1) || (inputs.n > 5)", False),
        ('"it\\"s" == "it\\"s"', True),
    ],
)
def test_expressions(text: str, value: object) -> None:
    assert evaluate(parse(text), SCOPE) == value


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("inputs.n ==", "ends too early"),
        ("inputs.n = 3", "unexpected character"),
        ("os.system('x')", "unknown reference"),
        ("inputs.nope", "no input 'nope'"),
        ("steps.later.status", "no earlier step"),
        ("inputs.name > 1", "compares numbers"),
        ("inputs.token == 'x'", "secret input may not be compared"),
        ("inputs.n) (", "unexpected"),
    ],
)
def test_bad_expressions_are_refused(text: str, words: str) -> None:
    with pytest.raises(ExprError, match=words):
        evaluate(parse(text), SCOPE)


def test_templates_put_values_in_as_text() -> None:
    assert render("n=${{ inputs.n }} ok=${{ steps.check.outputs.healthy }}", SCOPE) == "n=3 ok=true"


def test_an_input_never_becomes_a_secret_expression_in_an_http_step() -> None:
    hostile = '${secrets.getValue("prod/db")}'
    step = StepDef(name="h", kind="http", url="https://x/?q=${{ inputs.q }}&t=${{ inputs.token }}")
    scope = Scope({"q": hostile, "token": SecretRef("prod/token")}, {})
    task = task_for(step, scope, scope.inputs, app="a", env="e", idempotency_key="k")
    url = task.payload.url  # type: ignore[union-attr]
    # Only the secret input is an expression the delegate resolves.
    assert [e.name for e in find_expressions(url)] == ["prod/token"]
    assert render_secrets(url, lambda e: "T") == f"https://x/?q={hostile}&t=T"


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(alphabet="${}secrtsgValu.(\"')x", max_size=40))
def test_escaping_keeps_any_text_literal(text: str) -> None:
    escaped = escape_expressions(text)
    assert find_expressions(escaped) == []
    assert render_secrets(escaped, lambda e: "!") == text


def test_a_shell_step_gets_inputs_as_environment_never_in_its_script() -> None:
    step = StepDef(name="s", kind="shell", script="echo $INPUT_NAME", env={"N": "${{ inputs.n }}"})
    scope = Scope({**SCOPE.inputs, "name": '${secrets.getValue("prod/db")}'}, SCOPE.steps)
    task = task_for(step, scope, scope.inputs, app="a", env="e", idempotency_key="k")
    payload = task.payload
    assert isinstance(payload, ShellPayload)
    assert payload.script == "echo $INPUT_NAME"
    assert task.secret_env == {}
    # Only the secret input is an expression the delegate resolves; the rest reads as text.
    rendered = {k: render_secrets(v, lambda e: f"<{e.name}>") for k, v in payload.env.items()}
    assert rendered == {
        "INPUT_N": "3",
        "INPUT_NAME": '${secrets.getValue("prod/db")}',
        "INPUT_FLAG": "false",
        "INPUT_TOKEN": "<prod/token>",
        "N": "3",
    }


# -- inputs -----------------------------------------------------------------------------------

RB = RunbookDefinition.model_validate(
    {
        "name": "rb",
        "app": "a",
        "env": "e",
        "inputs": [
            {"name": "reason"},
            {"name": "count", "type": "number", "default": 1},
            {"name": "dry", "type": "boolean", "required": False},
            {"name": "mode", "type": "enum", "values": ["fast", "safe"], "default": "safe"},
            {"name": "db", "type": "secret", "required": False},
        ],
        "steps": [{"name": "s", "kind": "shell", "script": "true"}],
    }
)


@pytest.mark.parametrize(
    ("raw", "typed"),
    [
        ({"reason": "x"}, {"reason": "x", "count": 1.0, "mode": "safe"}),
        (
            {"reason": "x", "count": "2.5", "dry": "yes", "mode": "fast", "db": "team/db"},
            {"reason": "x", "count": 2.5, "dry": True, "mode": "fast", "db": SecretRef("team/db")},
        ),
        (
            {"reason": "x", "count": 3, "dry": False},
            {"reason": "x", "count": 3.0, "dry": False, "mode": "safe"},
        ),
    ],
)
def test_inputs_are_typed(raw: dict[str, Any], typed: dict[str, Any]) -> None:
    assert validate_inputs(RB, raw) == typed


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({}, "input 'reason': is required"),
        ({"reason": "x", "count": "nan"}, "finite"),
        ({"reason": "x", "count": True}, "got a boolean"),
        ({"reason": "x", "dry": "maybe"}, "true or false"),
        ({"reason": "x", "mode": "slow"}, "one of fast, safe"),
        ({"reason": "x", "db": "../etc"}, "not a secret name"),
        ({"reason": "x" * 1025}, "longer than 1024"),
        ({"reason": "x", "zzz": "1"}, "no such input"),
        ({"reason": 5}, "expected text"),
    ],
)
def test_bad_inputs_are_refused(raw: dict[str, Any], words: str) -> None:
    with pytest.raises(InputError, match=words):
        validate_inputs(RB, raw)


scalars = st.one_of(st.text(max_size=50), st.integers(), st.floats(), st.booleans(), st.none())


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(["reason", "count", "dry", "mode", "db", "x"]), scalars))
def test_any_input_is_typed_or_refused_with_its_name(raw: dict[str, Any]) -> None:
    refused: InputError | None = None
    try:
        typed = validate_inputs(RB, raw)
    except InputError as exc:
        refused = exc
    if refused is not None:
        assert refused.name in raw or refused.name == "reason"
        return
    assert set(typed) <= {"reason", "count", "dry", "mode", "db"}
    assert isinstance(typed["reason"], str)
    assert isinstance(typed["count"], float)
    assert typed["count"] == typed["count"]
    assert typed["mode"] in ("fast", "safe")
    assert isinstance(typed.get("dry", False), bool)


# -- standards --------------------------------------------------------------------------------

STANDARD = StandardDefinition.model_validate(
    {
        "name": "prod",
        "rules": [
            {"rule": "has_step_tagged", "value": "security-scan", "weight": 3},
            {"rule": "has_step_kind", "value": "approval", "weight": 5},
            {"rule": "has_tag", "value": "owned", "weight": 1},
            {"rule": "has_rollback", "weight": 1},
        ],
        "enforce_env_types": ["production"],
        "minimum": 80,
    }
)


def runbook(steps: list[dict[str, Any]], **extra: Any) -> RunbookDefinition:
    return RunbookDefinition.model_validate(
        {"name": "r", "app": "a", "env": "e", "steps": steps, **extra}
    )


SCAN = {"name": "scan", "kind": "shell", "script": "x", "tags": ["security-scan"]}
GATE = {"name": "gate", "kind": "approval", "groups": ["sre"]}
UNDO = {"name": "undo", "kind": "shell", "script": "x"}


@pytest.mark.parametrize(
    ("rb", "percent", "unmet"),
    [
        (runbook([SCAN, GATE], tags=["owned"], rollback=UNDO), 100.0, []),
        (runbook([SCAN, GATE]), 80.0, ["tagged owned (1)", "has a rollback step (1)"]),
        (
            runbook([GATE]),
            50.0,
            ["has a step tagged security-scan (3)", "tagged owned (1)", "has a rollback step (1)"],
        ),
        (
            runbook([UNDO]),
            0.0,
            [
                "has a step tagged security-scan (3)",
                "has a approval step (5)",
                "tagged owned (1)",
                "has a rollback step (1)",
            ],
        ),
    ],
)
def test_scores(rb: RunbookDefinition, percent: float, unmet: list[str]) -> None:
    s = score(STANDARD, rb, "production")
    assert (s.percent, list(s.unmet)) == (percent, unmet)


def test_enforcement_refuses_below_the_minimum_in_its_env_type_only() -> None:
    low = runbook([GATE])
    assert refusal([score(STANDARD, low, "non_production")]) is None
    why = refusal([score(STANDARD, low, "production")])
    assert why is not None
    assert "scores 50 %, below the 80 % required" in why
    assert "has a step tagged security-scan (3)" in why
    # 80 % is enough at a minimum of 80.
    assert refusal([score(STANDARD, runbook([SCAN, GATE]), "production")]) is None

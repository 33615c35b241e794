"""What a runbook definition must satisfy before it is stored: known, available step kinds
with the fields they need, and expressions that parse and read only inputs and earlier
steps."""

from __future__ import annotations

from collections.abc import Mapping

from manager.core.runexpr import ExprError, Node, parse, references, template_expressions
from manager.runbooks.kinds import KINDS, problem_of
from manager.schemas.runbooks import RunbookDefinition, StepDef
from shared.expressions import ExpressionError, find_expressions

__all__ = ["problems"]


def problems(definition: RunbookDefinition) -> list[str]:
    """Everything wrong with ``definition``, each a line a person can act on."""
    out: list[str] = []
    inputs = {i.name: i.type for i in definition.inputs}
    earlier: set[str] = set()
    steps = [(s, False) for s in definition.steps]
    if definition.rollback is not None:
        steps.append((definition.rollback, True))
    for step, is_rollback in steps:
        where = f"step {step.name}"
        problem = problem_of(step)
        if problem is not None:
            out.append(f"{where}: {problem}")
        if is_rollback and not KINDS.get(step.kind, KINDS["approval"]).is_task:
            out.append(f"{where}: the rollback step is a shell or http step")
        visible = set(earlier) if not is_rollback else {s.name for s in definition.steps}
        out.extend(f"{where}: {p}" for p in _expression_problems(step, inputs, visible))
        earlier.add(step.name)
    return out


def _expression_problems(step: StepDef, inputs: Mapping[str, str], steps: set[str]) -> list[str]:
    out: list[str] = []
    if step.when is not None:
        try:
            out.extend(f"when: {p}" for p in _refs(parse(step.when), inputs, steps))
        except ExprError as exc:
            out.append(f"when: {exc}")
    fields = {f"env.{k}": v for k, v in step.env.items()}
    fields |= {f"headers.{k}": v for k, v in step.headers.items()}
    if step.url is not None:
        fields["url"] = step.url
    if step.body is not None:
        fields["body"] = step.body
    for name, text in fields.items():
        try:
            nodes = template_expressions(text)
        except ExprError as exc:
            out.append(f"{name}: {exc}")
            continue
        for node in nodes:
            out.extend(f"{name}: {p}" for p in _refs(node, inputs, steps))
    if step.script is not None:
        try:
            find_expressions(step.script)
        except ExpressionError as exc:
            out.append(f"script: {exc}")
    return out


def _refs(node: Node, inputs: Mapping[str, str], steps: set[str]) -> list[str]:
    out = []
    for path in references(node):
        if path[0] == "inputs" and path[1] not in inputs:
            out.append(f"no input {path[1]!r}")
        if path[0] == "steps" and path[1] not in steps:
            out.append(f"{path[1]!r} is not an earlier step")
    return out

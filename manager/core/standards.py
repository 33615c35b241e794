"""Governance standards: weighted rules over a runbook's tags and structure, and the
conformance score they give it.

A score is the weight of the rules met over the weight of all rules, in percent. A standard
enforced for an environment type refuses runs there below its minimum, naming the rules
that are not met.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from manager.schemas.runbooks import RunbookDefinition, StandardDefinition, StandardRule

__all__ = ["Score", "describe", "holds", "refusal", "score"]


@dataclass(frozen=True, slots=True)
class Score:
    standard: str
    percent: float
    met: tuple[str, ...]
    unmet: tuple[str, ...]
    enforced: bool
    minimum: float | None


def describe(rule: StandardRule) -> str:
    text = (
        rule.description
        or {
            "has_tag": f"tagged {rule.value}",
            "has_step_tagged": f"has a step tagged {rule.value}",
            "has_step_kind": f"has a {rule.value} step",
            "has_rollback": "has a rollback step",
        }[rule.rule]
    )
    return f"{text} ({rule.weight:g})"


def holds(rule: StandardRule, runbook: RunbookDefinition) -> bool:
    steps = [*runbook.steps, *([runbook.rollback] if runbook.rollback else [])]
    if rule.rule == "has_tag":
        return rule.value in runbook.tags
    if rule.rule == "has_step_tagged":
        return any(rule.value in s.tags for s in steps)
    if rule.rule == "has_step_kind":
        return any(s.kind == rule.value for s in runbook.steps)
    return runbook.rollback is not None


def score(
    standard: StandardDefinition, runbook: RunbookDefinition, env_type: str | None = None
) -> Score:
    """``env_type``: where the run goes (None: judged nowhere, so never enforced)."""
    met = [r for r in standard.rules if holds(r, runbook)]
    unmet = [r for r in standard.rules if not holds(r, runbook)]
    total = sum(r.weight for r in standard.rules)
    percent = round(100.0 * sum(r.weight for r in met) / total, 1)
    enforced = env_type is not None and env_type in standard.enforce_env_types
    return Score(
        standard.name,
        percent,
        tuple(describe(r) for r in met),
        tuple(describe(r) for r in unmet),
        enforced,
        standard.minimum if standard.enforce_env_types else None,
    )


def refusal(scores: Iterable[Score]) -> str | None:
    """Why a run is refused: every enforced standard it falls below, with its unmet rules;
    None when it may run."""
    below = [s for s in scores if s.enforced and s.minimum is not None and s.percent < s.minimum]
    if not below:
        return None
    return "; ".join(
        f"standard {s.standard!r} scores {s.percent:g} %, below the {s.minimum:g} % required"
        f" here; unmet: {', '.join(s.unmet)}"
        for s in below
    )

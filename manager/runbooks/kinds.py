"""The step kinds a runbook may use, each with what it requires of its step.

``verify`` is registered so that a runbook naming it is refused clearly at apply, until the
continuous-verification change registers it as available.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from manager.schemas.runbooks import StepDef

__all__ = ["KINDS", "StepKind", "problem_of"]


@dataclass(frozen=True, slots=True)
class StepKind:
    name: str
    available: bool
    # The first thing wrong with a step of this kind, or None.
    check: Callable[[StepDef], str | None]
    # A task on a delegate (its outputs feed later steps).
    is_task: bool = False
    why_unavailable: str = ""


def _shell(step: StepDef) -> str | None:
    if not step.script:
        return "a shell step needs a script"
    if step.url or step.groups or step.spec:
        return "a shell step takes no url, groups or spec"
    return None


def _http(step: StepDef) -> str | None:
    if not step.url:
        return "an http step needs a url"
    if step.script or step.env or step.groups or step.spec:
        return "an http step takes no script, env, groups or spec"
    return None


def _approval(step: StepDef) -> str | None:
    if not step.groups:
        return "an approval step names the groups that must approve"
    if step.script or step.url or step.env or step.selectors or step.spec:
        return "an approval step takes no script, url, env, selectors or spec"
    return None


def _verify(step: StepDef) -> str | None:
    return None if step.spec else "a verify step needs a spec"


KINDS: dict[str, StepKind] = {
    "shell": StepKind("shell", True, _shell, is_task=True),
    "http": StepKind("http", True, _http, is_task=True),
    "approval": StepKind("approval", True, _approval),
    "verify": StepKind(
        "verify",
        False,
        _verify,
        why_unavailable="continuous verification is not available yet in this release",
    ),
}


def problem_of(step: StepDef) -> str | None:
    kind = KINDS.get(step.kind)
    if kind is None:
        return f"unknown step kind {step.kind!r}; known: {', '.join(KINDS)}"
    if not kind.available:
        return f"step kind {step.kind!r} is not available: {kind.why_unavailable}"
    return kind.check(step)

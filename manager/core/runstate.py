"""The runbook run state machine: plain functions fed the run, an event and the time.

They decide; they do not write. :func:`on_event` answers the run as it is to be stored and
the effects to carry out once it is: the service stores the new run with a compare-and-set
on its version, then submits tasks or cancels them. A step is stored as ``submitting``
before its task is submitted, with a key derived from the run and the step, so a manager
that dies between the two submits again under the same key and gets the same task: a step
that finished is never run twice.

    queued --start--> running --(approval step)--> waiting_for_approval --approve--> running
    running --all steps done--> succeeded
    running --a task failed--> (rollback step, if any) --> failed
    waiting_for_approval --reject | timeout--> failed
    queued | running | waiting_for_approval --cancel--> cancelled

Step statuses: pending, skipped (its condition was false), submitting, running,
waiting (for approval), succeeded, failed, rejected, timed_out, cancelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from manager.core.runexpr import ExprError, Scope, evaluate, parse, truthy
from manager.schemas.runbooks import RunbookDefinition, StepDef

__all__ = [
    "FINAL",
    "ROLLBACK",
    "TASK_KINDS",
    "Approve",
    "Cancel",
    "CancelTask",
    "Outcome",
    "Refused",
    "Reject",
    "RunProgress",
    "Start",
    "StepProgress",
    "Submit",
    "Submitted",
    "TaskDone",
    "Tick",
    "on_event",
    "waiting_step",
]

RunState = Literal["queued", "running", "waiting_for_approval", "succeeded", "failed", "cancelled"]
FINAL = frozenset({"succeeded", "failed", "cancelled"})
# Step kinds that are a task on a delegate (verify: manager.runbooks.verify_step).
TASK_KINDS = frozenset({"shell", "http", "verify"})
_DONE = frozenset({"succeeded", "skipped"})
_ENDED = frozenset({"succeeded", "skipped", "failed", "rejected", "timed_out", "cancelled"})
ROLLBACK = -1


class Refused(Exception):
    """The event is not allowed now (``code``: forbidden or conflict)."""

    def __init__(self, code: Literal["forbidden", "conflict"], message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StepProgress(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    status: str = "pending"
    task_id: str | None = None
    deadline: float | None = None
    # (group, user id, user name, reason) of each approval given.
    approvals: list[dict[str, str]] = Field(default_factory=list)
    reason: str | None = None


class RunProgress(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    state: RunState = "queued"
    steps: list[StepProgress]
    rollback: StepProgress | None = None
    reason: str | None = None

    @classmethod
    def new(cls, definition: RunbookDefinition) -> RunProgress:
        return cls(
            steps=[StepProgress() for _ in definition.steps],
            rollback=StepProgress() if definition.rollback else None,
        )


# -- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    pass


@dataclass(frozen=True, slots=True)
class Tick:
    """Nothing happened but the time: approval deadlines, and what a restart must redo."""


@dataclass(frozen=True, slots=True)
class Submitted:
    index: int  # ROLLBACK for the rollback step
    task_id: str


@dataclass(frozen=True, slots=True)
class TaskDone:
    index: int
    task_id: str
    succeeded: bool
    reason: str | None = None
    # What the task wrote to $TETHER_OUTPUT: later steps' conditions and templates read it.
    outputs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Decision:
    """A person's decision on the step the run waits on."""

    user_id: str
    user_name: str
    groups: frozenset[str]
    started_it: bool
    reason: str = ""
    step: str | None = None


@dataclass(frozen=True)
class Approve(_Decision):
    pass


@dataclass(frozen=True)
class Reject(_Decision):
    pass


@dataclass(frozen=True, slots=True)
class Cancel:
    reason: str = "cancelled"


Event = Start | Tick | Submitted | TaskDone | Approve | Reject | Cancel

# -- effects --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    index: int


@dataclass(frozen=True, slots=True)
class CancelTask:
    task_id: str


Effect = Submit | CancelTask


@dataclass(frozen=True, slots=True)
class Outcome:
    run: RunProgress
    effects: list[Effect] = field(default_factory=list)
    changed: bool = True


def waiting_step(run: RunProgress) -> int | None:
    return next((i for i, s in enumerate(run.steps) if s.status == "waiting"), None)


def on_event(
    definition: RunbookDefinition,
    run: RunProgress,
    event: Event,
    now: float,
    outputs: Mapping[str, Mapping[str, str]],
    inputs: Mapping[str, object],
) -> Outcome:
    """The run after ``event`` at ``now`` (wall clock), and what to do. ``outputs``: each
    finished step's outputs by step name; ``inputs``: the run's typed inputs."""
    before = run.model_dump()
    new = run.model_copy(deep=True)
    effects: list[Effect] = []
    if new.state in FINAL:
        if isinstance(event, Approve | Reject | Cancel):
            raise Refused("conflict", f"the run has ended ({new.state})")
        return Outcome(new, [], changed=False)
    if isinstance(event, Cancel):
        for step in [*new.steps, *([new.rollback] if new.rollback else [])]:
            if step.status in ("running", "submitting") and step.task_id is not None:
                effects.append(CancelTask(step.task_id))
            if step.status not in _ENDED:
                step.status = "cancelled"
        new.state, new.reason = "cancelled", event.reason
        return Outcome(new, effects)
    if isinstance(event, Submitted):
        step = _step(new, event.index)
        if step.status == "submitting":
            step.status, step.task_id = "running", event.task_id
    elif isinstance(event, TaskDone):
        step = _step(new, event.index)
        if step.status in ("running", "submitting") and step.task_id in (None, event.task_id):
            step.task_id = event.task_id
            step.status = "succeeded" if event.succeeded else "failed"
            step.reason = event.reason
            if event.index != ROLLBACK:
                outputs = {**outputs, definition.steps[event.index].name: dict(event.outputs)}
    elif isinstance(event, Approve | Reject):
        _decide_approval(definition, new, event)
    if new.state == "queued":
        new.state = "running"
    effects.extend(_proceed(definition, new, now, outputs, inputs))
    return Outcome(new, effects, changed=new.model_dump() != before)


def _step(run: RunProgress, index: int) -> StepProgress:
    if index == ROLLBACK:
        assert run.rollback is not None
        return run.rollback
    return run.steps[index]


def _decide_approval(
    definition: RunbookDefinition, run: RunProgress, event: Approve | Reject
) -> None:
    index = waiting_step(run)
    if index is None:
        raise Refused("conflict", "the run is not waiting for an approval")
    spec = definition.steps[index]
    if event.step is not None and event.step != spec.name:
        raise Refused("conflict", f"the run waits on step {spec.name!r}, not {event.step!r}")
    if event.started_it and not definition.allow_self_approval:
        raise Refused("forbidden", "you started this run: another person must decide on it")
    done = {a["group"] for a in run.steps[index].approvals}
    mine = [g for g in spec.groups if g in event.groups and g not in done]
    if not mine:
        if any(g in event.groups for g in spec.groups):
            raise Refused("conflict", "your group has already approved this step")
        raise Refused(
            "forbidden", f"approving step {spec.name!r} needs a member of {', '.join(spec.groups)}"
        )
    step = run.steps[index]
    if isinstance(event, Reject):
        step.status = "rejected"
        step.reason = f"rejected by {event.user_name}" + (
            f": {event.reason}" if event.reason else ""
        )
        step.approvals.append(_approval(mine[0], event, "rejected"))
        return
    step.approvals.append(_approval(mine[0], event, "approved"))
    if {a["group"] for a in step.approvals} >= set(spec.groups):
        step.status = "succeeded"


def _approval(group: str, event: Approve | Reject, decision: str) -> dict[str, str]:
    return {
        "group": group,
        "user_id": event.user_id,
        "user": event.user_name,
        "decision": decision,
        "reason": event.reason,
    }


def _scope(
    definition: RunbookDefinition,
    run: RunProgress,
    outputs: Mapping[str, Mapping[str, str]],
    inputs: Mapping[str, object],
) -> Scope:
    steps = {
        spec.name: (progress.status, outputs.get(spec.name, {}))
        for spec, progress in zip(definition.steps, run.steps, strict=True)
        if progress.status in _ENDED
    }
    return Scope(inputs, steps)


def _proceed(
    definition: RunbookDefinition,
    run: RunProgress,
    now: float,
    outputs: Mapping[str, Mapping[str, str]],
    inputs: Mapping[str, object],
) -> list[Effect]:
    """Move on as far as the run can without waiting; the effects that needs."""
    for index, (spec, step) in enumerate(zip(definition.steps, run.steps, strict=True)):
        if step.status in _DONE:
            continue
        if step.status in ("failed", "rejected", "timed_out", "cancelled"):
            return _fail(definition, run, spec, step)
        if step.status == "submitting":
            return [Submit(index)]
        if step.status == "running":
            run.state = "running"
            return []
        if step.status == "waiting":
            if step.deadline is not None and now >= step.deadline:
                step.status, step.reason = "timed_out", "no decision before the approval timeout"
                return _fail(definition, run, spec, step)
            run.state = "waiting_for_approval"
            return []
        # pending: its condition first
        if spec.when is not None:
            try:
                go = truthy(evaluate(parse(spec.when), _scope(definition, run, outputs, inputs)))
            except ExprError as exc:
                step.status, step.reason = "failed", f"condition: {exc}"
                return _fail(definition, run, spec, step)
            if not go:
                step.status, step.reason = "skipped", f"condition false: {spec.when}"
                continue
        if spec.kind == "approval":
            step.status = "waiting"
            step.deadline = now + (spec.timeout_s or 24 * 3600.0)
            run.state = "waiting_for_approval"
            return []
        if spec.kind in TASK_KINDS:
            step.status = "submitting"
            run.state = "running"
            return [Submit(index)]
        step.status, step.reason = "failed", f"step kind {spec.kind!r} cannot run here"
        return _fail(definition, run, spec, step)
    run.state, run.reason = "succeeded", None
    return []


def _fail(
    definition: RunbookDefinition, run: RunProgress, spec: StepDef, step: StepProgress
) -> list[Effect]:
    reason = f"step {spec.name!r} {step.status}" + (f": {step.reason}" if step.reason else "")
    rollback = run.rollback
    # A task that failed may have left things half done: the rollback step undoes them.
    if rollback is not None and step.status == "failed" and spec.kind in TASK_KINDS:
        if rollback.status == "pending":
            rollback.status = "submitting"
        if rollback.status == "submitting":
            run.state, run.reason = "running", reason
            return [Submit(ROLLBACK)]
        if rollback.status == "running":
            run.state, run.reason = "running", reason
            return []
        reason += f"; rollback {rollback.status}"
    for later in run.steps:
        if later.status == "pending":
            later.status = "cancelled"
    run.state, run.reason = "failed", reason
    return []

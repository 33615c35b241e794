"""The runbook run state machine, fed events and the time: no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from manager.core.runstate import (
    ROLLBACK,
    Approve,
    Cancel,
    CancelTask,
    Refused,
    Reject,
    RunProgress,
    Start,
    Submit,
    Submitted,
    TaskDone,
    Tick,
    on_event,
)
from manager.schemas.runbooks import RunbookDefinition

T0 = 1_000.0


def definition(*steps: dict[str, Any], **extra: Any) -> RunbookDefinition:
    return RunbookDefinition.model_validate(
        {"name": "rb", "app": "a", "env": "e", "steps": list(steps), **extra}
    )


SHELL = {"kind": "shell", "script": "true"}
GATE = {"name": "gate", "kind": "approval", "groups": ["sre", "dba"], "timeout_s": 60}


def approve(groups: set[str], *, user: str = "u2", started_it: bool = False) -> Approve:
    return Approve(user, f"{user}@x", frozenset(groups), started_it)


class Runner:
    """Feeds events to one run as the service does, keeping outputs by step."""

    def __init__(self, d: RunbookDefinition, inputs: dict[str, Any] | None = None) -> None:
        self.d = d
        self.run = RunProgress.new(d)
        self.outputs: dict[str, dict[str, str]] = {}
        self.inputs = inputs or {}

    def feed(self, event: Any, now: float = T0) -> list[Any]:
        outcome = on_event(self.d, self.run, event, now, self.outputs, self.inputs)
        self.run = outcome.run
        if isinstance(event, TaskDone) and event.outputs and event.index != ROLLBACK:
            self.outputs[self.d.steps[event.index].name] = dict(event.outputs)
        return outcome.effects

    def state(self) -> str:
        # Read through a call: mypy narrows the attribute after one assert and keeps it.
        return self.run.state

    def statuses(self) -> list[str]:
        return [s.status for s in self.run.steps]


def test_steps_run_in_order_each_submitted_once_then_the_run_succeeds() -> None:
    r = Runner(definition({"name": "a", **SHELL}, {"name": "b", **SHELL}))
    assert r.state() == "queued"
    assert r.feed(Start()) == [Submit(0)]
    assert (r.state(), r.statuses()) == ("running", ["submitting", "pending"])
    # A restart before the task id was stored asks for the same submit again (same key).
    assert r.feed(Tick()) == [Submit(0)]
    assert r.feed(Submitted(0, "t1")) == []
    assert r.feed(Tick()) == []  # running: nothing to redo
    assert r.feed(TaskDone(0, "t1", True)) == [Submit(1)]
    r.feed(Submitted(1, "t2"))
    # A result told twice (a replayed event) changes nothing.
    assert r.feed(TaskDone(0, "t1", True)) == []
    assert r.feed(TaskDone(1, "t2", True)) == []
    assert (r.state(), r.statuses()) == ("succeeded", ["succeeded", "succeeded"])


def test_a_false_condition_skips_its_step_and_reads_earlier_outputs() -> None:
    r = Runner(
        definition(
            {"name": "check", **SHELL},
            {"name": "fix", **SHELL, "when": 'steps.check.outputs.healthy != "true"'},
            {"name": "tell", **SHELL, "when": "inputs.notify"},
        ),
        {"notify": True},
    )
    r.feed(Start())
    r.feed(Submitted(0, "t1"))
    assert r.feed(TaskDone(0, "t1", True, outputs={"healthy": "true"})) == [Submit(2)]
    assert r.statuses() == ["succeeded", "skipped", "submitting"]
    assert "condition false" in (r.run.steps[1].reason or "")


def test_a_condition_that_cannot_be_judged_fails_the_step() -> None:
    r = Runner(definition({"name": "a", **SHELL, "when": "steps.a.outputs.x > 1"}))
    r.feed(Start())
    assert r.state() == "failed"
    assert "condition" in (r.run.reason or "")


@pytest.mark.parametrize(
    ("event", "code", "words"),
    [
        (approve({"sre"}, started_it=True), "forbidden", "another person"),
        (approve({"qa"}), "forbidden", "needs a member of sre, dba"),
        (Approve("u", "u", frozenset({"sre"}), False, step="other"), "conflict", "not 'other'"),
    ],
)
def test_approvals_that_are_refused(event: Approve, code: str, words: str) -> None:
    r = Runner(definition(GATE, {"name": "go", **SHELL}))
    r.feed(Start())
    before = r.run
    with pytest.raises(Refused) as refused:
        r.feed(event)
    assert refused.value.code == code
    assert words in refused.value.message
    assert r.run == before


def test_every_named_group_must_approve_once() -> None:
    r = Runner(definition(GATE, {"name": "go", **SHELL}))
    assert r.feed(Start()) == []
    assert r.state() == "waiting_for_approval"
    assert r.run.steps[0].deadline == T0 + 60
    assert r.feed(approve({"sre"})) == []
    with pytest.raises(Refused, match="already approved"):
        r.feed(approve({"sre"}, user="u3"))
    assert r.feed(approve({"dba"}, user="u4")) == [Submit(1)]
    assert [a["group"] for a in r.run.steps[0].approvals] == ["sre", "dba"]
    assert r.state() == "running"


def test_self_approval_when_the_runbook_allows_it() -> None:
    r = Runner(definition({**GATE, "groups": ["sre"]}, allow_self_approval=True))
    r.feed(Start())
    r.feed(approve({"sre"}, started_it=True))
    assert r.state() == "succeeded"


@pytest.mark.parametrize(
    ("event", "now", "status"),
    [
        (Reject("u2", "u2@x", frozenset({"dba"}), False, "no"), T0, "rejected"),
        (Tick(), T0 + 59, "waiting"),
        (Tick(), T0 + 60, "timed_out"),
    ],
)
def test_rejection_and_the_approval_timeout(event: Any, now: float, status: str) -> None:
    r = Runner(definition(GATE, {"name": "go", **SHELL}), {})
    r.feed(Start())
    r.feed(event, now)
    assert r.run.steps[0].status == status
    if status != "waiting":
        assert r.state() == "failed"
        assert r.statuses()[1] == "cancelled"


def test_a_failed_task_runs_the_rollback_then_the_run_fails() -> None:
    rollback = {"name": "undo", **SHELL}
    r = Runner(definition({"name": "a", **SHELL}, {"name": "b", **SHELL}, rollback=rollback))
    r.feed(Start())
    r.feed(Submitted(0, "t1"))
    assert r.feed(TaskDone(0, "t1", False, "exit 3")) == [Submit(ROLLBACK)]
    assert r.state() == "running"
    assert r.feed(Tick()) == [Submit(ROLLBACK)]  # after a restart: the same submit
    r.feed(Submitted(ROLLBACK, "t9"))
    assert r.feed(Tick()) == []
    r.feed(TaskDone(ROLLBACK, "t9", True))
    assert r.state() == "failed"
    assert r.run.reason == "step 'a' failed: exit 3; rollback succeeded"
    assert r.statuses() == ["failed", "cancelled"]


def test_a_rejection_does_not_run_the_rollback() -> None:
    r = Runner(definition(GATE, rollback={"name": "undo", **SHELL}))
    r.feed(Start())
    assert r.feed(Reject("u2", "u2@x", frozenset({"sre"}), False)) == []
    assert r.state() == "failed"
    assert r.run.rollback is not None
    assert r.run.rollback.status == "pending"


def test_cancel_cancels_the_running_task_and_ends_the_run() -> None:
    r = Runner(definition({"name": "a", **SHELL}, {"name": "b", **SHELL}))
    r.feed(Start())
    r.feed(Submitted(0, "t1"))
    assert r.feed(Cancel("by u")) == [CancelTask("t1")]
    assert (r.state(), r.statuses()) == ("cancelled", ["cancelled", "cancelled"])
    # Ended: late results change nothing, decisions are refused.
    assert r.feed(TaskDone(0, "t1", True)) == []
    assert r.state() == "cancelled"
    with pytest.raises(Refused, match="ended"):
        r.feed(Cancel())


def test_a_kind_that_cannot_run_fails_its_step() -> None:
    r = Runner(definition({"name": "v", "kind": "verify", "spec": {"q": 1}}))
    r.feed(Start())
    assert r.state() == "failed"
    assert "cannot run here" in (r.run.reason or "")

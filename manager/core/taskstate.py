"""The task state machine: plain functions that take a task, an event and the time.

They decide; they do not write. Each returns a :class:`Decision` whose ``changes`` the
store applies with a compare-and-set on ``(state, attempt)``, so two replicas (or two
racing requests) that decide from the same snapshot cannot both win.

    queued --acquire--> running --result--> succeeded | failed | cancelled | timed_out
    queued --cancel--> cancelled          running --cancel--> (cancel_requested)
    queued --queue timeout--> expired      running --run timeout--> timed_out
    running --lease lost--> queued (attempts left) | failed ("delegate_lost")
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from manager.records import TaskRecord
from shared.protocol import FINAL_STATES, TaskResult, TaskState

__all__ = [
    "DELEGATE_LOST",
    "Decision",
    "Verdict",
    "on_acquire",
    "on_cancel",
    "on_lease_lost",
    "on_result",
    "on_sweep",
]

DELEGATE_LOST = "delegate_lost"


class Verdict(enum.Enum):
    APPLY = "apply"  # write `changes`
    NOOP = "noop"  # nothing to do, and that is fine (e.g. a resent result)
    STALE = "stale"  # a message from an attempt that no longer holds the task (409)
    TAKEN = "taken"  # another delegate holds it (409)
    GONE = "gone"  # cancelled or otherwise final before it could start (410)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    changes: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def on_acquire(
    task: TaskRecord, delegate_id: str, now: float, *, lease_for: float = 0.0
) -> Decision:
    if task.state is TaskState.QUEUED:
        return Decision(
            Verdict.APPLY,
            {
                "state": TaskState.RUNNING,
                "attempt": task.attempt + 1,
                "delegate_id": delegate_id,
                "started_at": now,
                "cancel_requested": False,
                "lease_until": now + lease_for,
            },
        )
    if task.state is TaskState.RUNNING:
        return Decision(Verdict.TAKEN, reason="another delegate holds this task")
    return Decision(Verdict.GONE, reason=f"task is {task.state.value}")


def on_result(task: TaskRecord, result: TaskResult, delegate_id: str, now: float) -> Decision:
    if result.attempt != task.attempt or task.delegate_id != delegate_id:
        return Decision(Verdict.STALE, reason="this attempt no longer holds the task")
    if task.state in FINAL_STATES:
        # A resend after a lost answer: the first write stands, the caller learns the state.
        return Decision(Verdict.NOOP, reason=f"already {task.state.value}")
    if task.state is not TaskState.RUNNING:
        return Decision(Verdict.STALE, reason=f"task is {task.state.value}")
    status = TaskState(result.status)
    return Decision(
        Verdict.APPLY,
        {
            "state": status,
            "exit_code": result.exit_code,
            "outputs": dict(result.outputs),
            "error": result.error,
            "finished_at": now,
            "deployment": result.deployment.model_dump() if result.deployment else task.deployment,
        },
    )


def on_cancel(task: TaskRecord, now: float) -> Decision:
    if task.state is TaskState.QUEUED:
        return Decision(
            Verdict.APPLY,
            {"state": TaskState.CANCELLED, "finished_at": now, "error": "cancelled before start"},
        )
    if task.state is TaskState.RUNNING:
        if task.cancel_requested:
            return Decision(Verdict.NOOP, reason="cancel already requested")
        # The delegate stops the process and reports `cancelled`; until then it is running.
        return Decision(Verdict.APPLY, {"cancel_requested": True})
    return Decision(Verdict.NOOP, reason=f"already {task.state.value}")


def on_lease_lost(task: TaskRecord, now: float) -> Decision:
    if task.state is not TaskState.RUNNING:
        return Decision(Verdict.NOOP)
    # Every outcome clears the holder: a late result or log batch from the attempt that lost
    # its lease must be refused (409), not taken for an idempotent resend.
    if task.cancel_requested:
        return Decision(
            Verdict.APPLY,
            {
                "state": TaskState.CANCELLED,
                "finished_at": now,
                "error": DELEGATE_LOST,
                "delegate_id": None,
            },
        )
    if task.attempt < task.max_attempts:
        # Back to the queue; the next acquire bumps the attempt, fencing the old holder out.
        return Decision(
            Verdict.APPLY,
            {
                "state": TaskState.QUEUED,
                "delegate_id": None,
                "started_at": None,
                "queued_at": now,
                "lease_until": None,
            },
            reason="retry",
        )
    return Decision(
        Verdict.APPLY,
        {
            "state": TaskState.FAILED,
            "finished_at": now,
            "error": DELEGATE_LOST,
            "delegate_id": None,
        },
    )


def on_sweep(task: TaskRecord, now: float, *, run_margin: float) -> Decision:
    """Timeouts judged on the manager's clock, so a skewed delegate clock changes nothing.

    A delegate enforces the run timeout itself; this backstop waits ``run_margin`` longer so
    that the delegate's own ``timed_out`` report, with its last log lines, normally wins.
    """
    queued_at = task.queued_at if task.queued_at is not None else task.created_at
    if task.state is TaskState.QUEUED and now - queued_at > task.queue_timeout_s:
        return Decision(
            Verdict.APPLY,
            {
                "state": TaskState.EXPIRED,
                "finished_at": now,
                "error": "no delegate acquired the task within its queue timeout",
            },
        )
    if (
        task.state is TaskState.RUNNING
        and task.started_at is not None
        and now - task.started_at > task.timeout_s + run_margin
    ):
        return Decision(
            Verdict.APPLY,
            {
                "state": TaskState.TIMED_OUT,
                "finished_at": now,
                "error": "the delegate did not report within the task timeout",
            },
        )
    return Decision(Verdict.NOOP)

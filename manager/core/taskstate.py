"""The task state machine: plain functions that take a task, an event and the time.

They decide; they do not write. Each returns a :class:`Decision` whose ``changes`` the
store applies with a compare-and-set on ``(state, attempt)``, so two replicas (or two
racing requests) that decide from the same snapshot cannot both win.

    queued --acquire--> running --result--> succeeded | failed | cancelled | timed_out
    queued --cancel--> cancelled          running --cancel--> (cancel_requested)
    queued --queue timeout--> expired      running --run timeout--> timed_out
    running --lease lost--> queued (attempts left) | failed ("delegate_lost")
    running --withdraw--> queued (an assignment declined or never acknowledged: not counted)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from manager.records import LeaseFor, TaskRecord
from shared.protocol import FINAL_STATES, TaskResult, TaskState

__all__ = [
    "DELEGATE_LOST",
    "WITHDRAWN",
    "Decision",
    "Verdict",
    "on_acquire",
    "on_cancel",
    "on_lease_lost",
    "on_result",
    "on_sweep",
    "on_timeout",
    "on_withdraw",
    "timeout_due",
]

# The status an attempt row ends with when its assignment was withdrawn before the delegate
# acknowledged it: such an attempt never ran, and does not count against max_attempts.
WITHDRAWN = "withdrawn"

DELEGATE_LOST = "delegate_lost"


class Verdict(enum.Enum):
    APPLY = "apply"  # write `changes`
    NOOP = "noop"  # nothing to do, and that is fine (e.g. a resent result)
    STALE = "stale"  # a message from an attempt that no longer holds the task (409)
    TAKEN = "taken"  # another delegate holds it (409)
    GONE = "gone"  # cancelled or otherwise final before it could start (410)
    HELD = "held"  # the asker already holds this attempt (its answer was lost): answer again


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    changes: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def on_acquire(
    task: TaskRecord,
    delegate_id: str,
    now: float,
    *,
    lease_for: float = 0.0,
    key: str | None = None,
) -> Decision:
    """``key``: the delegate's own name for this try, repeated when it asks again after an
    answer it never got; only the same delegate with the same key is handed the same
    attempt again. A delegate that restarted asks with a new key and is refused."""
    if task.state is TaskState.QUEUED:
        return Decision(
            Verdict.APPLY,
            {
                "state": TaskState.RUNNING,
                "attempt": task.attempt + 1,
                "delegate_id": delegate_id,
                "started_at": now,
                "cancel_requested": False,
                # Counted on the store's clock (the database's, shared by replicas).
                "lease_until": LeaseFor(lease_for),
                "acquire_key": key,
            },
        )
    if task.state is TaskState.RUNNING:
        if key is not None and task.delegate_id == delegate_id and task.acquire_key == key:
            return Decision(Verdict.HELD, reason="this delegate already holds this attempt")
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


def on_withdraw(task: TaskRecord, delegate_id: str, attempt: int, now: float) -> Decision:
    """Take back the claim of ``attempt`` from ``delegate_id``: its assignment was declined,
    or never acknowledged (manager.core.assignment's ``Requeue``). Only while that very
    attempt holds the task; the attempt number stays, so the next claim fences this one out.
    The queue timeout keeps running from when the task was queued (it never ran)."""
    if (
        task.state is not TaskState.RUNNING
        or task.attempt != attempt
        or task.delegate_id != delegate_id
    ):
        return Decision(Verdict.STALE, reason="this attempt no longer holds the task")
    if task.cancel_requested:
        return Decision(
            Verdict.APPLY,
            {
                "state": TaskState.CANCELLED,
                "finished_at": now,
                "error": "cancelled before start",
                "delegate_id": None,
            },
        )
    return Decision(
        Verdict.APPLY,
        {
            "state": TaskState.QUEUED,
            "delegate_id": None,
            "started_at": None,
            "lease_until": None,
            "acquire_key": None,
        },
        reason="withdrawn",
    )


def on_lease_lost(task: TaskRecord, now: float, *, withdrawn: int = 0) -> Decision:
    """``withdrawn``: how many of the task's attempts were withdrawn before they ran; they
    do not count against ``max_attempts``."""
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
    if task.attempt - withdrawn < task.max_attempts:
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


def timeout_due(task: TaskRecord, *, run_margin: float) -> float | None:
    """When the task's queue or run timeout falls due, on the clock of its own timestamps
    (the wall clock, where users read them); None when neither applies.

    The manager counts down to it on its monotonic clock from the moment it learns the task
    (manager.tasks.service), so a jump of the wall clock moves no deadline it tracks.
    A delegate enforces the run timeout itself; this backstop waits ``run_margin`` longer so
    that the delegate's own ``timed_out`` report, with its last log lines, normally wins.
    """
    if task.state is TaskState.QUEUED:
        queued_at = task.queued_at if task.queued_at is not None else task.created_at
        return queued_at + task.queue_timeout_s
    if task.state is TaskState.RUNNING and task.started_at is not None:
        return task.started_at + task.timeout_s + run_margin
    return None


def on_timeout(task: TaskRecord, now: float) -> Decision:
    """The task's timeout fell due (the caller judged when): a queued task expires, a
    running one is timed out."""
    if task.state is TaskState.QUEUED:
        return Decision(
            Verdict.APPLY,
            {
                "state": TaskState.EXPIRED,
                "finished_at": now,
                "error": "no delegate acquired the task within its queue timeout",
            },
        )
    if task.state is TaskState.RUNNING:
        return Decision(
            Verdict.APPLY,
            {
                "state": TaskState.TIMED_OUT,
                "finished_at": now,
                "error": "the delegate did not report within the task timeout",
            },
        )
    return Decision(Verdict.NOOP)


def on_sweep(task: TaskRecord, now: float, *, run_margin: float) -> Decision:
    """Timeouts judged on the task's own timestamps and ``now`` alike, so a skewed delegate
    clock changes nothing."""
    due = timeout_due(task, run_margin=run_margin)
    if due is None or now <= due:
        return Decision(Verdict.NOOP)
    return on_timeout(task, now)

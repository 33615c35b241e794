"""A runbook's ``verify`` step as the verify task it submits.

The step judges the deployment the run just made: the latest earlier task step that is not
itself a verification. Its windows come from that task's record (when it started and ended),
as for ``tether verify run`` (manager.core.verification). A failed verdict fails the task,
so the step fails and the runbook's rollback step runs; an inconclusive one fails it too
unless the spec says ``on_inconclusive: pass_with_warning`` (the delegate decides, from the
spec, in delegate.run.executor).
"""

from __future__ import annotations

from pydantic import ValidationError

from manager.records import TaskRecord
from manager.schemas.runbooks import StepDef
from manager.schemas.tasks import TaskSubmit
from manager.verify.runs import verify_request
from shared.protocol import describe_validation_error
from shared.task_secrets import credential_expression
from shared.verify.spec import VerifySpec

__all__ = ["check_verify_step", "secret_expressions", "verify_task"]


def _spec(step: StepDef) -> VerifySpec:
    try:
        return VerifySpec.model_validate(step.spec or {})
    except ValidationError as exc:
        raise ValueError(f"spec: {describe_validation_error(exc)[1]}") from None


def check_verify_step(step: StepDef) -> str | None:
    """The first thing wrong with a verify step, or None."""
    if not step.spec:
        return "a verify step needs a spec"
    if step.script or step.url or step.env or step.groups:
        return "a verify step takes no script, url, env or groups"
    try:
        _spec(step)
    except ValueError as exc:
        return str(exc)
    return None


def secret_expressions(step: StepDef) -> list[str]:
    """The secret expressions the step's task will carry (for the run's secret checks)."""
    if step.kind != "verify" or not step.spec:
        return []
    try:
        spec = _spec(step)
    except ValueError:
        return []
    return [credential_expression(name) for name in spec.provider.auth.secrets().values()]


def verify_task(
    step: StepDef,
    deployment: TaskRecord | None,
    *,
    now: float,
    app: str,
    env: str,
    idempotency_key: str,
) -> TaskSubmit:
    """The task; ValueError naming why there can be none (the step then fails)."""
    spec = _spec(step)
    if deployment is None or deployment.started_at is None or deployment.finished_at is None:
        raise ValueError("a verify step judges an earlier task step, and none has run")
    return verify_request(
        spec,
        deployment.started_at,
        deployment.finished_at,
        now=now,
        selectors=step.selectors,
        timeout_s=step.timeout_s,
        app=app,
        env=env,
        idempotency_key=idempotency_key,
    )

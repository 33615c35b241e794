"""A verification run as the verify task it submits: one place for both ways to start one
(``POST /api/v1/verification-runs`` and a runbook's ``verify`` step)."""

from __future__ import annotations

from manager.core.verification import timeout_for, windows
from manager.schemas.tasks import TaskSubmit
from shared.protocol import VerifyPayload
from shared.task_secrets import credential_expression
from shared.verify.spec import VerifySpec

__all__ = ["verify_request"]

_MAX_TIMEOUT_S = 7 * 24 * 3600.0


def verify_request(
    spec: VerifySpec,
    started_at: float,
    finished_at: float,
    *,
    now: float,
    selectors: list[str],
    timeout_s: float | None,
    app: str | None,
    env: str | None,
    idempotency_key: str | None = None,
) -> TaskSubmit:
    """The task judging the deployment that ran from ``started_at`` to ``finished_at``; its
    credentials are secret references the delegate resolves."""
    window = windows(spec, started_at, finished_at)
    payload = VerifyPayload(
        spec=spec,
        window=window,
        credentials={
            role: credential_expression(name) for role, name in spec.provider.auth.secrets().items()
        },
    )
    return TaskSubmit(
        payload=payload,
        selectors=selectors,
        timeout_s=timeout_s or min(_MAX_TIMEOUT_S, timeout_for(spec, window, now)),
        idempotency_key=idempotency_key,
        app=app,
        env=env,
    )

"""A task's workload identity request: what the delegate puts in its environment.

The manager hands each attempt a request credential sealed to this delegate's key
(``AcquireResponse.id_token_request``). The task gets it as ``TETHER_ID_TOKEN_REQUEST_TOKEN``
(registered with the maskers like a secret: it is one while the attempt runs), with the URL to
present it at and the CA that URL is served under: the manager's own, as this delegate reaches
it (``--manager-url``, ``--ca-file``). The delegate opens no port: the task talks to the
manager directly, as the delegate does.
"""

from __future__ import annotations

from pathlib import Path

from shared.protocol import AcquireResponse, ShellPayload, TaskSpec
from shared.sealing import open_sealed
from shared.workload_identity import (
    REQUEST_CA,
    REQUEST_PATH,
    REQUEST_TOKEN,
    REQUEST_URL,
    request_context,
)

__all__ = ["request_secret_env", "with_request_env"]


def request_secret_env(acq: AcquireResponse, private_key: bytes) -> dict[str, str]:
    """The credential's variable (SealError when it does not open); nothing when the manager
    sent none (an older manager), or for a task that is not a shell script (only a process
    has an environment to find it in)."""
    if acq.id_token_request is None or not isinstance(acq.task.payload, ShellPayload):
        return {}
    credential = open_sealed(
        private_key, acq.id_token_request, context=request_context(acq.task.id, acq.attempt)
    )
    return {REQUEST_TOKEN: credential.decode()}


def with_request_env(spec: TaskSpec, manager_url: str, ca_file: Path | None) -> TaskSpec:
    """``spec`` with the request URL (and CA) in a shell task's env; other kinds unchanged."""
    payload = spec.payload
    if not isinstance(payload, ShellPayload):
        return spec
    env = {REQUEST_URL: manager_url.rstrip("/") + REQUEST_PATH}
    if ca_file is not None:
        env[REQUEST_CA] = str(ca_file.absolute())
    # The task's own env wins: a script may point a nested tool elsewhere on purpose.
    updated = payload.model_copy(update={"env": {**env, **payload.env}})
    return spec.model_copy(update={"payload": updated})

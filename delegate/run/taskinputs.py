"""What an acquired task runs with: its secrets resolved, its payload rendered, and every
value its process may see registered with the maskers before it starts.

The order matters: values are known to the maskers before the rendered payload exists, so
nothing that carries a value is ever handled by an unaware masker; and anything that fails
(a secret that cannot be had, a value that is not text, a credential secret of the wrong
type) fails the task before a process is started or a request is sent.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from delegate.secrets.mapping import MappingError, credential_inputs
from delegate.secrets.resolver import ResolveError, SecretResolver
from delegate.secrets.values import ResolvedSecret
from shared.expressions import referenced_names
from shared.masking import Masker
from shared.protocol import AcquireResponse, ShellPayload, TaskSpec
from shared.secretspec import SecretOpPayload
from shared.task_secrets import RenderError, expression_fields, referenced_secrets, render_payload

__all__ = ["InputError", "TaskInputs", "prepare"]


class InputError(Exception):
    """The task cannot run with what it was given; the message names secrets, never values."""


@dataclass(frozen=True)
class TaskInputs:
    spec: TaskSpec
    # The sealed env with the credential secrets' variables; for the executor's secret_env.
    env: dict[str, str] = field(default_factory=dict)
    # Variable -> content of the credential secrets' files; for the executor's secret_files.
    files: dict[str, bytes] = field(default_factory=dict)


async def prepare(
    acq: AcquireResponse,
    *,
    secret_env: Mapping[str, str],
    resolver: SecretResolver,
    maskers: Sequence[Masker],
) -> TaskInputs:
    """Resolve, register with every one of ``maskers``, render and map; InputError if the
    task cannot run."""
    payload = acq.task.payload
    if isinstance(payload, SecretOpPayload):
        # An operation references no secret; what the manager could not give it is the
        # credentials of one of its secret managers, listed by the manager's name.
        if acq.unavailable:
            raise InputError(
                "; ".join(f'secret manager "{n}": {why}' for n, why in acq.unavailable.items())
            )
        return TaskInputs(acq.task, dict(secret_env))
    try:
        names = referenced_secrets(payload)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    resolved: dict[str, ResolvedSecret] = {}
    if names or acq.secrets or acq.unavailable:
        try:
            resolved = await resolver.resolve(acq, expected=names)
        except ResolveError as exc:
            raise InputError(str(exc)) from None
    _register(payload, resolved, maskers)
    try:
        rendered = render_payload(payload, lambda name: resolved[name].exposed)
        credentials = (
            credential_inputs(payload.credential_secrets, resolved)
            if isinstance(payload, ShellPayload)
            else None
        )
    except (RenderError, MappingError) as exc:
        raise InputError(str(exc)) from None
    if credentials is None:
        return TaskInputs(acq.task.model_copy(update={"payload": rendered}), dict(secret_env))
    return TaskInputs(
        acq.task.model_copy(update={"payload": rendered}),
        {**secret_env, **credentials.env},
        credentials.files,
    )


def _register(
    payload: object, resolved: Mapping[str, ResolvedSecret], maskers: Sequence[Masker]
) -> None:
    values: list[bytes] = []
    for secret in resolved.values():
        values.extend(secret.sensitive())
    # A getAsBase64 insertion is masked whole, padding included, as well as by the masker's
    # own base64 forms of the value (which leave out the characters at the edges).
    texts = [text for _, text in expression_fields(payload)]
    for kind, name in referenced_names(texts):
        if kind == "file_base64" and name in resolved:
            values.append(base64.b64encode(resolved[name].exposed))
    for masker in maskers:
        # Once each, so a value too short to mask is warned about once.
        for value in dict.fromkeys(values):
            masker.add(value)

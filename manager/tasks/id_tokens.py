"""Workload identity tokens: the manager as an OIDC issuer for the tasks it hands out.

At hand-out the delegate receives, sealed to its own key for that attempt, a request
credential (manager.core.workload_identity); it puts it in the task's environment with the
request URL (``POST <manager>/api/v1/id-token?audience=...``). The task presents it, and gets
an ES256 JWT for the audience it names, signed with the manager's current OIDC key
(manager.keys.oidc_keys) and verifiable against ``/.well-known/jwks.json``.

A credential is honoured only while its attempt runs: the task must be ``running`` at that
very attempt. A finished task, an attempt the lease has moved away from (a later attempt,
maybe on another delegate), or a credential made for another task are all refused alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from manager.access.directory import Directory
from manager.core.workload_identity import (
    DEFAULT_LIFETIME_S,
    TokenFacts,
    audience_problem,
    claims,
    parse_credential,
    request_credential,
)
from manager.errors import Forbidden, Invalid, Unauthenticated
from manager.keys.oidc_keys import ALGORITHM, OidcKeys
from manager.store.base import Store
from shared.ids import new_id
from shared.protocol import AcquireResponse, TaskState
from shared.sealing import seal
from shared.workload_identity import REQUEST_PATH, request_context

__all__ = ["ID_TOKEN_PATH", "JWKS_PATH", "IdTokens"]

ID_TOKEN_PATH = REQUEST_PATH
JWKS_PATH = "/.well-known/jwks.json"

log = structlog.get_logger("tether.id_tokens")

_REFUSED = "this request credential is not valid: the task's attempt is not running"


class IdTokens:
    def __init__(
        self,
        store: Store,
        keys: OidcKeys,
        *,
        request_key: bytes,
        issuer: str,
        clock: Callable[[], float] = time.time,
        lifetime_s: int = DEFAULT_LIFETIME_S,
    ) -> None:
        self._store = store
        self._keys = keys
        self._request_key = request_key
        self.issuer = issuer.rstrip("/")
        self._clock = clock
        self._lifetime = lifetime_s
        self._directory = Directory(store)

    # -- hand-out --------------------------------------------------------------------------

    def attach(self, handed: AcquireResponse, delegate_public_key: str) -> AcquireResponse:
        """``handed`` with the attempt's request credential, sealed to the delegate."""
        task_id, attempt = handed.task.id, handed.attempt
        credential = request_credential(self._request_key, task_id, attempt)
        sealed = seal(
            delegate_public_key,
            credential.encode(),
            context=request_context(task_id, attempt),
        )
        return handed.model_copy(update={"id_token_request": sealed})

    # -- discovery -------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}{JWKS_PATH}",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "claims_supported": [
                "iss",
                "sub",
                "aud",
                "iat",
                "nbf",
                "exp",
                "jti",
                "task_id",
                "attempt",
                "app",
                "env",
                "env_type",
                "delegate",
                "submitter",
                "runbook",
            ],
        }

    async def jwks(self) -> dict[str, Any]:
        return await self._keys.jwks()

    # -- issuing ---------------------------------------------------------------------------

    async def issue(self, credential: str | None, audience: str | None) -> str:
        """A token for the task ``credential`` names, for ``audience``."""
        if not credential:
            raise Unauthenticated(
                "unauthenticated", "a task's id-token request credential is required"
            )
        found = parse_credential(self._request_key, credential)
        if found is None:
            raise Unauthenticated("unauthenticated", "this is not an id-token request credential")
        problem = audience_problem(audience)
        if problem is not None or audience is None:
            raise Invalid("invalid", problem or "audience is required", field="audience")
        task = await self._store.get_task(found.task_id)
        if task is None or task.state is not TaskState.RUNNING or task.attempt != found.attempt:
            log.info("id token refused", task_id=found.task_id, attempt=found.attempt)
            raise Unauthenticated("unauthenticated", _REFUSED)
        if task.app_id is None or task.env_id is None:
            raise Forbidden(
                "forbidden", "workload identity is for tasks of an application and environment"
            )
        app = await self._directory.apps.get(task.app_id)
        env = await self._directory.envs.get(task.env_id)
        if app is None or env is None:
            raise Forbidden("forbidden", "the task's application or environment is gone")
        delegate = (
            None if task.delegate_id is None else await self._store.get_delegate(task.delegate_id)
        )
        facts = TokenFacts(
            task_id=task.id,
            attempt=task.attempt,
            app=app.body.name,
            env=env.body.name,
            env_type=env.body.type,
            delegate=delegate.name if delegate is not None else (task.delegate_id or ""),
            submitter=task.submitted_by,
            # Runbooks are another change (issue 19): a task that names one carries it.
            runbook=getattr(task, "runbook", None),
        )
        body = claims(
            facts,
            issuer=self.issuer,
            audience=audience,
            now=self._clock(),
            jti=new_id("jti"),
            lifetime_s=self._lifetime,
        )
        token = await self._keys.sign(body)
        log.info(
            "id token issued", task_id=task.id, attempt=task.attempt, sub=body["sub"], aud=audience
        )
        return token

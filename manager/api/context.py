"""Everything a request handler needs, built once by the app and stored on it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from manager.access.allowlist import Allowlist
from manager.access.api_keys import ApiKeys
from manager.access.delegate_tokens import DelegateTokens
from manager.access.session_signer import SessionSigner
from manager.access.tokens import Tokens
from manager.audit.trail import AuditTrail
from manager.metrics import Metrics
from manager.runbooks.service import RunbookService
from manager.secrets.service import SecretService
from manager.store.base import Store
from manager.tasks.bus import Bus
from manager.tasks.delegates import Delegates
from manager.tasks.events import TaskEvents
from manager.tasks.handout import Handout
from manager.tasks.hub import Hub
from manager.tasks.profiles import Profiles
from manager.tasks.reads import TaskReads
from manager.tasks.service import TaskService
from shared.ids import new_id
from shared.limits import Timings

__all__ = ["CTX", "Context", "ctx"]


@dataclass
class Context:
    # For the server's loops and readiness; handlers go through the services below
    # (tests/test_layers.py fails on a handler that reads it).
    store: Store
    api_keys: ApiKeys
    allowlist: Allowlist
    audit: AuditTrail
    hub: Hub
    handout: Handout
    events: TaskEvents
    tasks: TaskService
    delegates: Delegates
    task_reads: TaskReads
    signer: SessionSigner
    timings: Timings
    clock: Callable[[], float]
    metrics: Metrics
    profiles: Profiles
    # Delegate tokens behind sessions: scope and revocation (read through the store).
    tokens: DelegateTokens
    # Delegate tokens as the routes manage them: create, list, revoke.
    delegate_tokens: Tokens
    bus: Bus
    secrets: SecretService
    # This process among the replicas sharing the store (its presence rows name it).
    replica_id: str = field(default_factory=lambda: new_id("rep"))
    started_at: float = field(default_factory=time.time)
    # Set while the manager shuts down: long-polls and follows end early.
    stopping: bool = False
    # When the sweep loop last made a pass (monotonic): the watchdog's evidence of life.
    last_sweep: float = field(default_factory=time.monotonic)
    # Every duration the loops measure (leases, liveness, timeouts); ``clock`` dates things.
    monotonic: Callable[[], float] = time.monotonic
    # Runbooks and their runs (manager.runbooks); None in a context built without them.
    runbooks: RunbookService | None = None


CTX: web.AppKey[Context] = web.AppKey("tether_context", Context)


def ctx(request: web.Request) -> Context:
    return request.app[CTX]

"""Everything a request handler needs, built once by the app and stored on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from manager.auth import SessionSigner
from manager.bus import Bus, LocalBus
from manager.dispatch import Dispatcher
from manager.events import TaskEvents
from manager.hub import Hub
from manager.metrics import Metrics
from manager.service import TaskService
from manager.store.base import Store
from shared.limits import Timings

__all__ = ["CTX", "Context", "ctx"]


@dataclass
class Context:
    store: Store
    hub: Hub
    dispatcher: Dispatcher
    events: TaskEvents
    tasks: TaskService
    signer: SessionSigner
    timings: Timings
    clock: Callable[[], float]
    metrics: Metrics
    bus: Bus = field(default_factory=LocalBus)
    # Set while the manager shuts down: long-polls and follows end early.
    stopping: bool = False


CTX: web.AppKey[Context] = web.AppKey("tether_context", Context)


def ctx(request: web.Request) -> Context:
    return request.app[CTX]

"""Who acts: a user, an API key, a delegate, or the manager itself. The request-bound side
(which actor a request carries) is :mod:`manager.api.identity`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["SYSTEM", "Actor", "ActorKind"]

ActorKind = Literal["user", "api_key", "delegate", "system", "scim"]


@dataclass(frozen=True, slots=True)
class Actor:
    kind: ActorKind
    id: str
    name: str


# Host-side admin commands and the manager's own work (sweeps, secret operations).
SYSTEM = Actor("system", "system", "system")

"""Wire models of workload identity (manager.tasks.id_tokens) and of retention settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["IdTokenAnswer"]


class IdTokenAnswer(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")
    # The signed JWT (GitHub's id-token answer has the same shape).
    value: str

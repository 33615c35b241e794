"""The one error type handlers raise; the middleware turns it into a JSON 4xx/5xx."""

from __future__ import annotations

__all__ = ["ApiProblem"]


class ApiProblem(Exception):
    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

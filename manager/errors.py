"""The errors the services raise: what went wrong in the domain's own words.

The services (access, tasks, secrets, keys) know nothing of HTTP. Each refusal is one of the
classes below, with a machine-readable ``code`` (``not_found``, ``conflict``, ``locked``, ...),
a one-line ``message`` a person can act on, and the ``field`` of the request it is about, if
any. The API maps each class to its HTTP status in one place (``manager.api.http``)::

    DomainError
    ├── Invalid          400  the request is wrong as it stands
    ├── Unauthenticated  401  no one we know, or the proof failed
    ├── Forbidden        403  known, but not allowed to
    ├── NotFound         404  nothing by that name (or nothing this caller may see)
    ├── Conflicting      409  the state says no: taken, exists, stale attempt
    ├── Gone             410  it was there, and is no more
    ├── TooLarge         413  over a size limit
    ├── Unsupported      415
    ├── Broken           500  stored data or a key is broken: an operator must look
    ├── UpstreamFailed   502  a provider the manager depends on failed
    ├── Unavailable      503  try again: the database, a vanished row, a busy record
    └── UpstreamTimeout  504
"""

from __future__ import annotations

__all__ = [
    "Broken",
    "Conflicting",
    "DomainError",
    "Forbidden",
    "Gone",
    "Invalid",
    "NotFound",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "Unsupported",
    "UpstreamFailed",
    "UpstreamTimeout",
]


class DomainError(Exception):
    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class Invalid(DomainError):
    pass


class Unauthenticated(DomainError):
    pass


class Forbidden(DomainError):
    pass


class NotFound(DomainError):
    pass


class Conflicting(DomainError):
    pass


class Gone(DomainError):
    pass


class TooLarge(DomainError):
    pass


class Unsupported(DomainError):
    pass


class Broken(DomainError):
    pass


class UpstreamFailed(DomainError):
    pass


class Unavailable(DomainError):
    pass


class UpstreamTimeout(DomainError):
    pass

"""The Python client of the Tether REST API, and (in :mod:`manager.client.cli`) the ``tether``
command built on it. It imports only the wire models (:mod:`manager.schemas`) and :mod:`shared`,
never server code, so a user's program that imports it pulls in no server dependency."""

from manager.client.client import (
    ApiError,
    ConnectionFailed,
    EndEvent,
    FollowEvent,
    InvalidResponse,
    LogEvent,
    StateEvent,
    TetherClient,
    TetherClientError,
    tls_client_context,
)

__all__ = [
    "ApiError",
    "ConnectionFailed",
    "EndEvent",
    "FollowEvent",
    "InvalidResponse",
    "LogEvent",
    "StateEvent",
    "TetherClient",
    "TetherClientError",
    "tls_client_context",
]

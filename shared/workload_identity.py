"""What both ends agree on about a task's workload identity request (manager.tasks.id_tokens,
delegate.run.id_token): the environment variables a task finds, and how the request
credential is sealed to the delegate at hand-out."""

from __future__ import annotations

__all__ = ["REQUEST_CA", "REQUEST_PATH", "REQUEST_TOKEN", "REQUEST_URL", "request_context"]

# POST $TETHER_ID_TOKEN_REQUEST_URL?audience=... with
# "Authorization: Bearer $TETHER_ID_TOKEN_REQUEST_TOKEN", trusting $TETHER_ID_TOKEN_REQUEST_CA.
REQUEST_URL = "TETHER_ID_TOKEN_REQUEST_URL"
REQUEST_TOKEN = "TETHER_ID_TOKEN_REQUEST_TOKEN"  # noqa: S105 - a variable's name
REQUEST_CA = "TETHER_ID_TOKEN_REQUEST_CA"
REQUEST_PATH = "/api/v1/id-token"


def request_context(task_id: str, attempt: int) -> bytes:
    """The associated data the request credential is sealed to the delegate with."""
    return f"{task_id}:{attempt}:id-token".encode()

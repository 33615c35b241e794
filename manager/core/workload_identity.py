"""Workload identity: what a task's OIDC token says, and the credential a task asks with.

Pure: no I/O, no clock (the caller passes the time).

The **subject** names where the task runs, so a relying party (OpenBao's JWT auth, an AWS
role's trust policy) binds a role to a place rather than to one run::

    app:<application>:env:<environment>:runbook:<runbook>   (a task of a runbook)
    app:<application>:env:<environment>:task                (any other task)

Application and environment names hold no ``:`` (letters, digits, space, ``._-``), so the
segments cannot be confused. A task outside any application gets no token at all: a
subject shared by every unscoped task would identify nothing.

The **request credential** is what the delegate puts in the task's environment
(``TETHER_ID_TOKEN_REQUEST_TOKEN``): ``tir1.<task id>.<attempt>.<mac>``, the MAC an
HMAC-SHA256 of the task id and attempt under a key only the manager holds (kept sealed in
the store, manager.keys.signing). Nothing about it is stored: the manager recomputes the MAC,
and then asks the store whether that attempt still runs. It is worth nothing once the
attempt ends or the task moves to another attempt, and it names one task only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_LIFETIME_S",
    "MAX_AUDIENCE_LEN",
    "MAX_LIFETIME_S",
    "CredentialFor",
    "TokenFacts",
    "audience_problem",
    "claims",
    "parse_credential",
    "request_credential",
    "subject",
]

# Tokens live 5 minutes: long enough to log in to a Vault or call STS, short enough that a
# leaked one is soon useless. Never more than 10 (the ceiling): the JWKS keeps a
# retired key at least this long (manager.keys.oidc_keys).
DEFAULT_LIFETIME_S = 300
MAX_LIFETIME_S = 600
MAX_AUDIENCE_LEN = 256
# Printable ASCII without spaces: a URL, an ARN, "sts.amazonaws.com", a Vault role's audience.
_AUDIENCE = re.compile(r"[\x21-\x7e]+")
_PREFIX = "tir1"
_MAC = re.compile(r"[A-Za-z0-9_-]{43}")
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _mac(key: bytes, task_id: str, attempt: int) -> str:
    digest = hmac.new(key, f"{task_id}\x00{attempt}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def request_credential(key: bytes, task_id: str, attempt: int) -> str:
    """The credential of ``task_id``'s attempt ``attempt``."""
    return f"{_PREFIX}.{task_id}.{attempt}.{_mac(key, task_id, attempt)}"


@dataclass(frozen=True, slots=True)
class CredentialFor:
    task_id: str
    attempt: int


def parse_credential(key: bytes, text: str) -> CredentialFor | None:
    """The attempt ``text`` is the credential of, or None when it is not one of ours."""
    parts = text.split(".")
    if len(parts) != 4 or parts[0] != _PREFIX:
        return None
    _, task_id, attempt_text, mac = parts
    if not _TASK_ID.fullmatch(task_id) or not attempt_text.isdigit() or not _MAC.fullmatch(mac):
        return None
    attempt = int(attempt_text)
    if not hmac.compare_digest(mac, _mac(key, task_id, attempt)):
        return None
    return CredentialFor(task_id, attempt)


def audience_problem(audience: str | None) -> str | None:
    """Why ``audience`` is refused, or None."""
    if not audience:
        return "audience is required (?audience=...)"
    if len(audience) > MAX_AUDIENCE_LEN:
        return f"audience is longer than {MAX_AUDIENCE_LEN} characters"
    if not _AUDIENCE.fullmatch(audience):
        return "audience must be printable ASCII without spaces"
    return None


def subject(app: str, env: str, runbook: str | None = None) -> str:
    """The token's ``sub`` (the format in this module's docstring)."""
    tail = "task" if runbook is None else f"runbook:{runbook}"
    return f"app:{app}:env:{env}:{tail}"


@dataclass(frozen=True, slots=True)
class TokenFacts:
    """What a token is made of, read by the service from the task and its place."""

    task_id: str
    attempt: int
    app: str
    env: str
    env_type: str
    delegate: str
    submitter: str | None
    runbook: str | None = None


def claims(
    facts: TokenFacts,
    *,
    issuer: str,
    audience: str,
    now: float,
    jti: str,
    lifetime_s: int = DEFAULT_LIFETIME_S,
) -> dict[str, Any]:
    """The token's claims; ``lifetime_s`` is capped at :data:`MAX_LIFETIME_S`."""
    issued = int(now)
    out: dict[str, Any] = {
        "iss": issuer,
        "sub": subject(facts.app, facts.env, facts.runbook),
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + min(lifetime_s, MAX_LIFETIME_S),
        "jti": jti,
        "task_id": facts.task_id,
        "attempt": facts.attempt,
        "app": facts.app,
        "env": facts.env,
        "env_type": facts.env_type,
        "delegate": facts.delegate,
        "submitter": facts.submitter,
    }
    if facts.runbook is not None:
        out["runbook"] = facts.runbook
    return out

"""The audit trail's event model and its hash chain. Pure: no I/O, no clock.

Each change writes one :class:`AuditEvent`. Events form a chain: an event's ``prev_hash`` is
the ``hash`` of the event before it (``GENESIS`` for the first), and its ``hash`` is SHA-256
over its :func:`canonical` form, which covers every field but ``hash`` itself. Editing an
event breaks its own hash; editing it *and* its hash breaks the next event's ``prev_hash``;
deleting one leaves a gap in ``seq``; deleting the newest ones leaves the chain short of the
head the store keeps (``audit_head``). :func:`verify` names the first broken link.

The diff is YAML of ``{"before": ..., "after": ...}``. No secret reaches it: values under a
sensitive key are replaced (:func:`redact`), and every string, then the whole text, goes
through the manager's masker, which knows every plaintext that crossed this process.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import yaml

from manager.core.identity import Actor
from shared.ids import new_id
from shared.masking import Masker

__all__ = [
    "EVENT_FIELDS",
    "GENESIS",
    "REDACTED",
    "AuditDraft",
    "AuditEvent",
    "AuditQuery",
    "Broken",
    "ChainVerifier",
    "SavedAuditFilter",
    "canonical",
    "draft",
    "event_hash",
    "is_sensitive_key",
    "like_pattern",
    "redact",
    "seal",
    "verify",
    "yaml_diff",
]

# The prev_hash of the first event (and the head's hash before there is one).
GENESIS = "0" * 64
REDACTED = "[redacted]"
# Longer strings are cut in the diff (after masking, so a cut never leaves half a secret
# unmasked): a 1 MiB script would otherwise be stored again for every change.
MAX_DIFF_STRING = 4096


@dataclass(frozen=True, slots=True)
class AuditDraft:
    """An event before it joins the chain: the store gives it ``seq`` and ``prev_hash``."""

    id: str
    ts: float
    actor_kind: str
    actor_id: str
    actor_name: str
    # The source: an HTTP method and path, or "CLI" and the host-side command.
    method: str
    path: str
    client_ip: str
    resource_type: str
    resource_id: str
    resource_name: str
    # The application the resource belongs to (None until applications exist).
    app: str | None
    # A short verb: create, update, delete, revoke, cancel, drain, rotate...
    action: str
    summary: str
    diff: str


@dataclass(frozen=True, slots=True)
class AuditEvent:
    seq: int
    id: str
    ts: float
    actor_kind: str
    actor_id: str
    actor_name: str
    method: str
    path: str
    client_ip: str
    resource_type: str
    resource_id: str
    resource_name: str
    app: str | None
    action: str
    summary: str
    diff: str
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which events to list. Newest first, older than ``before``; or, with ``ascending``,
    oldest first, newer than ``after`` (export, verification)."""

    since: float | None = None
    until: float | None = None
    # An actor's id or name.
    actor: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    app: str | None = None
    action: str | None = None
    # A substring of the summary, the resource name or the diff, in any case.
    text: str | None = None
    before: int | None = None
    after: int | None = None
    ascending: bool = False
    limit: int = 100


@dataclass(frozen=True, slots=True)
class SavedAuditFilter:
    id: str
    # The actor id of whoever saved it: each user sees their own.
    owner: str
    name: str
    # The query parameters of GET /api/v1/audit, as given.
    query: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0


def like_pattern(text: str) -> str:
    """``AuditQuery.text`` as a pattern for ``LIKE ... ESCAPE '\\'``: a plain substring,
    its own ``%`` and ``_`` taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# -- the chain -------------------------------------------------------------------------------


def canonical(event: AuditEvent | Mapping[str, Any]) -> bytes:
    """The bytes an event's hash is taken over: every field but ``hash``, as JSON with keys
    sorted, no whitespace, ASCII only (``\\uXXXX`` escapes), and ``ts`` as an integer count
    of microseconds, so no float formatting enters the hash. A None is ``null``."""
    data = dict(asdict(event) if isinstance(event, AuditEvent) else event)
    data.pop("hash", None)
    data["ts"] = round(float(data["ts"]) * 1_000_000)
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def event_hash(event: AuditEvent | Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(event)).hexdigest()


def seal(d: AuditDraft, seq: int, prev_hash: str) -> AuditEvent:
    """``d`` as the event after ``(seq - 1, prev_hash)``, with its hash."""
    data = {**asdict(d), "seq": seq, "prev_hash": prev_hash}
    return AuditEvent(**data, hash=event_hash(data))


@dataclass(frozen=True, slots=True)
class Broken:
    """The first link that does not hold: the seq where it shows, and why."""

    seq: int
    reason: str


class ChainVerifier:
    """Checks events fed in seq order, one page at a time, so a long trail never has to be
    held in memory. :meth:`feed` and :meth:`end` return the first break, then keep it."""

    def __init__(self) -> None:
        self.checked = 0
        self.broken: Broken | None = None
        self._seq = 0
        self._hash = GENESIS

    def feed(self, event: AuditEvent) -> Broken | None:
        if self.broken is not None:
            return self.broken
        expected = self._seq + 1
        if event.seq != expected:
            what = "missing" if event.seq > expected else "out of order"
            self.broken = Broken(
                expected, f"gap in seq: event {expected} is {what} (next found: {event.seq})"
            )
        elif event.hash != event_hash(event):
            self.broken = Broken(
                event.seq, "hash mismatch: the event was changed after it was written"
            )
        elif event.prev_hash != self._hash:
            self.broken = Broken(
                event.seq, f"prev_hash mismatch: it does not match the hash of event {self._seq}"
            )
        else:
            self.checked += 1
            self._seq, self._hash = event.seq, event.hash
        return self.broken

    def end(self, head: tuple[int, str] | None = None) -> Broken | None:
        """After the last event; ``head`` is the store's (seq, hash) of the newest event."""
        if self.broken is not None or head is None:
            return self.broken
        head_seq, head_hash = head
        if self._seq < head_seq:
            self.broken = Broken(
                self._seq + 1,
                f"gap in seq: the chain ends at {self._seq} but the head is at {head_seq}",
            )
        elif self._seq > head_seq:
            self.broken = Broken(
                head_seq + 1,
                f"head mismatch: the chain goes on to {self._seq} but the head is at {head_seq}",
            )
        elif self._hash != head_hash:
            self.broken = Broken(
                self._seq, f"head mismatch: the head holds another hash for event {head_seq}"
            )
        return self.broken


def verify(events: Iterable[AuditEvent], head: tuple[int, str] | None = None) -> Broken | None:
    """The first broken link of ``events`` (in seq order, from seq 1), or None."""
    checker = ChainVerifier()
    for event in events:
        if checker.feed(event) is not None:
            return checker.broken
    return checker.end(head)


# -- drafting an event -------------------------------------------------------------------------

# Keys whose values are never shown. Names are compared in lower case with "-" as "_";
# a key is sensitive if it is one of these, contains one of the fragments, or ends in "_key".
_SENSITIVE_KEYS = frozenset(
    {"value", "value_base64", "fields", "key", "envelope", "plaintext", "data_key", "dek"}
)
_SENSITIVE_FRAGMENTS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "private",
    "sealed",
    "apikey",
    "api_key",
    "key_hash",
    "authorization",
    "cookie",
    "session",
    "signature",
)
# Exceptions: these hold names, ids or public material, never a secret's value.
_METADATA_KEYS = frozenset(
    {
        "secret_env_names",
        "credentials_secret",
        "credential_secrets",
        "secret_id",
        "token_id",
        "public_key",
        "idempotency_key",
    }
)


def is_sensitive_key(key: str) -> bool:
    k = key.lower().replace("-", "_")
    if k in _METADATA_KEYS:
        return False
    return (
        k in _SENSITIVE_KEYS
        or k.endswith("_key")
        or any(fragment in k for fragment in _SENSITIVE_FRAGMENTS)
    )


def redact(data: Any, masker: Masker | None = None) -> Any:
    """``data`` (JSON-like) with every value under a sensitive key replaced, every string
    masked and cut to ``MAX_DIFF_STRING``. An empty value (None, "") stays: it tells that
    there is none, not what it is."""
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            name = str(k)
            if is_sensitive_key(name) and v not in (None, "", [], {}):
                out[name] = REDACTED
            else:
                out[name] = redact(v, masker)
        return out
    if isinstance(data, list | tuple | set | frozenset):
        return [redact(v, masker) for v in data]
    if data is None or isinstance(data, bool | int | float):
        return data
    text = data if isinstance(data, str) else str(data)
    if masker is not None:
        text = masker.mask_text(text)
    if len(text) > MAX_DIFF_STRING:
        text = f"{text[:MAX_DIFF_STRING]}... ({len(text) - MAX_DIFF_STRING} more characters)"
    return text


class _DiffDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so each line of a value is a line of the text
    (as the masker expects a multi-line secret), and nothing is folded."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_DiffDumper.add_representer(str, _str)


def yaml_diff(before: Any, after: Any, masker: Masker | None = None) -> str:
    """YAML of ``{"before": ..., "after": ...}`` with secrets redacted and masked."""
    data = {"before": redact(before, masker), "after": redact(after, masker)}
    text = yaml.dump(
        data,
        Dumper=_DiffDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        # No folding: a long line stays one line, whole for the masker's second pass.
        width=2**30,
    )
    return masker.mask_text(text) if masker is not None else text


def _clean(text: str) -> str:
    """Text any database stores: PostgreSQL refuses NUL and unpaired surrogates."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def draft(
    actor: Actor,
    *,
    ts: float,
    method: str,
    path: str,
    client_ip: str,
    resource_type: str,
    resource_id: str,
    resource_name: str,
    action: str,
    summary: str,
    before: Any = None,
    after: Any = None,
    app: str | None = None,
    masker: Masker | None = None,
) -> AuditDraft:
    """An event of ``actor``'s change, ready for the store to chain."""

    def masked(text: str) -> str:
        return _clean(masker.mask_text(text) if masker is not None else text)

    return AuditDraft(
        id=new_id("aud"),
        ts=ts,
        actor_kind=_clean(actor.kind),
        actor_id=_clean(actor.id),
        actor_name=_clean(actor.name),
        method=_clean(method),
        path=masked(path),
        client_ip=_clean(client_ip),
        resource_type=_clean(resource_type),
        resource_id=masked(resource_id),
        resource_name=masked(resource_name),
        app=None if app is None else _clean(app),
        action=_clean(action),
        summary=masked(summary),
        diff=_clean(yaml_diff(before, after, masker)),
    )


EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))

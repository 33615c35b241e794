"""The audit trail's event model and its hash chain. Pure: no I/O, no clock.

Each change writes one :class:`AuditEvent`. Events form a chain: an event's ``prev_hash`` is
the ``hash`` of the event before it (``GENESIS`` for the first), and its ``hash`` is
HMAC-SHA256 over its :func:`canonical` form (which covers every field but ``hash`` itself),
keyed with the chain key ``key_id`` names. The keys live outside the database (derived from
the manager's key ring: manager.keys.audit_key), so someone who can write the database can
neither recompute the hash of an edited event nor re-chain the events after a deleted one.
Editing an event breaks its own hash; editing it *and* its hash breaks the next event's
``prev_hash``; deleting one leaves a gap in ``seq``; deleting the newest ones leaves the chain
short of the head the store keeps (``audit_head``). :func:`verify` names the first broken link.

Events written before the chain was keyed have no ``key_id`` and a plain SHA-256 hash. They
may only come first: the first keyed event (the checkpoint the manager writes at its first
start after the upgrade) covers the last of them through its ``prev_hash``, so rewriting them
breaks the checkpoint. An unkeyed event after a keyed one, or a trail whose newest event is
unkeyed, is a break: that is what rewriting the trail without the key looks like.

The diff is YAML of ``{"before": ..., "after": ...}``. A create has nothing to compare with:
its event records what was made, as one line of JSON, ``{"created": ...}`` (:func:`created`),
which costs a task submission a few microseconds where a YAML dump cost hundreds. No secret
reaches either: values under a sensitive key are replaced (:func:`redact`), and every string,
then the whole text, goes through the manager's masker, which knows every plaintext that
crossed this process (in each of its encodings, JSON-escaped ones too).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import yaml

from manager.core.identity import Actor
from shared.ids import new_id
from shared.masking import Masker

__all__ = [
    "EVENT_FIELDS",
    "GENESIS",
    "REDACTED",
    "AuditAppend",
    "AuditDraft",
    "AuditEvent",
    "AuditOf",
    "AuditQuery",
    "Broken",
    "ChainKey",
    "ChainVerifier",
    "KeyLookup",
    "SavedAuditFilter",
    "canonical",
    "created",
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
class AuditAppend:
    """An event to chain in the transaction of the change it records: the store commits
    both or neither, so no outage keeps the change and loses its event, and a rolled-back
    change leaves no seq behind (a gap in seq can only be a deleted event)."""

    draft: AuditDraft
    # The chain key (None only where a test builds a trail as it was before keying).
    key: ChainKey | None


_T = TypeVar("_T")
# What a store write calls, inside its transaction, with what it wrote (the new row, the
# updated one): the event of that change, or None for no event. Only called when the write
# changed something.
AuditOf = Callable[[_T], "AuditAppend | None"]


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
    # The chain key the hash is keyed with; None for an event written before keying.
    key_id: str | None
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


@dataclass(frozen=True, slots=True)
class ChainKey:
    """A key of the chain: its id (recorded in each event) and its 32 bytes."""

    id: str
    secret: bytes = field(repr=False)


# The key of an id, None when there is no such key.
KeyLookup = Callable[[str], "bytes | None"]


def _shallow(obj: AuditDraft | AuditEvent) -> dict[str, Any]:
    """``obj``'s fields as a dict. Every field is a str, a float or None, so this is what
    ``dataclasses.asdict`` makes, without its deep copy: one event per task submission."""
    return {name: getattr(obj, name) for name in _FIELDS_OF[type(obj)]}


def canonical(event: AuditEvent | Mapping[str, Any]) -> bytes:
    """The bytes an event's hash is taken over: every field but ``hash``, as JSON with keys
    sorted, no whitespace, ASCII only (``\\uXXXX`` escapes), and ``ts`` as an integer count
    of microseconds, so no float formatting enters the hash. A None is ``null``, but for
    ``key_id``: an unkeyed event leaves it out, so events hashed before keying keep their
    hash."""
    data = _shallow(event) if isinstance(event, AuditEvent) else dict(event)
    data.pop("hash", None)
    if data.get("key_id") is None:
        data.pop("key_id", None)
    data["ts"] = round(float(data["ts"]) * 1_000_000)
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def event_hash(event: AuditEvent | Mapping[str, Any], key: bytes | None = None) -> str:
    """HMAC-SHA256 with ``key``; plain SHA-256 (events written before keying) without."""
    if key is None:
        return hashlib.sha256(canonical(event)).hexdigest()
    return hmac.new(key, canonical(event), hashlib.sha256).hexdigest()


def seal(d: AuditDraft, seq: int, prev_hash: str, key: ChainKey | None = None) -> AuditEvent:
    """``d`` as the event after ``(seq - 1, prev_hash)``, with its hash (keyed with ``key``;
    unkeyed only where a test builds a trail as it was before keying)."""
    key_id = None if key is None else key.id
    data = {**_shallow(d), "seq": seq, "prev_hash": prev_hash, "key_id": key_id}
    return AuditEvent(**data, hash=event_hash(data, None if key is None else key.secret))


@dataclass(frozen=True, slots=True)
class Broken:
    """The first link that does not hold: the seq where it shows, and why."""

    seq: int
    reason: str


class ChainVerifier:
    """Checks events fed in seq order, one page at a time, so a long trail never has to be
    held in memory. :meth:`feed` and :meth:`end` return the first break, then keep it.

    With ``keys`` (the manager's, always), keyed events are checked with their key and the
    newest event must be keyed; without (a test of the unkeyed form), a keyed event cannot
    be checked and is a break."""

    def __init__(self, keys: KeyLookup | None = None, start: tuple[int, str] | None = None) -> None:
        """``start``: the (seq, hash) of a trusted checkpoint (manager.core.audit_checkpoint)
        the events fed continue from, when the ones before were purged."""
        self.checked = 0
        self.broken: Broken | None = None
        self._keys = keys
        self._seq, self._hash = start if start is not None else (0, GENESIS)
        # A checkpoint is signed with a chain key: what follows it is keyed.
        self._keyed = start is not None

    def _hash_problem(self, event: AuditEvent) -> str | None:
        if event.key_id is None:
            if self._keyed:
                return "unkeyed event after keyed ones: the trail was rewritten without the key"
            expected = event_hash(event)
        else:
            key = None if self._keys is None else self._keys(event.key_id)
            if key is None:
                return f"key {event.key_id!r} is not in the manager's key ring"
            expected = event_hash(event, key)
        if not hmac.compare_digest(event.hash, expected):
            return "hash mismatch: the event was changed after it was written"
        return None

    def feed(self, event: AuditEvent) -> Broken | None:
        if self.broken is not None:
            return self.broken
        expected = self._seq + 1
        if event.seq != expected:
            what = "missing" if event.seq > expected else "out of order"
            self.broken = Broken(
                expected, f"gap in seq: event {expected} is {what} (next found: {event.seq})"
            )
        elif (problem := self._hash_problem(event)) is not None:
            self.broken = Broken(event.seq, problem)
        elif event.prev_hash != self._hash:
            self.broken = Broken(
                event.seq, f"prev_hash mismatch: it does not match the hash of event {self._seq}"
            )
        else:
            self.checked += 1
            self._seq, self._hash = event.seq, event.hash
            self._keyed = event.key_id is not None
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
        elif self._keys is not None and self._seq > 0 and not self._keyed:
            # Every manager keys the chain from its first start on (a checkpoint event when
            # it upgraded a trail), so only a trail rewritten from the database ends unkeyed.
            self.broken = Broken(
                self._seq, "the newest event is not keyed: the trail was rewritten without the key"
            )
        return self.broken


def verify(
    events: Iterable[AuditEvent],
    head: tuple[int, str] | None = None,
    keys: KeyLookup | None = None,
) -> Broken | None:
    """The first broken link of ``events`` (in seq order, from seq 1), or None."""
    checker = ChainVerifier(keys)
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
        # A verification's provider credentials: the names of Tether secrets (shared.verify.spec).
        "bearer_token_secret",
        "basic_password_secret",
        "tls_cert_secret",
        "tls_key_secret",
        "tls_ca_secret",
    }
)


# The same few keys come back in every event: each is judged once (bounded, since payload
# keys are the submitter's to choose).
@functools.lru_cache(maxsize=4096)
def is_sensitive_key(key: str) -> bool:
    k = key.lower().replace("-", "_")
    if k in _METADATA_KEYS:
        return False
    return (
        k in _SENSITIVE_KEYS
        or k.endswith("_key")
        or any(fragment in k for fragment in _SENSITIVE_FRAGMENTS)
    )


def redact(data: Any, masker: Masker | None = None, *, masked_whole: bool = False) -> Any:
    """``data`` (JSON-like) with every value under a sensitive key replaced, every string
    masked and cut to ``MAX_DIFF_STRING``. An empty value (None, "") stays: it tells that
    there is none, not what it is.

    ``masked_whole``: the caller masks the whole JSON text made of the result (the masker
    knows each value's JSON-escaped forms), so only a string about to be cut is masked here,
    before the cut, so that no cut leaves half a secret unmasked."""
    # Exact types first (what JSON decodes to), the ABCs only for anything else: an
    # isinstance against Mapping costs as much as the rest of a value's handling.
    kind = type(data)
    if kind is str:
        text: str = data
    elif kind is dict or (kind is not list and isinstance(data, Mapping)):
        out: dict[str, Any] = {}
        for k, v in data.items():
            name = str(k)
            if is_sensitive_key(name) and v not in (None, "", [], {}):
                out[name] = REDACTED
            else:
                out[name] = redact(v, masker, masked_whole=masked_whole)
        return out
    elif kind is list or isinstance(data, tuple | set | frozenset):
        return [redact(v, masker, masked_whole=masked_whole) for v in data]
    elif data is None or isinstance(data, bool | int | float):
        return data
    else:
        text = data if isinstance(data, str) else str(data)
    if masker is not None and (not masked_whole or len(text) > MAX_DIFF_STRING):
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


def created(after: Any, masker: Masker | None = None) -> str:
    """What a create made: JSON of ``{"created": ...}`` with secrets redacted and masked:
    the text once as a whole (every string's JSON form is in it), not each string apart."""
    redacted = redact(after, masker, masked_whole=True)
    text = json.dumps({"created": redacted}, ensure_ascii=False, default=str)
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
        diff=_clean(
            created(after, masker)
            if before is None and after is not None
            else yaml_diff(before, after, masker)
        ),
    )


EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))
_FIELDS_OF: dict[type, tuple[str, ...]] = {
    AuditEvent: EVENT_FIELDS,
    AuditDraft: tuple(f.name for f in fields(AuditDraft)),
}

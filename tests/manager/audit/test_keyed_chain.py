"""The keyed audit chain against someone who can write the database: they may delete, edit or
reorder events and recompute every hash and the head from the database alone, and the check
with the manager's keys still names the break. On SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from manager.api.audit_record import AuditRecorder, key_the_chain
from manager.core.audit_chain import (
    EVENT_FIELDS,
    GENESIS,
    AuditEvent,
    ChainKey,
    event_hash,
    seal,
    verify,
)
from manager.keys.audit_key import AuditKeys
from manager.keys.masterkey import MasterKey
from manager.store.base import Store
from tests.manager.conftest import StoreMaker
from tests.manager.core.test_audit_chain import event_draft

KEY = ChainKey("k1", b"k" * 32)


def keys_of(*known: ChainKey) -> Any:
    by_id = {k.id: k.secret for k in known}
    return by_id.get


def keyed_chain(n: int, key: ChainKey = KEY, first: int = 1, prev: str = GENESIS) -> list[Any]:
    events: list[AuditEvent] = []
    for i in range(first, first + n):
        events.append(seal(event_draft(i), i, events[-1].hash if events else prev, key))
    return events


def tampered(events: list[AuditEvent], tampering: str) -> list[AuditEvent]:
    events = list(events)
    if tampering == "delete":
        return events[:2] + events[3:]
    if tampering == "edit":
        events[2] = dataclasses.replace(events[2], summary="all quiet")
    else:
        events[1], events[2] = events[2], events[1]
    return events


def rechain(events: list[AuditEvent], key: ChainKey | None) -> list[AuditEvent]:
    """What someone with only the database can do: renumber and re-hash every event (with
    plain SHA-256, or HMAC with a key they guessed), so every link and the head match."""
    out: list[AuditEvent] = []
    for seq, e in enumerate(events, start=1):
        prev = out[-1].hash if out else GENESIS
        key_id, secret = (None, None) if key is None else (key.id, key.secret)
        data = {**asdict(e), "seq": seq, "prev_hash": prev, "key_id": key_id}
        data.pop("hash")
        out.append(AuditEvent(**data, hash=event_hash(data, secret)))
    return out


# -- the chain, pure ----------------------------------------------------------------------------


def test_a_keyed_chain_verifies_with_its_keys_only() -> None:
    events = keyed_chain(4)
    assert verify(events, (4, events[-1].hash), keys_of(KEY)) is None
    wrong = verify(events, None, keys_of(ChainKey("k1", b"x" * 32)))
    assert wrong is not None
    assert (wrong.seq, wrong.reason.split(":")[0]) == (1, "hash mismatch")
    unknown = verify(events, None, keys_of(ChainKey("k2", b"k" * 32)))
    assert unknown is not None
    assert "'k1' is not in the manager's key ring" in unknown.reason
    # Without keys (a check of the unkeyed form) a keyed event cannot be taken on trust.
    assert verify(events) is not None


@pytest.mark.parametrize("guessed", [None, ChainKey("k1", b"g" * 32)])
@pytest.mark.parametrize("tampering", ["delete", "edit", "reorder"])
def test_a_trail_recomputed_without_the_key_fails(tampering: str, guessed: ChainKey | None) -> None:
    forged = rechain(tampered(keyed_chain(5), tampering), guessed)
    # Consistent as far as the forger can tell (the old unkeyed check, or their own key)...
    own = None if guessed is None else keys_of(guessed)
    assert verify(forged, (len(forged), forged[-1].hash), own) is None
    # ...but not with the manager's key.
    assert verify(forged, (len(forged), forged[-1].hash), keys_of(KEY)) is not None


def test_events_of_every_key_of_the_ring_verify_after_a_rotation() -> None:
    k2 = ChainKey("k2", b"2" * 32)
    old = keyed_chain(2)
    new = keyed_chain(2, k2, first=3, prev=old[-1].hash)
    trail = old + new
    assert [e.key_id for e in trail] == ["k1", "k1", "k2", "k2"]
    assert verify(trail, (4, trail[-1].hash), keys_of(KEY, k2)) is None
    assert verify(trail, (4, trail[-1].hash), keys_of(k2)) is not None


def test_unkeyed_events_before_a_checkpoint_verify_and_are_covered_by_it() -> None:
    legacy = [seal(event_draft(i), i, GENESIS) for i in (1,)]
    for i in (2, 3):
        legacy.append(seal(event_draft(i), i, legacy[-1].hash))
    keyed = keyed_chain(2, first=4, prev=legacy[-1].hash)
    trail = legacy + keyed
    assert verify(trail, (5, trail[-1].hash), keys_of(KEY)) is None

    # Rewriting an old unkeyed event and recomputing the unkeyed part breaks the checkpoint.
    edited = [dataclasses.replace(legacy[0], summary="nothing happened"), *legacy[1:]]
    rewritten = rechain(edited, None) + keyed
    broken = verify(rewritten, (5, trail[-1].hash), keys_of(KEY))
    assert broken is not None
    assert (broken.seq, broken.reason.split(":")[0]) == (
        4,
        "prev_hash mismatch",
    )


def test_an_unkeyed_event_after_a_keyed_one_or_at_the_head_is_a_break() -> None:
    keyed = keyed_chain(2)
    after = seal(event_draft(3), 3, keyed[-1].hash)
    broken = verify([*keyed, after], (3, after.hash), keys_of(KEY))
    assert broken is not None
    assert broken.seq == 3
    assert "unkeyed event after keyed" in broken.reason
    legacy = [seal(event_draft(1), 1, GENESIS)]
    broken = verify(legacy, (1, legacy[0].hash), keys_of(KEY))
    assert broken is not None
    assert "newest event is not keyed" in broken.reason


# -- in the database, each backend --------------------------------------------------------------


async def replace_trail(maker: StoreMaker, events: list[AuditEvent]) -> None:
    """Swap the stored trail and its head for ``events``, behind the store's back."""
    cols = ", ".join(EVENT_FIELDS)
    rows = [tuple(getattr(e, f) for f in EVENT_FIELDS) for e in events]
    head = (len(events), events[-1].hash)
    if maker.kind == "sqlite":
        conn = sqlite3.connect(maker.path)
        try:
            with conn:
                conn.execute("DELETE FROM audit_events")
                marks = ",".join("?" * len(EVENT_FIELDS))
                conn.executemany(f"INSERT INTO audit_events({cols}) VALUES ({marks})", rows)
                conn.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", head)
        finally:
            conn.close()
        return
    await maker.fetch("DELETE FROM audit_events")
    marks = ",".join(f"${i}" for i in range(1, len(EVENT_FIELDS) + 1))
    for row in rows:
        await maker.fetch(f"INSERT INTO audit_events({cols}) VALUES ({marks})", *row)
    await maker.fetch("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", *head)


async def check(store: Store, keys: AuditKeys) -> Any:
    return verify(
        [e async for e in store.audit_events_all()], await store.audit_head(), keys.lookup
    )


@pytest.fixture
def audit_keys(tmp_path: Path) -> AuditKeys:
    return AuditKeys(MasterKey.load_or_create(tmp_path / "master.key"))


@pytest.mark.parametrize("tampering", ["delete", "edit", "reorder"])
async def test_a_trail_rewritten_in_the_database_fails_verify(
    new_store: StoreMaker, audit_keys: AuditKeys, tampering: str
) -> None:
    store = new_store()
    await store.open()
    try:
        recorder_keys = audit_keys.current()
        for n in range(1, 6):
            await store.append_audit(event_draft(n), recorder_keys)
        assert await check(store, audit_keys) is None
        events = tampered([e async for e in store.audit_events_all()], tampering)
        for guessed in (None, ChainKey(recorder_keys.id, b"g" * 32)):
            await replace_trail(new_store, rechain(events, guessed))
            broken = await check(store, audit_keys)
            assert broken is not None, (tampering, guessed)
    finally:
        await store.close()


async def test_an_upgraded_trail_is_keyed_from_a_checkpoint_written_at_start(
    new_store: StoreMaker, audit_keys: AuditKeys
) -> None:
    store = new_store()
    await store.open()
    try:
        for n in range(1, 4):  # as written before the chain was keyed
            await store.append_audit(event_draft(n))
        recorder = AuditRecorder(store, audit_keys)
        checkpoint = await key_the_chain(recorder)
        assert checkpoint is not None
        assert (checkpoint.seq, checkpoint.key_id, checkpoint.action) == (4, "k1", "key")
        assert await key_the_chain(recorder) is None  # once is enough
        await store.append_audit(event_draft(5), audit_keys.current())
        assert await check(store, audit_keys) is None

        events = [e async for e in store.audit_events_all()]
        edited = [dataclasses.replace(events[0], summary="nothing happened"), *events[1:3]]
        await replace_trail(new_store, rechain(edited, None) + events[3:])
        broken = await check(store, audit_keys)
        assert broken is not None
        assert broken.seq == 4
    finally:
        await store.close()


async def test_a_fresh_trail_needs_no_checkpoint(store: Store, audit_keys: AuditKeys) -> None:
    assert await key_the_chain(AuditRecorder(store, audit_keys)) is None
    assert await store.audit_head() == (0, GENESIS)


def test_rotating_the_master_key_rotates_the_chain_key(tmp_path: Path) -> None:
    ring = MasterKey.load_or_create(tmp_path / "master.key")
    keys = AuditKeys(ring)
    first = keys.current()
    ring.rotate()
    second = keys.current()
    assert (first.id, second.id) == ("k1", "k2")
    assert first.secret != second.secret
    assert keys.lookup("k1") == first.secret  # kept, to check the events it keyed
    assert keys.lookup("k9") is None
    # Not the AES key itself: the HMAC key is its own.
    assert first.secret != (tmp_path / "master.key").read_bytes()

"""Data keys (manager.keys.data_keys): sealing round-trips, the associated data binding a
record to its owner, field and position, one key per owner across instances and races, and
a master-key rotation re-wrapping the keys without touching a record, on both stores."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from manager.keys.data_keys import (
    SEAL_OVERHEAD,
    DataKey,
    DataKeyError,
    DataKeys,
    rewrap_data_keys,
)
from manager.keys.masterkey import MasterKey
from manager.store.base import Store

KEY = DataKey("task:task_1", bytes(range(32)))


@given(
    field=st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s),
    seq=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    plaintext=st.binary(max_size=2048),
)
def test_a_record_opens_as_what_was_sealed(field: str, seq: int, plaintext: bytes) -> None:
    sealed = KEY.seal(field, seq, plaintext)
    assert len(sealed) == len(plaintext) + SEAL_OVERHEAD
    assert KEY.open(field, seq, sealed) == plaintext
    (batch,) = KEY.seal_many([(field, seq, plaintext)])
    assert KEY.open(field, seq, batch) == plaintext


def test_a_record_opens_only_as_its_owner_field_and_position() -> None:
    sealed = KEY.seal("log:1:stdout", 7, b"the line")
    other_owner = DataKey("task:task_2", bytes(range(32)))  # same key bytes, other owner
    assert KEY.open("log:1:stdout", 7, sealed) == b"the line"
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for key, field, seq, blob in (
        (other_owner, "log:1:stdout", 7, sealed),
        (KEY, "log:1:stderr", 7, sealed),
        (KEY, "log:2:stdout", 7, sealed),
        (KEY, "log:1:stdout", 8, sealed),
        (KEY, "log:1:stdout", 7, flipped),
        (KEY, "log:1:stdout", 7, b"\x01short"),
    ):
        with pytest.raises(DataKeyError):
            key.open(field, seq, blob)


def test_batched_nonces_are_all_different() -> None:
    sealed = KEY.seal_many([("log", i, b"same") for i in range(1000)])
    assert len({s[1:13] for s in sealed}) == 1000


@pytest.fixture
def master(tmp_path: Path) -> MasterKey:
    return MasterKey.load_or_create(tmp_path / "master.key")


async def test_an_owner_has_one_key_across_instances_and_races(
    store: Store, master: MasterKey
) -> None:
    first, second = DataKeys(store, master), DataKeys(store, master)
    keys = await asyncio.gather(
        first.key("task:a", new=True), second.key("task:a", new=True), first.key("task:a")
    )
    sealed = keys[0].seal("payload", 0, b"x")
    assert all(k.open("payload", 0, sealed) == b"x" for k in keys)
    # A third instance, nothing cached: the stored key opens it.
    assert await DataKeys(store, master).open("task:a", "payload", 0, sealed) == b"x"
    with pytest.raises(DataKeyError, match="has no data key"):
        await DataKeys(store, master).open("task:b", "payload", 0, sealed)


async def test_the_cache_is_bounded_and_an_evicted_key_comes_back_from_the_store(
    store: Store, master: MasterKey
) -> None:
    keys = DataKeys(store, master, cache_size=2)
    sealed = await keys.seal("task:a", "f", 0, b"a")
    await keys.seal("task:b", "f", 0, b"b")
    await keys.seal("task:c", "f", 0, b"c")
    assert keys.cached("task:a") is None
    assert await keys.open("task:a", "f", 0, sealed) == b"a"


async def test_rotation_rewraps_data_keys_and_leaves_records_alone(
    store: Store, master: MasterKey
) -> None:
    keys = DataKeys(store, master)
    sealed = {o: await keys.seal(o, "log:1:stdout", 3, o.encode()) for o in ("task:a", "run:b")}
    before = dict(await store.data_keys_after("", 100))
    assert {MasterKey.wrapped_key_id(w) for w in before.values()} == {"k1"}

    new = master.rotate()
    report = await rewrap_data_keys(store, master)

    assert (report.rewrapped, report.already_current, report.failed) == (2, 0, [])
    after = dict(await store.data_keys_after("", 100))
    assert {MasterKey.wrapped_key_id(w) for w in after.values()} == {new}
    # The records were sealed before and are unchanged; a fresh instance opens them.
    fresh = DataKeys(store, master)
    for owner, blob in sealed.items():
        assert await fresh.open(owner, "log:1:stdout", 3, blob) == owner.encode()
    again = await rewrap_data_keys(store, master)
    assert (again.rewrapped, again.already_current) == (0, 2)


async def test_a_key_that_does_not_unwrap_is_reported_and_the_rest_go_on(
    store: Store, master: MasterKey
) -> None:
    keys = DataKeys(store, master)
    await keys.key("task:a")
    # A wrapped key moved to another owner: its associated data names the first one.
    (_, wrapped), *_ = await store.data_keys_after("", 1)
    await store.add_data_key("task:moved", wrapped, 0.0)
    master.rotate()

    report = await rewrap_data_keys(store, master)

    assert report.rewrapped == 1
    assert [f.owner for f in report.failed] == ["task:moved"]
    with pytest.raises(DataKeyError, match="does not open"):
        await DataKeys(store, master).key("task:moved")

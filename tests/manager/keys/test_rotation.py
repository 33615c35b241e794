"""Re-wrapping the builtin secrets' data keys after a rotation: on both real stores, and on
a small fake store for the races (a version changed or deleted between read and write)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest

from manager.keys.masterkey import MasterKey
from manager.keys.rotation import RewrapFailure, rewrap_builtin
from manager.records import BUILTIN_MANAGER_ID, SecretRecord, SecretVersionRecord
from manager.store.base import Store
from shared.account import DEFAULT_ACCOUNT
from shared.envelope import Envelope, EnvelopeContext, open_with, seal_with


def ctx(secret_id: str, version: int) -> EnvelopeContext:
    return EnvelopeContext(account=DEFAULT_ACCOUNT, secret_id=secret_id, version=version)


async def sealed(key: MasterKey, secret_id: str, version: int, value: bytes) -> str:
    env = await seal_with(key, "builtin", key.current_id, value, ctx(secret_id, version))
    return env.to_json()


@pytest.fixture
def key(tmp_path: Path) -> MasterKey:
    return MasterKey.load_or_create(tmp_path / "master.key")


class Secrets:
    """Writes builtin secrets into a real store, sealed as the secrets service seals them."""

    def __init__(self, store: Store, key: MasterKey) -> None:
        self.store = store
        self.key = key

    async def create(self, secret_id: str, *values: bytes, envelope: str | None = None) -> None:
        now = time.time()
        record = SecretRecord(
            id=secret_id,
            name=secret_id.removeprefix("sec_"),
            manager_id=BUILTIN_MANAGER_ID,
            type="text",
            mode="inline",
            current_version=1,
            created_at=now,
            updated_at=now,
        )
        first = envelope or await sealed(self.key, secret_id, 1, values[0])
        await self.store.create_secret(record, self.version(secret_id, 1, first))
        for number, value in enumerate(values[1:], start=2):
            env = await sealed(self.key, secret_id, number, value)
            updated = await self.store.add_secret_version(
                record, self.version(secret_id, number, env)
            )
            assert updated is not None
            record = updated

    @staticmethod
    def version(secret_id: str, number: int, envelope: str) -> SecretVersionRecord:
        return SecretVersionRecord(
            secret_id=secret_id, version=number, created_at=time.time(), envelope=envelope
        )

    async def envelope(self, secret_id: str, number: int) -> Envelope:
        version = await self.store.get_secret_version(secret_id, number)
        assert version is not None
        assert version.envelope is not None
        return Envelope.from_json(version.envelope)


async def test_rewrap_moves_old_envelopes_to_the_current_key(
    store: Store, key: MasterKey, tmp_path: Path
) -> None:
    secrets = Secrets(store, key)
    await secrets.create("sec_db", b"first password", b"second password")
    before = await secrets.envelope("sec_db", 1)
    assert key.rotate() == "k2"
    await secrets.create("sec_api", b"token after the rotation")

    report = await rewrap_builtin(store, key)

    assert (report.rewrapped, report.already_current, report.failed) == (2, 1, [])
    assert (report.changed_meanwhile, report.gone) == (0, 0)
    after = await secrets.envelope("sec_db", 1)
    assert after.kek_id == "k2"
    assert after.kek_kind == "builtin"
    assert MasterKey.wrapped_key_id(after.wrapped_key) == "k2"
    # Only the wrapping changed: the value's ciphertext is the very same bytes.
    assert after.blob == before.blob
    assert after.wrapped_key != before.wrapped_key
    # Another process (the server) opens every version, values untouched.
    server = MasterKey.load(tmp_path / "master.key")
    expected = {
        ("sec_db", 1): b"first password",
        ("sec_db", 2): b"second password",
        ("sec_api", 1): b"token after the rotation",
    }
    for (secret_id, number), value in expected.items():
        env = await secrets.envelope(secret_id, number)
        assert env.kek_id == "k2"
        assert await open_with(server, env, ctx(secret_id, number)) == value

    again = await rewrap_builtin(store, key)
    assert (again.rewrapped, again.already_current, again.failed) == (0, 3, [])


async def test_a_version_that_cannot_be_rewrapped_is_reported_and_the_rest_go_on(
    store: Store, key: MasterKey
) -> None:
    secrets = Secrets(store, key)
    # Sealed for another secret: its wrapping is bound to that context, not this one.
    moved = await sealed(key, "sec_other", 1, b"moved value")
    await secrets.create("sec_moved", envelope=moved)
    await secrets.create("sec_fine", b"fine value")
    await secrets.create("sec_junk", envelope='{"not": "an envelope"}')
    key.rotate()

    report = await rewrap_builtin(store, key)

    assert report.rewrapped == 1
    assert sorted(f.secret_id for f in report.failed) == ["sec_junk", "sec_moved"]
    reasons = {f.secret_id: f.reason for f in report.failed}
    assert "does not open" in reasons["sec_moved"]
    assert "envelope fields are wrong" in reasons["sec_junk"]
    assert all(f.version == 1 for f in report.failed)
    assert "moved value" not in repr(report)
    # Left as it was: it still opens where it belongs.
    assert (await secrets.envelope("sec_moved", 1)).to_json() == moved


async def test_a_label_that_lies_about_the_key_is_rewrapped(
    store: Store, key: MasterKey, tmp_path: Path
) -> None:
    # kek_id says k2, but the data key was wrapped with k1 (a rotation between the secrets
    # service reading current_id and wrapping): the wrapped bytes decide.
    secrets = Secrets(store, key)
    key.rotate()
    # A ring of k1 alone (same bytes as master.key): its wraps name k1.
    k1 = MasterKey((tmp_path / "master.key").read_bytes())
    env = await seal_with(k1, "builtin", "k2", b"v", ctx("sec_x", 1))
    assert MasterKey.wrapped_key_id(env.wrapped_key) == "k1"
    await secrets.create("sec_x", envelope=env.to_json())

    report = await rewrap_builtin(store, key)

    assert (report.rewrapped, report.already_current) == (1, 0)
    after = await secrets.envelope("sec_x", 1)
    assert MasterKey.wrapped_key_id(after.wrapped_key) == "k2"
    assert await open_with(key, after, ctx("sec_x", 1)) == b"v"


class FakeStore:
    """Just what rewrap_builtin uses, with a hook that runs before each compare-and-set:
    the place where another writer gets in."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], str] = {}
        self.before_swap: Callable[[str, int], None] = lambda secret_id, version: None

    async def envelopes_of_manager(self, manager_id: str) -> list[SecretVersionRecord]:
        assert manager_id == BUILTIN_MANAGER_ID
        return [self._record(k, v) for k, v in sorted(self.rows.items())]

    async def get_secret_version(self, secret_id: str, version: int) -> SecretVersionRecord | None:
        envelope = self.rows.get((secret_id, version))
        return None if envelope is None else self._record((secret_id, version), envelope)

    async def replace_envelope(self, secret_id: str, version: int, old: str, new: str) -> bool:
        self.before_swap(secret_id, version)
        if self.rows.get((secret_id, version)) != old:
            return False
        self.rows[(secret_id, version)] = new
        return True

    @staticmethod
    def _record(where: tuple[str, int], envelope: str) -> SecretVersionRecord:
        return SecretVersionRecord(
            secret_id=where[0], version=where[1], created_at=0.0, envelope=envelope
        )

    def as_store(self) -> Store:
        return cast(Store, self)


async def rewrapped_by_someone_else(key: MasterKey, envelope: str, secret_id: str) -> str:
    env = Envelope.from_json(envelope)
    context = ctx(secret_id, 1).canonical()
    wrapped = await key.wrap_key(await key.unwrap_key(env.wrapped_key, context), context)
    return replace(env, kek_id=key.current_id, wrapped_key=wrapped).to_json()


async def test_a_version_rewrapped_meanwhile_is_read_again_and_found_current(
    key: MasterKey, tmp_path: Path
) -> None:
    fake = FakeStore()
    fake.rows[("sec_a", 1)] = await sealed(key, "sec_a", 1, b"a")
    fake.rows[("sec_b", 1)] = await sealed(key, "sec_b", 1, b"b")
    key.rotate()
    other = MasterKey.load(tmp_path / "master.key")
    raced: list[str] = []

    def another_rotate_run(secret_id: str, version: int) -> None:
        if secret_id == "sec_a" and not raced:
            raced.append(secret_id)
            fake.rows[(secret_id, version)] = pending.pop()

    pending = [await rewrapped_by_someone_else(other, fake.rows[("sec_a", 1)], "sec_a")]
    fake.before_swap = another_rotate_run

    report = await rewrap_builtin(fake.as_store(), key)

    assert raced == ["sec_a"]
    assert report.changed_meanwhile == 1
    assert (report.rewrapped, report.already_current, report.failed) == (1, 1, [])


async def test_a_version_deleted_meanwhile_is_counted_gone(key: MasterKey) -> None:
    fake = FakeStore()
    fake.rows[("sec_a", 1)] = await sealed(key, "sec_a", 1, b"a")
    key.rotate()

    def deleted(secret_id: str, version: int) -> None:
        del fake.rows[(secret_id, version)]

    fake.before_swap = deleted

    report = await rewrap_builtin(fake.as_store(), key)

    assert (report.changed_meanwhile, report.gone, report.rewrapped, report.failed) == (1, 1, 0, [])


async def test_a_version_that_keeps_changing_fails_after_one_retry(key: MasterKey) -> None:
    fake = FakeStore()
    fake.rows[("sec_a", 1)] = await sealed(key, "sec_a", 1, b"a")
    key.rotate()
    swaps: list[int] = []

    def busy(secret_id: str, version: int) -> None:
        # Each time a different (still old) envelope: another writer re-sealing it.
        swaps.append(version)
        env = Envelope.from_json(fake.rows[(secret_id, version)])
        relabelled = replace(env, kek_id=f"label-{len(swaps)}")
        fake.rows[(secret_id, version)] = relabelled.to_json()

    fake.before_swap = busy

    report = await rewrap_builtin(fake.as_store(), key)

    assert len(swaps) == 2
    assert report.changed_meanwhile == 1
    assert report.failed == [
        RewrapFailure("sec_a", 1, "changed meanwhile twice; run the re-wrap again")
    ]


async def test_nothing_to_do_on_an_empty_store(store: Store, key: MasterKey) -> None:
    key.rotate()
    report = await rewrap_builtin(store, key)
    assert (report.rewrapped, report.already_current, report.failed) == (0, 0, [])

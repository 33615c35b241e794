"""The delegate-session signing key is kept in the store sealed with the master key: not in
the database file in clear, migrated from clear at start, re-sealed by a rotation."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from manager.access.session_signer import AuthError, SessionSigner
from manager.keys.masterkey import MasterKey, MasterKeyError
from manager.keys.signing import DELEGATE_SESSION_KEY, reseal, signing_key
from manager.server.app import ManagerConfig, build_app, open_store
from manager.store.sqlite import SqliteStore
from tests.manager.keys.test_keys_cli import manager

CLEAR = "ab" * 32


def _key_id(stored: str) -> str:
    raw = base64.b64decode(stored.removeprefix("sealed:"))
    return raw[2 : 2 + raw[1]].decode()


async def test_the_session_key_is_not_in_the_database_file_in_clear(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    await store.open()
    try:
        _app, c = await build_app(ManagerConfig(data_dir=tmp_path), store)
        raw = await signing_key(store, MasterKey.load(tmp_path / "master.key"), "session_key")
        stored = await store.get_setting(DELEGATE_SESSION_KEY)
        credential = c.signer.issue("dlg_1", "tok_1")
        assert c.signer.verify(credential).delegate_id == "dlg_1"
    finally:
        await store.close()
    assert stored is not None
    assert stored.startswith("sealed:")
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("tether.db*"))
    assert raw.hex().encode() not in on_disk
    assert raw not in on_disk
    # What the database holds is no key: a credential signed with it is refused.
    forged = SessionSigner(stored.encode(), ttl=60).issue("dlg_1", "tok_1")
    with pytest.raises(AuthError, match="signature"):
        c.signer.verify(forged)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "tether.db")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
def key(tmp_path: Path) -> MasterKey:
    return MasterKey.load_or_create(tmp_path / "master.key")


async def test_a_clear_key_is_sealed_in_place_and_keeps_its_value(
    store: SqliteStore, key: MasterKey
) -> None:
    await store.put_setting_if_absent(DELEGATE_SESSION_KEY, CLEAR)
    # Credentials issued before the upgrade stay valid: the key is the same, only sealed.
    assert await signing_key(store, key, DELEGATE_SESSION_KEY) == bytes.fromhex(CLEAR)
    stored = await store.get_setting(DELEGATE_SESSION_KEY)
    assert stored is not None
    assert stored.startswith("sealed:")
    assert CLEAR not in stored
    assert await signing_key(store, key, DELEGATE_SESSION_KEY) == bytes.fromhex(CLEAR)


async def test_a_sealed_key_opens_only_under_its_own_name_and_master_key(
    store: SqliteStore, key: MasterKey
) -> None:
    await signing_key(store, key, DELEGATE_SESSION_KEY)
    stored = await store.get_setting(DELEGATE_SESSION_KEY)
    assert stored is not None
    await store.put_setting_if_absent("other_key", stored)
    with pytest.raises(MasterKeyError):
        await signing_key(store, key, "other_key")
    with pytest.raises(MasterKeyError):
        await signing_key(store, MasterKey(b"\x01" * 32), DELEGATE_SESSION_KEY)


async def test_reseal_moves_it_to_the_current_master_key(
    store: SqliteStore, key: MasterKey
) -> None:
    raw = await signing_key(store, key, DELEGATE_SESSION_KEY)
    key.rotate()
    assert await reseal(store, key) == [DELEGATE_SESSION_KEY]
    stored = await store.get_setting(DELEGATE_SESSION_KEY)
    assert stored is not None
    assert _key_id(stored) == "k2"
    assert await signing_key(store, key, DELEGATE_SESSION_KEY) == raw


async def _data_dir(data: Path, sealed_with: Path) -> None:
    """A data dir whose store holds a signing key sealed with the key at ``sealed_with``."""
    data.mkdir(mode=0o700)
    store = SqliteStore(data / "tether.db")
    await store.open()
    try:
        await signing_key(store, MasterKey.load_or_create(sealed_with), DELEGATE_SESSION_KEY)
    finally:
        await store.close()


async def test_keys_rotate_reseals_the_signing_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _data_dir(data, data / "master.key")

    res = await manager("keys", "rotate", "--data-dir", str(data))

    assert res.code == 0, res.err
    assert "Signing keys re-sealed under k2: session_key." in res.out
    store = SqliteStore(data / "tether.db")
    await store.open()
    try:
        stored = await store.get_setting(DELEGATE_SESSION_KEY)
    finally:
        await store.close()
    assert stored is not None
    assert _key_id(stored) == "k2"


async def test_a_manager_with_another_master_key_refuses_to_start_in_one_line(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    await _data_dir(data, tmp_path / "other.key")
    MasterKey.load_or_create(data / "master.key")  # not the key the database was used with

    res = await manager("serve", "--data-dir", str(data), "--listen", "127.0.0.1:0")

    assert res.code == 2, res.err
    assert res.err.splitlines()[-1].startswith("error: signing key session_key in the store")
    assert "Traceback" not in res.err

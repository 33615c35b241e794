"""The master key ring: rotation, both ciphertext formats, wrapping, and two processes
(the server and ``tether-manager keys rotate``) sharing one data dir."""

from __future__ import annotations

import base64
import os
import secrets
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from manager.keys.masterkey import MasterKey, MasterKeyError
from shared.envelope import EnvelopeContext, KeyWrapper, open_with, seal_with

CTX = b"tether-task-secret-env-v1\x00tsk_1"
WRAP_CTX = EnvelopeContext(account="acct_default", secret_id="sec_1", version=1).canonical()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def header_id(raw: bytes) -> str:
    """The key id a format 2 or 3 blob names."""
    return raw[2 : 2 + raw[1]].decode()


@pytest.fixture
def master(tmp_path: Path) -> Path:
    return tmp_path / "master.key"


@pytest.fixture
def ring(master: Path) -> MasterKey:
    return MasterKey.load_or_create(master)


def test_first_start_makes_k1_only(ring: MasterKey, master: Path) -> None:
    assert ring.current_id == "k1"
    assert mode(master) == 0o600
    assert len(master.read_bytes()) == 32
    # Nothing else until a rotation: a data dir that never rotates looks as it always did.
    assert sorted(p.name for p in master.parent.iterdir()) == ["master.key"]
    assert MasterKey.load_or_create(master).current_id == "k1"


def test_load_never_makes_a_key(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="no key at"):
        MasterKey.load(tmp_path / "master.key")
    assert not (tmp_path / "master.key").exists()


def test_encrypt_round_trip_and_context_binding(ring: MasterKey) -> None:
    sealed = ring.encrypt(b"hunter2", context=CTX)
    raw = base64.b64decode(sealed)
    assert raw[0] == 2
    assert header_id(raw) == "k1"
    assert ring.decrypt(sealed, context=CTX) == b"hunter2"
    with pytest.raises(MasterKeyError, match="does not open"):
        ring.decrypt(sealed, context=CTX + b"x")


def test_legacy_format_1_still_decrypts_after_rotation(ring: MasterKey, master: Path) -> None:
    # Exactly what the pre-rotation MasterKey wrote: no key id, the context alone as AD.
    nonce = os.urandom(12)
    legacy = base64.b64encode(
        b"\x01" + nonce + AESGCM(master.read_bytes()).encrypt(nonce, b"old value", CTX)
    ).decode()
    assert ring.decrypt(legacy, context=CTX) == b"old value"
    ring.rotate()
    assert ring.decrypt(legacy, context=CTX) == b"old value"
    assert MasterKey.load(master).decrypt(legacy, context=CTX) == b"old value"
    with pytest.raises(MasterKeyError, match="does not open"):
        ring.decrypt(legacy, context=b"another task")


def test_rotation_makes_a_new_current_key_and_keeps_the_old(ring: MasterKey, master: Path) -> None:
    before = ring.encrypt(b"before", context=CTX)
    assert ring.rotate() == "k2"
    keys_dir = master.parent / "keys"
    assert mode(keys_dir) == 0o700
    assert mode(keys_dir / "k2.key") == 0o600
    assert (keys_dir / "current").read_text() == "k2\n"
    assert (keys_dir / "k2.key").read_bytes() != master.read_bytes()
    assert ring.current_id == "k2"

    after = ring.encrypt(b"after", context=CTX)
    assert header_id(base64.b64decode(after)) == "k2"
    assert ring.decrypt(before, context=CTX) == b"before"
    assert ring.decrypt(after, context=CTX) == b"after"

    assert ring.rotate() == "k3"
    reopened = MasterKey.load_or_create(master)
    assert reopened.current_id == "k3"
    assert reopened.decrypt(before, context=CTX) == b"before"
    assert reopened.decrypt(after, context=CTX) == b"after"
    assert [(k.id, k.current) for k in reopened.list_keys()] == [
        ("k1", False),
        ("k2", False),
        ("k3", True),
    ]
    # The temporary files went; nothing but keys is left behind.
    assert sorted(p.name for p in master.parent.iterdir()) == ["keys", "master.key"]
    assert sorted(p.name for p in keys_dir.iterdir()) == ["current", "k2.key", "k3.key"]


async def test_wrap_unwrap_with_context_binding(ring: MasterKey) -> None:
    data_key = os.urandom(32)
    wrapped = await ring.wrap_key(data_key, WRAP_CTX)
    assert wrapped[0] == 3
    assert MasterKey.wrapped_key_id(wrapped) == "k1"
    assert await ring.unwrap_key(wrapped, WRAP_CTX) == data_key

    other = EnvelopeContext(account="acct_default", secret_id="sec_1", version=2).canonical()
    with pytest.raises(MasterKeyError, match="does not open"):
        await ring.unwrap_key(wrapped, other)
    # The header is authenticated: naming another key in it does not help.
    ring.rotate()
    relabelled = wrapped[:2] + b"k2" + wrapped[4:]
    with pytest.raises(MasterKeyError, match="does not open"):
        await ring.unwrap_key(relabelled, WRAP_CTX)


async def test_old_wraps_unwrap_after_rotation(ring: MasterKey) -> None:
    data_key = os.urandom(32)
    old = await ring.wrap_key(data_key, WRAP_CTX)
    ring.rotate()
    new = await ring.wrap_key(data_key, WRAP_CTX)
    assert (MasterKey.wrapped_key_id(old), MasterKey.wrapped_key_id(new)) == ("k1", "k2")
    assert await ring.unwrap_key(old, WRAP_CTX) == data_key
    assert await ring.unwrap_key(new, WRAP_CTX) == data_key


async def test_a_wrapped_key_and_a_task_value_are_not_interchangeable(ring: MasterKey) -> None:
    data_key = os.urandom(32)
    wrapped = await ring.wrap_key(data_key, CTX)
    with pytest.raises(MasterKeyError, match="unknown ciphertext format"):
        ring.decrypt(base64.b64encode(wrapped).decode(), context=CTX)
    # Same bytes with the value's format byte: the header is in the AD, so the tag fails.
    with pytest.raises(MasterKeyError, match="does not open"):
        ring.decrypt(base64.b64encode(b"\x02" + wrapped[1:]).decode(), context=CTX)
    value = base64.b64decode(ring.encrypt(data_key, context=CTX))
    with pytest.raises(MasterKeyError, match="unknown format"):
        await ring.unwrap_key(value, CTX)
    with pytest.raises(MasterKeyError, match="does not open"):
        await ring.unwrap_key(b"\x03" + value[1:], CTX)


async def test_wrap_takes_only_data_keys(ring: MasterKey) -> None:
    with pytest.raises(MasterKeyError, match="32 bytes"):
        await ring.wrap_key(b"short", WRAP_CTX)


async def test_the_ring_is_a_key_wrapper_for_envelopes(ring: MasterKey) -> None:
    wrapper: KeyWrapper = ring
    ctx = EnvelopeContext(account="acct_default", secret_id="sec_1", version=1)
    envelope = await seal_with(wrapper, "builtin", ring.current_id, b"s3cret", ctx)
    ring.rotate()
    assert await open_with(wrapper, envelope, ctx) == b"s3cret"


async def test_a_second_process_rotating_is_seen_by_the_first(master: Path) -> None:
    server = MasterKey.load_or_create(master)
    cli = MasterKey.load(master)
    assert cli.rotate() == "k2"

    # A key the server has not read yet: it re-reads the ring once and opens it.
    data_key = os.urandom(32)
    wrapped = await cli.wrap_key(data_key, WRAP_CTX)
    assert await server.unwrap_key(wrapped, WRAP_CTX) == data_key
    assert server.decrypt(cli.encrypt(b"v", context=CTX), context=CTX) == b"v"


async def test_the_server_follows_a_changed_current_file(master: Path) -> None:
    server = MasterKey.load_or_create(master)
    cli = MasterKey.load(master)
    cli.rotate()
    # No unknown id involved: wrap_key and encrypt look at the current file themselves.
    assert MasterKey.wrapped_key_id(await server.wrap_key(os.urandom(32), WRAP_CTX)) == "k2"
    cli.rotate()
    assert header_id(base64.b64decode(server.encrypt(b"v", context=CTX))) == "k3"
    assert server.current_id == "k3"


async def test_an_id_in_no_key_file_is_refused_after_one_reload(ring: MasterKey) -> None:
    wrapped = await ring.wrap_key(os.urandom(32), WRAP_CTX)
    stranger = wrapped[:1] + b"\x02k9" + wrapped[4:]
    with pytest.raises(MasterKeyError, match="key k9 is not in the key ring"):
        await ring.unwrap_key(stranger, WRAP_CTX)


@pytest.mark.parametrize("bad_id", [b"", b"../../etc/passwd", b"k0", b"K2", b"k1\x00", b"\xff"])
async def test_ids_that_are_not_key_ids_never_reach_the_file_system(
    ring: MasterKey, bad_id: bytes
) -> None:
    blob = bytes([3, len(bad_id)]) + bad_id + os.urandom(12 + 48)
    with pytest.raises(MasterKeyError, match="does not name a valid key id"):
        await ring.unwrap_key(blob, WRAP_CTX)


@pytest.mark.parametrize("blob", [b"", b"\x03", b"\x03\x02k2", b"\x03\x02k1" + b"\x00" * 27])
async def test_truncated_wrapped_keys_are_refused(ring: MasterKey, blob: bytes) -> None:
    with pytest.raises(MasterKeyError):
        await ring.unwrap_key(blob, WRAP_CTX)


def test_bad_ciphertext_text(ring: MasterKey) -> None:
    with pytest.raises(MasterKeyError, match="not base64"):
        ring.decrypt("not base64!", context=CTX)
    with pytest.raises(MasterKeyError, match="unknown ciphertext format"):
        ring.decrypt(base64.b64encode(b"\x09" + bytes(40)).decode(), context=CTX)
    with pytest.raises(MasterKeyError, match="too short"):
        ring.decrypt(base64.b64encode(b"\x01" + bytes(10)).decode(), context=CTX)


def test_a_master_key_readable_by_others_is_refused(master: Path) -> None:
    MasterKey.load_or_create(master)
    master.chmod(0o640)
    with pytest.raises(MasterKeyError, match="readable by group or others") as err:
        MasterKey.load_or_create(master)
    assert master.read_bytes().hex() not in str(err.value)
    # The mode, and the command to run once the operator knows it did not leak.
    assert str(err.value) == (
        f"{master} is mode 0640, readable by group or others: rotate it, or run"
        f" `chmod 600 {master}` once you know it did not leak"
    )


def test_a_rotated_key_readable_by_others_is_refused(ring: MasterKey, master: Path) -> None:
    ring.rotate()
    k2 = master.parent / "keys" / "k2.key"
    k2.chmod(0o644)
    with pytest.raises(MasterKeyError, match=r"k2\.key is mode 0644, readable by group or others"):
        MasterKey.load(master)
    # A running ring re-reads on rotation, and refuses then too.
    k2.chmod(0o600)
    server = MasterKey.load(master)
    k2.chmod(0o604)
    with pytest.raises(MasterKeyError, match="readable by group or others"):
        server.rotate()


def test_a_key_file_of_the_wrong_size_is_refused_without_its_bytes(
    ring: MasterKey, master: Path
) -> None:
    ring.rotate()
    k2 = master.parent / "keys" / "k2.key"
    k2.write_bytes(b"\xab" * 31)
    with pytest.raises(MasterKeyError, match="does not hold a 32-byte key") as err:
        MasterKey.load(master)
    assert "ab" * 8 not in str(err.value)


def test_current_naming_a_missing_key_is_an_error(ring: MasterKey, master: Path) -> None:
    ring.rotate()
    (master.parent / "keys" / "current").write_text("k7\n")
    with pytest.raises(MasterKeyError, match="names key k7, which is missing"):
        MasterKey.load(master)
    (master.parent / "keys" / "current").write_text("../k1\n")
    with pytest.raises(MasterKeyError, match="does not hold a key id"):
        MasterKey.load(master)


def test_a_lost_master_key_is_not_silently_replaced(ring: MasterKey, master: Path) -> None:
    ring.rotate()
    master.unlink()
    with pytest.raises(MasterKeyError, match=r"restore master\.key from a backup"):
        MasterKey.load_or_create(master)
    assert not master.exists()


def test_current_is_replaced_atomically(
    ring: MasterKey, master: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring.rotate()
    current = master.parent / "keys" / "current"
    inode = current.stat().st_ino
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    def crash(src: object, dst: object) -> None:
        # The moment before the rename: the new id is written and synced, not yet visible.
        assert synced, "the new current file must be synced before it is renamed"
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(MasterKeyError, match=r"cannot write .*current: Input/output error"):
        ring.rotate()
    monkeypatch.undo()

    # The old current file is untouched and no temporary file is left behind.
    assert current.read_text() == "k2\n"
    assert current.stat().st_ino == inode
    assert not list(master.parent.glob(".tether-key-*"))
    reopened = MasterKey.load(master)
    assert reopened.current_id == "k2"
    # The key made for the failed rotation is kept, unused; the next one goes past it.
    assert reopened.rotate() == "k4"
    assert current.stat().st_ino != inode


def test_two_rotations_racing_for_one_id_get_two_ids(
    master: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = MasterKey.load_or_create(master)
    assert first.rotate() == "k2"
    (master.parent / "keys" / "current").unlink()
    # The second process read keys/ (at load, and again as it starts rotating) just before
    # the first wrote k2.key: it picks k2 too, and the link tells it the id is taken.
    real_listdir, real_link = os.listdir, os.link
    stale_reads = [True, True]
    linked: list[str] = []

    def listdir(path: str) -> list[str]:
        return [] if stale_reads and stale_reads.pop() else real_listdir(path)

    def link(src: Path, dst: Path) -> None:
        linked.append(Path(dst).name)
        real_link(src, dst)

    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setattr(os, "link", link)
    second = MasterKey.load(master)
    assert second.current_id == "k1"
    assert second.rotate() == "k3"
    assert linked == ["k2.key", "k3.key"]
    assert (master.parent / "keys" / "current").read_text() == "k3\n"
    assert len({(master.parent / "keys" / n).read_bytes() for n in ("k2.key", "k3.key")}) == 2


def test_an_in_memory_ring(tmp_path: Path) -> None:
    ring = MasterKey(secrets.token_bytes(32))
    assert ring.decrypt(ring.encrypt(b"v", context=CTX), context=CTX) == b"v"
    with pytest.raises(MasterKeyError, match="cannot rotate"):
        ring.rotate()
    with pytest.raises(MasterKeyError, match="32 bytes"):
        MasterKey(b"short")
    assert list(tmp_path.iterdir()) == []

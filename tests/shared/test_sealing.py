from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from shared.sealing import (
    SealError,
    generate_keypair,
    load_or_create_private_key,
    open_sealed,
    public_from_private,
    public_key_b64,
    seal,
)


@pytest.fixture
def keypair() -> tuple[bytes, bytes]:
    return generate_keypair()


def test_sealed_value_opens_with_the_recipient_key(keypair: tuple[bytes, bytes]) -> None:
    private, public = keypair
    box = seal(public_key_b64(public), b"db-password", context=b"task-1")
    assert open_sealed(private, box, context=b"task-1") == b"db-password"


def test_sealed_value_does_not_contain_the_plaintext(keypair: tuple[bytes, bytes]) -> None:
    _, public = keypair
    box = seal(public_key_b64(public), b"db-password")
    assert b"db-password" not in base64.b64decode(box)


def test_sealing_twice_gives_different_boxes(keypair: tuple[bytes, bytes]) -> None:
    _, public = keypair
    assert seal(public_key_b64(public), b"x") != seal(public_key_b64(public), b"x")


def test_box_layout_is_version_ephemeral_key_nonce_ciphertext(
    keypair: tuple[bytes, bytes],
) -> None:
    _, public = keypair
    box = base64.b64decode(seal(public_key_b64(public), b"12345"))
    assert box[0] == 1
    assert len(box) == 1 + 32 + 12 + 5 + 16


def test_public_key_derives_from_private(keypair: tuple[bytes, bytes]) -> None:
    private, public = keypair
    assert public_from_private(private) == public


def test_wrong_private_key_fails(keypair: tuple[bytes, bytes]) -> None:
    _, public = keypair
    other_private, _ = generate_keypair()
    box = seal(public_key_b64(public), b"secret")
    with pytest.raises(SealError):
        open_sealed(other_private, box)


@pytest.mark.parametrize("index", [0, 1, 40, 50, -1])
def test_any_tampered_byte_fails(keypair: tuple[bytes, bytes], index: int) -> None:
    private, public = keypair
    raw = bytearray(base64.b64decode(seal(public_key_b64(public), b"secret value")))
    raw[index] ^= 0x01
    with pytest.raises(SealError):
        open_sealed(private, base64.b64encode(bytes(raw)).decode())


def test_truncated_box_fails(keypair: tuple[bytes, bytes]) -> None:
    private, public = keypair
    box = base64.b64decode(seal(public_key_b64(public), b"secret"))
    with pytest.raises(SealError, match="too short"):
        open_sealed(private, base64.b64encode(box[:40]).decode())


def test_box_that_is_not_base64_fails(keypair: tuple[bytes, bytes]) -> None:
    private, _ = keypair
    with pytest.raises(SealError, match="base64"):
        open_sealed(private, "not base64 !!")


def test_wrong_context_fails(keypair: tuple[bytes, bytes]) -> None:
    private, public = keypair
    box = seal(public_key_b64(public), b"secret", context=b"task-1")
    with pytest.raises(SealError):
        open_sealed(private, box, context=b"task-2")


def test_error_messages_carry_no_key_or_plaintext(keypair: tuple[bytes, bytes]) -> None:
    private, public = keypair
    other_private, _ = generate_keypair()
    box = seal(public_key_b64(public), b"plaintext-value")
    with pytest.raises(SealError) as caught:
        open_sealed(other_private, box)
    message = str(caught.value)
    forbidden = [private, other_private, public, b"plaintext-value"]
    for secret in forbidden:
        assert secret.hex() not in message
        assert base64.b64encode(secret).decode() not in message
        assert secret.decode("latin-1") not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "delegate.key"
    first = load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_private_key(path) == first
    assert len(first) == 32


def test_group_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "delegate.key"
    load_or_create_private_key(path)
    os.chmod(path, 0o640)
    with pytest.raises(SealError, match="readable by group or others") as caught:
        load_or_create_private_key(path)
    assert path.read_bytes().hex() not in str(caught.value)


def test_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "delegate.key"
    path.write_bytes(os.urandom(32))
    os.chmod(path, 0o644)
    with pytest.raises(SealError, match="readable by group or others"):
        load_or_create_private_key(path)


def test_key_file_of_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "delegate.key"
    path.write_bytes(b"short")
    os.chmod(path, 0o600)
    with pytest.raises(SealError, match="holds 5 bytes"):
        load_or_create_private_key(path)


def test_recipient_key_of_wrong_length_is_refused() -> None:
    with pytest.raises(SealError, match="not 32"):
        seal(base64.b64encode(b"x" * 31).decode(), b"secret")

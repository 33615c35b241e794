from __future__ import annotations

import base64
import dataclasses
import json
import struct

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.envelope import (
    DATA_KEY_LEN,
    Envelope,
    EnvelopeContext,
    EnvelopeError,
    decrypt_value,
    encrypt_value,
    new_data_key,
    open_with,
    seal_with,
)

CTX = EnvelopeContext(account="acct-1", secret_id="sec-1", version=3)


class FakeKek:
    """An in-memory KEK that binds the context the way KMS and Transit do."""

    def __init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self.contexts: list[bytes] = []

    async def wrap_key(self, data_key: bytes, context: bytes) -> bytes:
        self.contexts.append(context)
        return b"\x00" * 12 + self._aead.encrypt(b"\x00" * 12, data_key, context)

    async def unwrap_key(self, wrapped: bytes, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:12], wrapped[12:], context)
        except InvalidTag:
            raise EnvelopeError("fake kek: wrong context") from None


class ShortKeyKek(FakeKek):
    async def unwrap_key(self, wrapped: bytes, context: bytes) -> bytes:
        return (await super().unwrap_key(wrapped, context))[:16]


# --- context ----------------------------------------------------------------------------


def test_canonical_layout_is_version_then_length_prefixed_fields() -> None:
    ctx = EnvelopeContext(account="a", secret_id="bc", version=12, purpose="p")
    expected = b"\x01" + b"".join(struct.pack(">I", len(f)) + f for f in (b"a", b"bc", b"12", b"p"))
    assert ctx.canonical() == expected


def test_canonical_is_unambiguous_across_field_boundaries() -> None:
    left = EnvelopeContext(account="a", secret_id="bc", version=1)
    right = EnvelopeContext(account="ab", secret_id="c", version=1)
    assert left.canonical() != right.canonical()


def test_canonical_parses_back() -> None:
    ctx = EnvelopeContext(account="ä", secret_id="s/1", version=0, purpose="file")
    assert EnvelopeContext.from_canonical(ctx.canonical()) == ctx


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02" + CTX.canonical()[1:],
        CTX.canonical() + b"x",
        CTX.canonical()[:-1],
        EnvelopeContext(account="a", secret_id="b", version=7).canonical().replace(b"7", b"x"),
        # "07": a version canonical() never writes.
        b"\x01" + b"".join(struct.pack(">I", len(f)) + f for f in (b"a", b"b", b"07", b"p")),
        b"\x01" + struct.pack(">I", 2) + b"\xff\xfe" + CTX.canonical()[5 + len(b"acct-1") :],
    ],
)
def test_from_canonical_refuses_anything_else(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        EnvelopeContext.from_canonical(data)


def test_kms_context_is_a_string_map_of_every_field() -> None:
    assert CTX.as_kms_context() == {
        "tether:format": "1",
        "tether:account": "acct-1",
        "tether:secret_id": "sec-1",
        "tether:version": "3",
        "tether:purpose": "secret-value",
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"account": ""},
        {"secret_id": ""},
        {"purpose": ""},
        {"version": -1},
        {"version": True},
        {"account": "\ud800"},
    ],
)
def test_context_fields_are_validated(fields: dict[str, object]) -> None:
    base: dict[str, object] = {"account": "a", "secret_id": "s", "version": 1}
    with pytest.raises(EnvelopeError):
        EnvelopeContext(**{**base, **fields})  # type: ignore[arg-type]


# --- values -----------------------------------------------------------------------------


def test_value_round_trip() -> None:
    key = new_data_key()
    assert decrypt_value(key, encrypt_value(key, b"db-password", CTX), CTX) == b"db-password"


def test_value_layout_is_version_nonce_ciphertext_tag() -> None:
    blob = encrypt_value(new_data_key(), b"12345", CTX)
    assert blob[0] == 1
    assert len(blob) == 1 + 12 + 5 + 16
    assert b"12345" not in blob


def test_data_keys_are_fresh_and_256_bits() -> None:
    keys = {new_data_key() for _ in range(8)}
    assert len(keys) == 8
    assert all(len(k) == DATA_KEY_LEN for k in keys)


def test_encrypting_twice_gives_different_blobs() -> None:
    key = new_data_key()
    assert encrypt_value(key, b"x", CTX) != encrypt_value(key, b"x", CTX)


@pytest.mark.parametrize("index", [1, 12, 13, -1])
def test_tampered_value_is_refused(index: int) -> None:
    key = new_data_key()
    blob = bytearray(encrypt_value(key, b"db-password", CTX))
    blob[index] ^= 0x01
    with pytest.raises(EnvelopeError, match="corrupt, or the data key or context is wrong"):
        decrypt_value(key, bytes(blob), CTX)


@pytest.mark.parametrize(
    "change",
    [{"account": "acct-2"}, {"secret_id": "sec-2"}, {"version": 4}, {"purpose": "file"}],
)
def test_value_under_another_context_is_refused(change: dict[str, object]) -> None:
    key = new_data_key()
    blob = encrypt_value(key, b"db-password", CTX)
    with pytest.raises(EnvelopeError):
        decrypt_value(key, blob, dataclasses.replace(CTX, **change))  # type: ignore[arg-type]


def test_value_under_another_key_is_refused() -> None:
    blob = encrypt_value(new_data_key(), b"db-password", CTX)
    with pytest.raises(EnvelopeError) as info:
        decrypt_value(new_data_key(), blob, CTX)
    assert "db-password" not in str(info.value)


def test_unknown_value_format_and_short_blob_are_refused() -> None:
    key = new_data_key()
    blob = encrypt_value(key, b"x", CTX)
    with pytest.raises(EnvelopeError, match="unknown format 2"):
        decrypt_value(key, b"\x02" + blob[1:], CTX)
    with pytest.raises(EnvelopeError, match="too short"):
        decrypt_value(key, blob[:20], CTX)


def test_data_key_must_be_256_bits() -> None:
    with pytest.raises(EnvelopeError, match="a data key is 32 bytes"):
        encrypt_value(b"short", b"x", CTX)


@settings(max_examples=25, deadline=None)
@given(
    plaintext=st.binary(max_size=512),
    account=st.text(min_size=1, max_size=20),
    secret_id=st.text(min_size=1, max_size=20),
    version=st.integers(min_value=0, max_value=2**40),
)
def test_round_trip_property(plaintext: bytes, account: str, secret_id: str, version: int) -> None:
    try:
        ctx = EnvelopeContext(account=account, secret_id=secret_id, version=version)
    except EnvelopeError:
        return  # lone surrogates cannot be UTF-8; refusing them is the behaviour
    assert EnvelopeContext.from_canonical(ctx.canonical()) == ctx
    key = new_data_key()
    assert decrypt_value(key, encrypt_value(key, plaintext, ctx), ctx) == plaintext


@settings(max_examples=25, deadline=None)
@given(
    a=st.lists(st.text(alphabet="ab", min_size=1, max_size=3), min_size=2, max_size=2),
    b=st.lists(st.text(alphabet="ab", min_size=1, max_size=3), min_size=2, max_size=2),
)
def test_different_contexts_have_different_canonical_forms(a: list[str], b: list[str]) -> None:
    left = EnvelopeContext(account=a[0], secret_id=a[1], version=1)
    right = EnvelopeContext(account=b[0], secret_id=b[1], version=1)
    assert (left.canonical() == right.canonical()) == (left == right)


# --- envelopes --------------------------------------------------------------------------


def _envelope() -> Envelope:
    return Envelope(
        kek_kind="aws_kms", kek_id="alias/k", wrapped_key=b"wrapped", blob=b"\x01" + b"b" * 40
    )


def test_envelope_json_round_trip() -> None:
    envelope = _envelope()
    assert Envelope.from_json(envelope.to_json()) == envelope


def test_envelope_json_has_a_format_field_and_base64_bytes() -> None:
    raw = json.loads(_envelope().to_json())
    assert raw["format"] == 1
    assert base64.b64decode(raw["wrapped_key"]) == b"wrapped"


def test_envelope_repr_shows_sizes_not_bytes() -> None:
    assert "wrapped_key=<7 bytes>" in repr(_envelope())


def _mutated(**changes: object) -> str:
    raw = json.loads(_envelope().to_json())
    raw.update(changes)
    return json.dumps(raw)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '"text"',
        _mutated(format=2),
        _mutated(format=True),
        _mutated(format="1"),
        _mutated(extra="x"),
        _mutated(wrapped_key="not base64!"),
        _mutated(wrapped_key=""),
        _mutated(blob=base64.b64encode(b"short").decode()),
        _mutated(kek_kind=""),
        _mutated(kek_id=5),
        json.dumps({k: v for k, v in json.loads(_envelope().to_json()).items() if k != "blob"}),
        _envelope().to_json()[:-1] + ',"kek_id":"other"}',
    ],
)
def test_envelope_json_is_strict(text: str) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_json(text)


def test_envelope_json_error_does_not_echo_the_input() -> None:
    with pytest.raises(EnvelopeError) as info:
        Envelope.from_json('{"secret-ish": "hunter2"')
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# --- seal_with / open_with --------------------------------------------------------------


async def test_seal_and_open_round_trip_with_the_context_bound_to_the_wrapping() -> None:
    kek = FakeKek()
    envelope = await seal_with(kek, "builtin", "kek-1", b"db-password", CTX)
    assert kek.contexts == [CTX.canonical()]
    assert (envelope.kek_kind, envelope.kek_id) == ("builtin", "kek-1")
    assert await open_with(kek, envelope, CTX) == b"db-password"


async def test_open_with_another_context_fails() -> None:
    kek = FakeKek()
    envelope = await seal_with(kek, "builtin", "kek-1", b"db-password", CTX)
    with pytest.raises(EnvelopeError):
        await open_with(kek, envelope, dataclasses.replace(CTX, version=4))


async def test_a_blob_moved_to_another_envelope_fails() -> None:
    kek = FakeKek()
    first = await seal_with(kek, "builtin", "kek-1", b"first", CTX)
    second = await seal_with(kek, "builtin", "kek-1", b"second", CTX)
    swapped = dataclasses.replace(second, blob=first.blob)
    with pytest.raises(EnvelopeError, match="corrupt"):
        await open_with(kek, swapped, CTX)


async def test_an_unwrapped_key_of_the_wrong_length_is_refused() -> None:
    kek = ShortKeyKek()
    envelope = await seal_with(kek, "builtin", "kek-1", b"x", CTX)
    with pytest.raises(EnvelopeError, match="wrong length"):
        await open_with(kek, envelope, CTX)

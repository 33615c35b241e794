from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from manager.access.session_signer import AuthError, SessionClaims, SessionSigner, bearer

KEY = bytes.fromhex(SessionSigner.new_key())
TTL = 3600.0


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def signer(clock: FakeClock, key: bytes = KEY) -> SessionSigner:
    return SessionSigner(key, ttl=TTL, clock=clock)


def refused(s: SessionSigner, credential: str) -> str:
    with pytest.raises(AuthError) as info:
        s.verify(credential)
    return info.value.code


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --- round trip ----------------------------------------------------------------------------


def test_issued_credential_verifies_to_its_claims() -> None:
    clock = FakeClock()
    s = signer(clock)
    claims = s.verify(s.issue("dlg_a", "tok_1"))
    assert claims == SessionClaims("dlg_a", "tok_1", clock.now + TTL)


def test_credential_from_another_signer_with_the_same_key_verifies() -> None:
    clock = FakeClock()
    credential = signer(clock).issue("dlg_a", "tok_1")
    assert signer(clock).verify(credential).delegate_id == "dlg_a"


def test_new_keys_are_random_256_bit() -> None:
    first, second = SessionSigner.new_key(), SessionSigner.new_key()
    assert len(bytes.fromhex(first)) == 32
    assert first != second


# --- refusals ------------------------------------------------------------------------------


def test_tampered_payload_is_an_invalid_credential() -> None:
    s = signer(FakeClock())
    prefix, _, mac = s.issue("dlg_a", "tok_1").split(".")
    forged = b64(json.dumps({"d": "dlg_admin", "t": "tok_1", "e": 9e12}).encode())
    assert refused(s, f"{prefix}.{forged}.{mac}") == "invalid_credential"


def test_tampered_mac_is_an_invalid_credential() -> None:
    s = signer(FakeClock())
    prefix, payload, mac = s.issue("dlg_a", "tok_1").split(".")
    raw = bytearray(base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4)))
    raw[0] ^= 0x01
    assert refused(s, f"{prefix}.{payload}.{b64(bytes(raw))}") == "invalid_credential"


def test_credential_signed_with_another_key_is_invalid() -> None:
    clock = FakeClock()
    credential = signer(clock, key=b"\x01" * 32).issue("dlg_a", "tok_1")
    assert refused(signer(clock), credential) == "invalid_credential"


@pytest.mark.parametrize(
    "credential",
    ["", "tds1", "tds1.a", "tds1.a.b.c", "tds2.e30.AAAA", "tds1.!!!.AAAA", "tds1.bm90anNvbg.AA"],
)
def test_malformed_credential_is_invalid(credential: str) -> None:
    assert refused(signer(FakeClock()), credential) == "invalid_credential"


def test_credential_with_payload_missing_claims_is_invalid() -> None:
    s = signer(FakeClock())
    payload = b64(b"{}")
    mac = hmac.new(KEY, payload.encode(), hashlib.sha256).digest()
    credential = f"tds1.{payload}.{b64(mac)}"
    assert refused(s, credential) == "invalid_credential"


def test_credential_is_valid_until_its_ttl() -> None:
    clock = FakeClock()
    s = signer(clock)
    credential = s.issue("dlg_a", "tok_1")
    clock.now += TTL
    assert s.verify(credential).delegate_id == "dlg_a"


def test_credential_past_its_ttl_is_expired() -> None:
    clock = FakeClock()
    s = signer(clock)
    credential = s.issue("dlg_a", "tok_1")
    clock.now += TTL + 0.001
    assert refused(s, credential) == "session_expired"


def test_forged_expired_credential_is_invalid_not_expired() -> None:
    clock = FakeClock()
    credential = signer(clock, key=b"\x02" * 32).issue("dlg_a", "tok_1")
    clock.now += TTL * 2
    assert refused(signer(clock), credential) == "invalid_credential"


def test_auth_error_message_does_not_echo_the_credential() -> None:
    s = signer(FakeClock())
    credential = s.issue("dlg_a", "tok_1")[:-2] + "zz"
    with pytest.raises(AuthError) as info:
        s.verify(credential)
    assert credential not in str(info.value)
    assert credential.split(".")[2] not in info.value.message


# --- bearer --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def", "abc.def"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer   abc  ", "abc"),
    ],
)
def test_bearer_extracts_the_token(header: str, token: str) -> None:
    assert bearer(header) == token


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Bearer    ", "Basic abc"])
def test_bearer_without_a_bearer_token_is_none(header: str | None) -> None:
    assert bearer(header) is None


# --- the memo of verified credentials ------------------------------------------------------


def test_a_verified_credential_still_expires_when_used_again() -> None:
    clock = FakeClock()
    s = signer(clock)
    credential = s.issue("dlg_a", "tok_1")
    assert s.verify(credential).delegate_id == "dlg_a"
    assert s.verify(credential).delegate_id == "dlg_a"  # from the memo
    clock.now += TTL + 1
    assert refused(s, credential) == "session_expired"


def test_a_forgery_of_a_verified_credential_is_still_refused() -> None:
    """Only the exact text that verified is remembered: a credential that differs from it
    in any way is checked afresh, and a refused one is never remembered."""
    s = signer(FakeClock())
    credential = s.issue("dlg_a", "tok_1")
    s.verify(credential)
    prefix, _, mac = credential.split(".")
    forged = b64(json.dumps({"d": "dlg_admin", "t": "tok_1", "e": 9e12}).encode())
    for _ in range(2):
        assert refused(s, f"{prefix}.{forged}.{mac}") == "invalid_credential"
    other = signer(FakeClock(), key=b"\x01" * 32).issue("dlg_a", "tok_1")
    for _ in range(2):
        assert refused(s, other) == "invalid_credential"

"""The webhook signature check: GitHub's documented example, Tether's timestamped HMAC,
bearer tokens; tampered bodies, stale timestamps and wrong secrets refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manager.core.hooksig import WINDOW_S, github_signature, sign, verify

# https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
GITHUB_SECRET = b"It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_github_documented_example() -> None:
    assert github_signature(GITHUB_SECRET, GITHUB_BODY) == GITHUB_SIG
    headers = {"X-Hub-Signature-256": GITHUB_SIG, "X-GitHub-Delivery": "d-1"}
    assert verify("github", GITHUB_SECRET, headers, GITHUB_BODY, 0.0).reason is None
    assert verify("github", GITHUB_SECRET, headers, GITHUB_BODY, 0.0).delivery_id == "d-1"


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({"X-Hub-Signature-256": GITHUB_SIG, "X-GitHub-Delivery": "d"}, b"Hello, World?", "bad"),
        ({"X-Hub-Signature-256": GITHUB_SIG.upper(), "X-GitHub-Delivery": "d"}, GITHUB_BODY, "bad"),
        ({"X-GitHub-Delivery": "d"}, GITHUB_BODY, "missing X-Hub-Signature-256"),
        ({"X-Hub-Signature-256": GITHUB_SIG}, GITHUB_BODY, "missing X-GitHub-Delivery"),
        ({"X-Hub-Signature-256": "sha256=é", "X-GitHub-Delivery": "d"}, GITHUB_BODY, "bad"),
    ],
)
def test_github_refusals(headers: dict[str, str], body: bytes, reason: str) -> None:
    got = verify("github", GITHUB_SECRET, headers, body, 0.0).reason
    assert got is not None
    assert got.startswith(reason)


def _signed(secret: bytes, body: bytes, ts: int, delivery: str = "x") -> dict[str, str]:
    return {
        "X-Tether-Timestamp": str(ts),
        "X-Tether-Signature": sign(secret, str(ts), body),
        "X-Tether-Delivery": delivery,
    }


def test_hmac_window_edges() -> None:
    h = _signed(b"k", b"{}", 1000)
    assert verify("hmac", b"k", h, b"{}", 1000 + WINDOW_S).reason is None
    assert verify("hmac", b"k", h, b"{}", 1000 - WINDOW_S).reason is None
    assert verify("hmac", b"k", h, b"{}", 1001 + WINDOW_S).reason == (
        "timestamp outside the 5-minute window"
    )
    # a fresh timestamp on an old signature is a bad signature, not a fresh delivery
    moved = {**h, "X-Tether-Timestamp": "1300"}
    assert verify("hmac", b"k", moved, b"{}", 1300).reason == "bad signature"


def test_bearer() -> None:
    ok = {"Authorization": "Bearer s3cret"}
    assert verify("bearer", b"s3cret", ok, b"", 0).reason is None
    assert verify("bearer", b"s3cret", {"Authorization": "Bearer s3cres"}, b"", 0).reason == (
        "wrong bearer token"
    )
    assert verify("bearer", b"s3cret", {}, b"", 0).reason == "missing bearer token"
    assert verify("bearer", b"s3cret", {"Authorization": "Basic s3cret"}, b"", 0).reason == (
        "missing bearer token"
    )


@settings(max_examples=200, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    body=st.binary(max_size=512),
    ts=st.integers(0, 10**10),
    skew=st.floats(-2 * WINDOW_S, 2 * WINDOW_S, allow_nan=False),
    flip=st.integers(0, 10_000),
)
def test_hmac_accepts_exactly_the_signed_fresh_body(
    secret: bytes, body: bytes, ts: int, skew: float, flip: int
) -> None:
    headers = _signed(secret, body, ts)
    fresh = abs(skew) <= WINDOW_S
    got = verify("hmac", secret, headers, body, ts + skew)
    assert (got.reason is None) == fresh
    if body:
        i = flip % len(body)
        tampered = body[:i] + bytes([body[i] ^ 1]) + body[i + 1 :]
        assert verify("hmac", secret, headers, tampered, ts).reason == "bad signature"
    assert verify("hmac", secret + b"x", headers, body, ts).reason == "bad signature"
    assert verify("hmac", secret, headers, body + b" ", ts).reason == "bad signature"

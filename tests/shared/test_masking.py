from __future__ import annotations

import base64
import itertools
import json
import shlex
import string
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.limits import MIN_MASKED_SECRET_LEN
from shared.masking import MASK, Masker, MaskingProcessor, expand_value
from shared.shapes import MAX_HOLD, PEM_CAP, SHAPES

SECRET = "s3cr3t/Pa+ss w0rd\"'&="


def stream_through(masker: Masker, pieces: list[bytes]) -> bytes:
    stream = masker.stream()
    out = b"".join(stream.feed(piece) for piece in pieces)
    return out + stream.flush()


def one_byte_pieces(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- encodings -----------------------------------------------------------------------------


def test_raw_value_is_masked() -> None:
    masker = Masker([SECRET])
    assert masker.mask_text(f"pw={SECRET}!") == f"pw={MASK.decode()}!"


def test_base64_at_every_alignment_leaves_no_value_bits_unmasked() -> None:
    masker = Masker([SECRET])
    for prefix in (b"", b"x", b"xy"):
        encoded = base64.b64encode(prefix + SECRET.encode() + b"\n")
        masked = masker.mask_bytes(encoded)
        assert MASK in masked
        # At most one character on each side of the mask mixes value bits with others.
        head, _, tail = masked.partition(MASK)
        assert len(head) <= -(-len(prefix) * 8 // 6)
        assert len(tail) <= 4


def test_urlsafe_base64_is_masked() -> None:
    value = b"\xfb\xff\xfe\xfa\xfb\xff"
    masker = Masker([value])
    encoded = base64.urlsafe_b64encode(value)
    assert b"-" in encoded or b"_" in encoded
    assert masker.mask_bytes(encoded) == MASK


def test_url_encoded_forms_are_masked() -> None:
    masker = Masker([SECRET])
    assert masker.mask_text(quote(SECRET, safe="")) == MASK.decode()
    assert masker.mask_text(quote_plus(SECRET)) == MASK.decode()


def test_json_escaped_forms_are_masked() -> None:
    value = 'naïve "quoted" \\ päss'
    masker = Masker([value])
    for ensure_ascii in (True, False):
        doc = json.dumps({"password": value}, ensure_ascii=ensure_ascii)
        assert masker.mask_text(doc) == '{"password": "' + MASK.decode() + '"}'


def test_shell_quoted_form_is_masked() -> None:
    value = "it's a secret"
    masker = Masker([value])
    assert masker.mask_text(f"export X={shlex.quote(value)}") == f"export X={MASK.decode()}"


def test_each_line_of_a_multi_line_value_is_masked_alone() -> None:
    value = "-----BEGIN KEY-----\r\nMIIEpAIBAAKCAQEA\r\n-----END KEY-----\r\n"
    masker = Masker([value])
    assert masker.mask_text("line: MIIEpAIBAAKCAQEA.") == f"line: {MASK.decode()}."
    assert masker.mask_text("-----END KEY-----") == MASK.decode()


def test_short_lines_of_a_multi_line_value_are_not_patterns() -> None:
    assert all(len(p) >= MIN_MASKED_SECRET_LEN for p in expand_value("ab\nlong enough\nx"))
    assert Masker(["ab\nlong enough"]).mask_text("ab cd") == "ab cd"


def test_derived_patterns_are_deduplicated() -> None:
    masker = Masker(["abcdef", "abcdef", b"abcdef"])
    assert masker.patterns == len(expand_value("abcdef"))


# --- short values --------------------------------------------------------------------------


def test_value_shorter_than_minimum_is_skipped_and_reported_without_the_value() -> None:
    masker = Masker()
    assert masker.add("xyz") is False
    assert masker.patterns == 0
    assert masker.skipped == ["a value of 3 characters"]
    assert all("xyz" not in line for line in masker.skipped)
    assert masker.mask_text("xyz") == "xyz"


def test_value_of_minimum_length_is_registered() -> None:
    masker = Masker()
    assert masker.add(b"abcd") is True
    assert masker.skipped == []
    assert masker.mask_bytes(b"-abcd-") == b"-" + MASK + b"-"


# --- streaming -----------------------------------------------------------------------------


def test_adjacent_matches_merge_into_one_mask() -> None:
    masker = Masker(["alpha", "bravo"])
    assert masker.mask_bytes(b"[alphabravoalpha]") == b"[" + MASK + b"]"


def test_overlapping_matches_merge_into_one_mask() -> None:
    masker = Masker(["abcdef", "defghi"])
    assert masker.mask_bytes(b"<abcdefghi>") == b"<" + MASK + b">"


def test_value_written_one_byte_per_write_is_masked() -> None:
    masker = Masker([SECRET])
    data = f"token: {SECRET}\n".encode()
    assert stream_through(masker, one_byte_pieces(data)) == b"token: " + MASK + b"\n"


def test_self_overlapping_value_split_aa_ab_is_masked() -> None:
    masker = Masker(["aabb"])
    assert stream_through(masker, [b"xaa", b"aabb", b"y"]) == b"xaa" + MASK + b"y"


def test_self_overlapping_value_split_aba_bac_is_masked() -> None:
    masker = Masker(["abac"])
    assert stream_through(masker, [b"aba", b"bac"]) == b"ab" + MASK


def test_patterns_that_are_prefixes_of_each_other_mask_the_longest() -> None:
    masker = Masker(["abcd", "abcdefgh"])
    assert stream_through(masker, [b"abcd", b"efgh", b"!"]) == MASK + b"!"
    assert stream_through(masker, [b"abcd", b"ef!"]) == MASK + b"ef!"


def test_pattern_that_is_a_suffix_of_another_is_masked() -> None:
    masker = Masker(["efgh", "abcdefgh"])
    assert stream_through(masker, [b"xabcdef", b"gh"]) == b"x" + MASK
    assert stream_through(masker, [b"xef", b"gh"]) == b"x" + MASK


def test_match_running_past_the_release_point_leaves_no_tail_unmasked() -> None:
    masker = Masker(["abcd", "cdxyz"])
    stream = masker.stream()
    first = stream.feed(b"abcd")
    assert first == MASK
    assert stream.pending == 2
    assert stream.feed(b"xyz") + stream.flush() == b""
    again = masker.stream()
    assert again.feed(b"abcd") + again.feed(b"q") + again.flush() == MASK + b"q"


def test_output_without_secrets_is_identical_and_nothing_is_held() -> None:
    masker = Masker([SECRET, "another-secret-value"])
    stream = masker.stream()
    line = b"2024-01-01 build step 3 of 7 finished: ok\n"
    for _ in range(3):
        assert stream.feed(line) == line
        assert stream.pending == 0
    assert stream.flush() == b""


def test_possible_start_of_a_secret_is_held_then_released_unchanged() -> None:
    masker = Masker(["password123"])
    stream = masker.stream()
    assert stream.feed(b"the pass") == b"the "
    assert stream.pending == 4
    assert stream.feed(b"ing grade!") == b"passing grade!"
    assert stream.pending == 0


def test_pending_never_exceeds_the_longest_pattern() -> None:
    masker = Masker(["aaaaaaab", "abababababac"])
    longest = max(len(p) for p in expand_value("abababababac"))
    stream = masker.stream()
    for piece in one_byte_pieces(b"abababababababaaaaaaaaaaaaaabababa" * 20):
        stream.feed(piece)
        assert stream.pending < longest


def test_streams_of_one_masker_are_independent() -> None:
    masker = Masker(["secretvalue"])
    out, err = masker.stream(), masker.stream()
    assert out.feed(b"secret") == b""
    assert err.feed(b"value.") == b"value."
    assert out.feed(b"value") + out.flush() == MASK


def test_value_added_after_stream_start_is_masked_from_then_on() -> None:
    masker = Masker(["first-secret"])
    stream = masker.stream()
    assert stream.feed(b"late-secret ") == b"late-secret "
    masker.add("late-secret")
    assert stream.feed(b"late-secret ") + stream.flush() == MASK + b" "


def test_mask_text_keeps_undecodable_bytes() -> None:
    text = b"caf\xe9 pw=abcdef".decode("utf-8", "surrogateescape")
    masked = Masker(["abcdef"]).mask_text(text)
    assert masked.encode("utf-8", "surrogateescape") == b"caf\xe9 pw=" + MASK


# --- properties ----------------------------------------------------------------------------

# '*' is left out: a value made of stars and letters could be spelled by a mask and its
# neighbours, which says nothing about a leak.
_small = st.text(alphabet="ab", min_size=4, max_size=40)
_texts = st.text(
    alphabet=st.characters(exclude_characters="*", exclude_categories=["Cs"]),
    min_size=4,
    max_size=40,
)
_binary = st.binary(min_size=4, max_size=40).filter(lambda b: b"*" not in b)
# Shorter once stripped is too short to mask (see the trailing newline tests).
_secret = st.one_of(_small, _small, _texts, _binary).filter(
    lambda v: len((v.encode() if isinstance(v, str) else v).strip()) >= MIN_MASKED_SECRET_LEN
)
_settings = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# For the properties that stream every example once per split point.
_split_settings = settings(_settings, max_examples=100)


def _raw(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


@st.composite
def _stream_with_secrets(draw: Any) -> tuple[list[str | bytes], bytes, list[int]]:
    secrets = draw(st.lists(_secret, min_size=1, max_size=5))
    parts = draw(
        st.lists(
            st.one_of(
                st.sampled_from([_raw(s) for s in secrets]),
                st.binary(max_size=6),
                st.text(alphabet="ab\n", max_size=6).map(str.encode),
            ),
            max_size=12,
        )
    )
    data = b"".join(parts)
    cuts = draw(st.lists(st.integers(min_value=0, max_value=max(len(data), 1)), max_size=20))
    return secrets, data, cuts


@_settings
@given(_stream_with_secrets())
def test_property_no_registered_value_survives_any_split(
    case: tuple[list[str | bytes], bytes, list[int]],
) -> None:
    secrets, data, cuts = case
    masker = Masker(secrets)
    out = stream_through(masker, split_at(data, cuts))
    for secret in secrets:
        assert _raw(secret) not in out


@_settings
@given(_stream_with_secrets())
def test_property_streamed_output_equals_one_shot_output(
    case: tuple[list[str | bytes], bytes, list[int]],
) -> None:
    secrets, data, cuts = case
    masker = Masker(secrets)
    assert stream_through(masker, split_at(data, cuts)) == masker.mask_bytes(data)


@_settings
@given(
    st.lists(_small, min_size=1, max_size=5),
    st.text(alphabet=" .:,;!?\n\t", max_size=200).map(str.encode),
    st.lists(st.integers(min_value=0, max_value=200), max_size=20),
)
def test_property_stream_that_cannot_form_a_secret_passes_unchanged(
    secrets: list[str], data: bytes, cuts: list[int]
) -> None:
    masker = Masker(secrets)
    stream = masker.stream()
    out = b""
    for piece in split_at(data, cuts):
        out += stream.feed(piece)
        assert stream.pending == 0
    assert out + stream.flush() == data


@_settings
@given(_stream_with_secrets())
def test_property_pending_stays_below_the_longest_pattern(
    case: tuple[list[str | bytes], bytes, list[int]],
) -> None:
    secrets, data, _ = case
    masker = Masker(secrets)
    longest = max(len(p) for s in secrets for p in expand_value(s))
    # A credential shape's trigger may hold more, up to its own bound.
    if any(trigger in data for shape in SHAPES for trigger in shape.triggers):
        longest = MAX_HOLD + 1
    stream = masker.stream()
    for piece in one_byte_pieces(data):
        stream.feed(piece)
        assert stream.pending < longest


# --- structlog -----------------------------------------------------------------------------


def test_masking_processor_masks_strings_in_nested_event_values() -> None:
    processor = MaskingProcessor(Masker(["hunter22"]))
    event = {
        "event": "login with hunter22",
        "ctx": {"args": ["--password", "hunter22"], "n": 3},
        "raw": b"pw=hunter22",
        "error": ValueError("bad password hunter22"),
    }
    result = processor(None, "info", event)
    assert result == {
        "event": "login with " + MASK.decode(),
        "ctx": {"args": ["--password", MASK.decode()], "n": 3},
        "raw": b"pw=" + MASK,
        "error": "bad password " + MASK.decode(),
    }


def test_masking_processor_guards_rendered_structlog_output() -> None:
    captured: list[str] = []

    def capture(_: Any, __: str, event_dict: Any) -> str:
        captured.append(json.dumps(event_dict))
        return ""

    logger = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[MaskingProcessor(Masker(["hunter22"])), capture],
    )
    logger.info("connecting", dsn="postgres://app:hunter22@db/app")
    assert "hunter22" not in captured[0]
    assert MASK.decode() in captured[0]


def test_base64_of_a_value_at_the_end_of_the_stream_is_masked_whole() -> None:
    # Every length modulo 3, at every alignment: the encoded tail (padded or not) is made of
    # the value's bits alone, so nothing of it may stay.
    for value in (b"0123456789ab", b"0123456789abc", b"0123456789abcd"):
        masker = Masker([value])
        for prefix in (b"", b"x", b"xy"):
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                padded = encode(prefix + value)
                for encoded in (padded, padded.rstrip(b"=")):
                    masked = masker.mask_bytes(encoded)
                    head, mask, tail = masked.partition(MASK)
                    assert mask == MASK, encoded
                    assert tail == b"", (encoded, masked)
                    assert len(head) <= -(-len(prefix) * 8 // 6)


# --- trailing newline ----------------------------------------------------------------------


def test_value_stored_with_a_trailing_newline_is_masked_without_it() -> None:
    # `--from-file` of a file made with `echo`: the script prints it through $(...) etc.
    value = "it's-a-Pa55word"
    masker = Masker([value + "\n"])
    for shown in (
        value,
        base64.b64encode(value.encode()).decode(),
        json.dumps({"pw": value}),
        quote(value, safe=""),
        f"X='{value}'",
    ):
        masked = masker.mask_text(shown)
        assert MASK.decode() in masked
        assert "Pa55word" not in masked
        assert base64.b64encode(value.encode()).decode()[:-2] not in masked


def test_value_short_without_its_newline_is_reported_as_too_short() -> None:
    masker = Masker()
    assert masker.add("abc\n") is False
    assert masker.skipped == ["a value of 4 characters (3 without surrounding whitespace)"]


# --- bash's quoting --------------------------------------------------------------------------
# Checked against the real shell in test_shellforms.py; here, how the masker treats them.


def test_bash_single_quoted_form_is_masked_inside_a_longer_word() -> None:
    masker = Masker(["it's-a-Pa55word"])
    assert masker.mask_text("+ curl -u 'admin:it'\\''s-a-Pa55word'") == (
        "+ curl -u 'admin:" + MASK.decode() + "'"
    )


def test_bash_ansi_c_and_backslash_forms_are_masked() -> None:
    masker = Masker(["naïve pässword\n2"])
    for shown in (
        "$'na\\303\\257ve p\\303\\244ssword\\n2'",
        "$'naïve pässword\\n2'",
        "naïve\\ pässword",
    ):
        assert "ssword" not in masker.mask_text(shown), shown


# --- properties: encodings, trailing newlines, multi-line values ------------------------------


def _json(raw: bytes, ensure_ascii: bool) -> bytes:
    text = raw.decode("utf-8", "surrogateescape")
    return json.dumps(text, ensure_ascii=ensure_ascii)[1:-1].encode("utf-8", "surrogateescape")


# How a script prints a value; each independent of shared.masking's own expansion.
_ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "raw": lambda b: b,
    "base64": base64.b64encode,
    "base64 unpadded": lambda b: base64.b64encode(b).rstrip(b"="),
    "base64url": base64.urlsafe_b64encode,
    "url": lambda b: quote(b, safe="").encode(),
    "url plus": lambda b: quote_plus(b, safe="").encode(),
    "json": lambda b: _json(b, True),
    "json utf-8": lambda b: _json(b, False),
    "shlex": lambda b: shlex.quote(b.decode("utf-8", "surrogateescape")).encode(
        "utf-8", "surrogateescape"
    ),
    "bash set -x": lambda b: b"X='" + b.replace(b"'", b"'\\''") + b"'",
}

_line = st.text(
    alphabet=st.characters(exclude_characters="*\r\n", exclude_categories=["Cs"]),
    min_size=4,
    max_size=16,
).filter(lambda t: len(t.encode().strip()) >= MIN_MASKED_SECRET_LEN)
_multi_line = st.tuples(
    st.lists(_line, min_size=2, max_size=4), st.sampled_from(["\n", "\r\n"])
).map(lambda parts: parts[1].join(parts[0]))
# Filler cannot spell a secret, a mask or a shape's trigger.
_filler = st.text(alphabet=" .:,;!?\n\t", max_size=6).map(str.encode)


def _no_end_of_line(value: str | bytes) -> bytes:
    return _raw(value).rstrip(b"\r\n")


@_split_settings
@given(
    value=st.one_of(_secret, _multi_line)
    .map(_no_end_of_line)
    .filter(lambda b: len(b.strip()) >= MIN_MASKED_SECRET_LEN),
    stored_with=st.sampled_from([b"", b"\n", b"\r\n"]),
    encoder=st.sampled_from(sorted(_ENCODERS)),
    line_only=st.booleans(),
    before=_filler,
    after=_filler,
)
def test_property_encoded_value_is_masked_at_every_split_point(
    value: bytes, stored_with: bytes, encoder: str, line_only: bool, before: bytes, after: bytes
) -> None:
    """A value registered with or without a trailing newline, printed without it (whole, or
    one line of a multi-line value), in any encoding, split at any point."""
    masker = Masker([value + stored_with])
    lines = [line for line in value.splitlines() if len(line) >= MIN_MASKED_SECRET_LEN]
    shown_value = lines[-1] if line_only and len(value.splitlines()) > 1 and lines else value
    shown = _ENCODERS[encoder](shown_value)
    data = before + shown + after
    expected = masker.mask_bytes(data)
    assert shown not in expected
    assert shown_value not in expected
    assert stream_through(masker, one_byte_pieces(data)) == expected
    for i in range(len(data) + 1):
        assert stream_through(masker, [data[:i], data[i:]]) == expected


@_settings
@given(
    value=_secret.map(_raw).filter(lambda b: b"\n" not in b and b"\r" not in b),
    prefix=st.binary(max_size=2),
    stored_with=st.sampled_from([b"", b"\n"]),
    urlsafe=st.booleans(),
)
def test_property_base64_at_any_alignment_leaves_at_most_one_mixed_character_per_side(
    value: bytes, prefix: bytes, stored_with: bytes, urlsafe: bool
) -> None:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    masked = Masker([value + stored_with]).mask_bytes(encode(prefix + value))
    head, mask, tail = masked.partition(MASK)
    assert mask == MASK
    assert len(head) <= -(-len(prefix) * 8 // 6)
    assert tail == b""


# --- credential shapes -----------------------------------------------------------------------

AWS_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACDzv0Nq8d2x5yHqXv5c8mXyJZ1Q2bQ9T0v4WkqG5Yk8uAAAAJgAAAAAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
M = MASK.decode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"id={AWS_ID} ok", f"id={M} ok"),
        (f"ASIAY34FZKBOKMUTVV7A,{AWS_SECRET}\n", f"{M}\n"),
        (f"aws_secret_access_key = {AWS_SECRET}\n", f"aws_secret_access_key = {M}\n"),
        (f'"SecretAccessKey": "{AWS_SECRET}",', f'"SecretAccessKey": "{M}",'),
        (f"export AWS_SECRET_ACCESS_KEY={AWS_SECRET}", f"export AWS_SECRET_ACCESS_KEY={M}"),
        (
            f"<SecretAccessKey>{AWS_SECRET}</SecretAccessKey>",
            f"<SecretAccessKey>{M}</SecretAccessKey>",
        ),
        ("token ghp_" + "a1B2" * 9 + " end", f"token {M} end"),
        ("gho_" + "Z" * 36, M),
        ("github_pat_11ABCDEFG0" + "x_Y9" * 18, M),
        ("PRIVATE-TOKEN: glpat-Abc123_def456-ghi789", f"PRIVATE-TOKEN: {M}"),
        ("slack xoxb-1234567890-0987654321-AbCdEfGhIjKl done", f"slack {M} done"),
        (f"Authorization: Bearer {JWT}\r\n", f"Authorization: Bearer {M}\r\n"),
        (f"key:\n{PEM}\nafter", f"key:\n{M}\nafter"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n", M),
        ("-----BEGIN PGP PRIVATE KEY BLOCK-----\nxcA\n-----END PGP PRIVATE KEY BLOCK-----", M),
    ],
)
def test_credential_shapes_are_masked_without_being_registered(text: str, expected: str) -> None:
    assert Masker().mask_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n",
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n",
        "AKIA1234567890ABCDE is one short",
        "AKIAIOSFODNN7EXAMPLEX is one long",
        "ghp_tooshort and gho_",
        "monkeyJumps.over.it eyJ",
        "xoxb-short",
        "aws_secret_access_key = tooshort",
        "ASIA and AKIA as words",
    ],
)
def test_lookalikes_pass_unchanged(text: str) -> None:
    assert Masker().mask_text(text) == text
    stream = Masker().stream()
    assert stream.feed(text.encode()) + stream.flush() == text.encode()


def test_token_is_released_as_soon_as_a_byte_ends_it() -> None:
    stream = Masker().stream()
    assert stream.feed(b"token ghp_" + b"a" * 36) == b"token "
    assert stream.pending == 40
    assert stream.feed(b"\n") == MASK + b"\n"
    assert stream.pending == 0


def test_pem_block_written_line_by_line_is_held_until_its_end_line() -> None:
    stream = Masker().stream()
    lines = [line + "\n" for line in PEM.splitlines()]
    assert stream.feed(b"key: ") == b"key: "
    for line in lines[:-1]:
        assert stream.feed(line.encode()) == b""
    assert stream.feed(lines[-1].encode()) == MASK + b"\n"
    assert stream.feed(b"next\n") + stream.flush() == b"next\n"


def test_pem_block_without_its_end_is_masked_up_to_the_cap() -> None:
    header = b"-----BEGIN PRIVATE KEY-----\n"
    body = b"QUJD\n" * (2 * PEM_CAP // 5)
    data = header + body
    assert Masker().mask_bytes(data) == MASK + data[PEM_CAP:]
    stream = Masker().stream()
    out = b""
    for i in range(0, len(data), 1000):
        out += stream.feed(data[i : i + 1000])
        assert stream.pending <= PEM_CAP
    assert out + stream.flush() == MASK + data[PEM_CAP:]


def test_pem_block_cut_short_by_the_end_of_output_is_masked_to_the_end() -> None:
    stream = Masker().stream()
    assert stream.feed(PEM[:80].encode()) == b""
    assert stream.flush() == MASK


def test_shape_whose_mask_starts_inside_the_held_tail_is_judged_again() -> None:
    # The registered value makes the masker hold from inside the label; the label's shape
    # is decided, but its mask (the key after the label) would start in the held bytes.
    data = f'SecretAccessKey": "{AWS_SECRET}";'.encode()
    masker = Masker([f'y": "{AWS_SECRET}";Q'])
    expected = masker.mask_bytes(data + b"\n")
    assert expected == b'SecretAccessKey": "' + MASK + b'";\n'
    assert stream_through(masker, [data, b"\n"]) == expected


def test_registered_value_inside_a_shape_is_masked_whole() -> None:
    masker = Masker(["prefix-" + AWS_ID])
    assert masker.mask_text(f"[prefix-{AWS_ID}]") == f"[{M}]"


_B64 = string.ascii_letters + string.digits + "+/"
_ALNUM = string.ascii_letters + string.digits


def _chars(alphabet: str, size: int, most: int | None = None) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=size, max_size=size if most is None else most)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@st.composite
def _credential(draw: Any) -> tuple[str, list[str]]:
    """A credential in one of the shapes, and the parts of it that must not be shown."""
    kind = draw(st.sampled_from(["aws", "aws label", "github", "gitlab", "slack", "jwt", "pem"]))
    if kind == "aws":
        key_id = draw(st.sampled_from(["AKIA", "ASIA"])) + draw(_chars(_ALNUM.upper(), 16))
        secret = draw(_chars(_B64, 40))
        sep = draw(st.sampled_from([",", " ", ":", "\t", '", "']))
        with_secret = draw(st.booleans())
        return (key_id + sep + secret, [key_id, secret]) if with_secret else (key_id, [key_id])
    if kind == "aws label":
        secret = draw(_chars(_B64, 40))
        label = draw(
            st.sampled_from(
                [
                    "aws_secret_access_key = {}",
                    "AWS_SECRET_ACCESS_KEY={}",
                    '"SecretAccessKey": "{}"',
                    "secretAccessKey: '{}'",
                ]
            )
        )
        return label.format(secret), [secret]
    if kind == "github":
        prefix = draw(st.sampled_from(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]))
        token = prefix + draw(_chars(_ALNUM, 36, 60))
        return token, [token[4:]]
    if kind == "gitlab":
        token = "glpat-" + draw(_chars(_ALNUM + "_-", 20, 30))
        return token, [token[6:]]
    if kind == "slack":
        token = draw(st.sampled_from("abprs")) + "-" + draw(_chars(_ALNUM + "-", 10, 40))
        return "xox" + token, [token[2:]]
    if kind == "jwt":
        claims = draw(st.dictionaries(_chars(_ALNUM, 1, 8), _chars(_ALNUM, 0, 12), max_size=4))
        head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64url(json.dumps(claims).encode())
        sig = _b64url(draw(st.binary(min_size=16, max_size=64)))
        return f"{head}.{body}.{sig}", [body, sig]
    kind_name = draw(st.sampled_from(["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED "]))
    body_lines = draw(st.lists(_chars(_B64, 16, 64), min_size=1, max_size=5))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    block = eol.join(
        [
            f"-----BEGIN {kind_name}PRIVATE KEY-----",
            *body_lines,
            f"-----END {kind_name}PRIVATE KEY-----",
        ]
    )
    return block, body_lines


_separator = st.sampled_from([" ", "\n", "\t", "(", ")", "[", "]", "<", ">", ";", "|"])


@_split_settings
@given(
    credential=_credential(),
    before=_filler,
    after=_filler,
    left=_separator,
    right=_separator,
)
def test_property_credential_shape_is_masked_at_every_split_point(
    credential: tuple[str, list[str]], before: bytes, after: bytes, left: str, right: str
) -> None:
    text, hidden = credential
    data = before + (left + text + right).encode() + after
    masker = Masker()
    expected = masker.mask_bytes(data)
    for part in hidden:
        assert part.encode() not in expected, (part, expected)
    assert stream_through(masker, one_byte_pieces(data)) == expected
    for i in range(len(data) + 1):
        assert stream_through(masker, [data[:i], data[i:]]) == expected


@_settings
@given(
    secrets=st.lists(_secret, min_size=1, max_size=3),
    credentials=st.lists(_credential(), min_size=1, max_size=3),
    order=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
)
def test_property_registered_values_and_shapes_mixed_stream_equals_one_shot(
    secrets: list[str | bytes],
    credentials: list[tuple[str, list[str]]],
    order: Any,
    cuts: list[int],
) -> None:
    parts = [_raw(s) for s in secrets] + [c.encode() for c, _ in credentials]
    parts += [b" ", b"\n", b"\t"] * len(parts)
    order.shuffle(parts)
    data = b"".join(parts)
    masker = Masker(secrets)
    expected = masker.mask_bytes(data)
    assert stream_through(masker, split_at(data, cuts)) == expected
    for secret in secrets:
        assert _raw(secret) not in expected


_identifier = st.text(alphabet=string.ascii_letters + string.digits + "_", max_size=8)


@_settings
@given(
    value=st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=4, max_size=24),
    before=_identifier,
    after=_identifier,
    stored_with=st.sampled_from(["", "\n"]),
)
def test_property_an_output_name_holding_a_value_is_changed_by_the_masker(
    value: str, before: str, after: str, stored_with: str
) -> None:
    # The delegate drops a $TETHER_OUTPUT line whose name the masker would change
    # (test_output_whose_name_holds_a_secret_is_dropped): any name holding a value must be.
    name = "N" + before + value + after
    assert Masker([value + stored_with]).mask_text(name) != name


# --- a masker that keeps gaining values (the delegate's own) -------------------------------


@_settings
@given(_stream_with_secrets())
def test_property_values_added_between_scans_mask_as_if_given_at_once(
    case: tuple[list[str | bytes], bytes, list[int]],
) -> None:
    secrets, data, cuts = case
    grown = Masker()
    for secret in secrets:
        grown.mask_bytes(data)  # a scan between additions: each value lands in a new layer
        grown.add(secret)
    assert grown.mask_bytes(data) == Masker(secrets).mask_bytes(data)
    assert stream_through(grown, split_at(data, cuts)) == Masker(secrets).mask_bytes(data)


def test_a_stream_holding_back_an_older_value_masks_it_after_an_addition() -> None:
    masker = Masker(["first-secret-value"])
    stream = masker.stream()
    out = stream.feed(b"log: first-sec")
    # A new layer arrives while the older one's prefix is held back; both are searched.
    masker.add("second-secret-value")
    out += stream.feed(b"ret-value and second-secret-value\n") + stream.flush()
    assert out == b"log: " + MASK + b" and " + MASK + b"\n"


def test_adding_a_value_per_scan_does_not_rebuild_every_earlier_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The delegate's own masker gains every task's per-attempt credential and scans its
    # log lines in between: rebuilding all patterns each time cost it time quadratic in the
    # tasks it had run. Merged layers rebuild each pattern O(log n) times.
    import shared.masking as masking

    built: list[int] = []
    real_build = masking._build

    def counting(patterns: frozenset[bytes], **kw: bool) -> Any:
        built.append(len(patterns))
        return real_build(patterns, **kw)

    monkeypatch.setattr(masking, "_build", counting)
    masker = Masker()
    values = 512
    for i in range(values):
        masker.add(f"per-attempt-credential-{i:06d}")
        assert masker.mask_text(f"task {i} finished") == f"task {i} finished"
    total = masker.patterns
    assert sum(built) <= total * (values.bit_length() + 1)  # all at once each time: ~total*values/2
    # The shared layer of the shapes' triggers, then the masker's own.
    assert len(masker._current().layers) <= values.bit_length() + 2
    assert masker.mask_text("per-attempt-credential-000000 per-attempt-credential-000511") == (
        f"{MASK.decode()} {MASK.decode()}"
    )


def test_a_stream_that_saw_no_output_builds_no_automaton(monkeypatch: pytest.MonkeyPatch) -> None:
    # A quiet task (`true`) has a masker for its credential, and nothing to mask.
    import shared.masking as masking

    built: list[int] = []
    real_build = masking._build

    def counting(patterns: frozenset[bytes], **kw: bool) -> Any:
        built.append(len(patterns))
        return real_build(patterns, **kw)

    monkeypatch.setattr(masking, "_build", counting)
    masking._triggers()  # shared by every masker, built once per process: not counted
    built.clear()
    masker = Masker([SECRET])
    assert masker.stream().flush() == b""
    assert built == []
    stream = masker.stream()
    out = stream.feed(SECRET.encode()[:3])
    assert out == b""  # held back: it may be the start of the value
    assert out + stream.feed(SECRET.encode()[3:]) + stream.flush() == MASK
    assert len(built) == 1


def test_the_shapes_triggers_are_one_layer_shared_by_every_masker() -> None:
    # A task's masker builds only its own values' forms; a shape is found all the same.
    first, second = Masker([SECRET]), Masker(["another-secret-value"])
    assert first._current().layers[0] is second._current().layers[0]
    assert len(second._current().layers[1].ordered) == len(expand_value("another-secret-value"))
    key = "AKIAIOSFODNN7EXAMPLE"
    assert MASK.decode() in second.mask_text(f"key={key}")
    assert Masker().mask_text(f"key={key}") == second.mask_text(f"key={key}")


# --- values held for one attempt: discard --------------------------------------------------


@_settings
@given(_stream_with_secrets(), st.data())
def test_property_discarding_values_masks_as_a_masker_of_the_rest(
    case: tuple[list[str | bytes], bytes, list[int]], data: st.DataObject
) -> None:
    # The delegate's own masker holds each attempt's credential only while the attempt
    # runs: after discards it must mask exactly what a masker of the values left masks,
    # whatever layers the additions and scans in between built.
    secrets, out, cuts = case
    dropped = data.draw(st.lists(st.integers(0, max(0, len(secrets) - 1)), unique=True))
    masker = Masker()
    for secret in secrets:
        masker.mask_bytes(out)
        masker.add(secret)
    for i in dropped:
        if i < len(secrets):
            masker.discard(secrets[i])
    left = [s for i, s in enumerate(secrets) if i not in dropped]
    assert masker.mask_bytes(out) == Masker(left).mask_bytes(out)
    assert stream_through(masker, split_at(out, cuts)) == Masker(left).mask_bytes(out)


def test_a_value_added_twice_stays_masked_until_discarded_twice() -> None:
    masker = Masker()
    masker.add("attempt-credential-1")
    masker.add("attempt-credential-1")
    masker.add("long-lived-secret")
    masker.discard("attempt-credential-1")
    assert masker.mask_text("x attempt-credential-1 y") == "x " + MASK.decode() + " y"
    masker.discard("attempt-credential-1")
    assert masker.mask_text("x attempt-credential-1 y") == "x attempt-credential-1 y"
    assert masker.mask_text("long-lived-secret") == MASK.decode()
    masker.discard("never-added-value")  # a no-op, not an error
    assert masker.mask_text("long-lived-secret") == MASK.decode()


def test_discarding_every_attempt_value_leaves_the_masker_its_size() -> None:
    # What the delegate's process masker does per attempt: add, scan, discard. Its
    # patterns must not grow with the attempts it ran.
    masker = Masker(["process-wide-secret"])
    size = masker.patterns
    for n in range(200):
        value = f"attempt-{n:04d}-credential"
        masker.add(value)
        assert masker.mask_text(value) == MASK.decode()
        masker.discard(value)
    assert masker.patterns == size
    assert masker.mask_text("process-wide-secret attempt-0007-credential") == (
        MASK.decode() + " attempt-0007-credential"
    )

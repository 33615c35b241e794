from __future__ import annotations

import base64
import itertools
import json
import shlex
from typing import Any
from urllib.parse import quote, quote_plus

import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.limits import MIN_MASKED_SECRET_LEN
from shared.masking import MASK, Masker, MaskingProcessor, expand_value

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
_secret = st.one_of(_small, _small, _texts, _binary)
_settings = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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

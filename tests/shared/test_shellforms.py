"""Bash's own quoting, checked against the real shell: whatever bash prints a value as, the
masker must leave nothing of the value behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.masking import Masker
from shared.shellforms import bash_forms

BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")

# Every way bash prints a value, in a UTF-8 and in the C locale (bash switches locale when
# LC_ALL is assigned). The scaffolding is lower case, the values' letters are upper case, so
# a run of value characters in the output can only come from the value.
_SCRIPT = r"""
for loc in C.UTF-8 C; do
  LC_ALL=$loc
  printf '%q\n' "$V"
  printf '%s\n' "${V@Q}"
  declare -p V
  ( set -x; x="$V"; : "pre $V post"; : "$V" ) 2>&1
  printf '%q\n' "pre:$V"
done
"""

# Characters no quoting form rewrites: a run of two or more of them is a piece of the value.
_KEPT = re.compile(r"[A-Z0-9\u00c0-\u024f\u0400-\u04ff\u20ac\U0001f600]{2,}")


def bash_output(value: bytes) -> bytes:
    assert BASH is not None
    env = {b"PATH": os.environb.get(b"PATH", b"/usr/bin:/bin"), b"V": value}
    done = subprocess.run(
        [BASH, "-c", _SCRIPT], env=env, capture_output=True, check=True, timeout=30
    )
    assert done.stderr == b""
    return done.stdout


def assert_nothing_survives(value: bytes) -> None:
    out = bash_output(value)
    masked = Masker([value]).mask_bytes(out)
    assert value not in masked
    for form in bash_forms(value):
        assert form not in masked, form
    text = masked.decode("utf-8", "surrogateescape")
    for piece in _KEPT.findall(value.decode("utf-8", "surrogateescape")):
        assert piece not in text, (piece, masked)


@pytest.mark.parametrize(
    "value",
    [
        "IT'S-A-PA55WORD",
        'A B"C\\D$E`F!G&H;I|J<K>L(M)N{O}P[Q]R?S~T#U=V,W^X%Y+Z:1@2',
        "~HOME#X=~Y:~Z",
        "#START AND 'QUOTES'",
        "TAB\tAND\nNEWLINE\r\nCRLF",
        "ÉTÉ PÄSSWÖRD €100 😀 ЖУК",
        "NBSP\u00a0ZW\u200bLS\u2028NEL\u0085END",
        "CTRL\x01\x1b\x7fBYTES'",
        "TRAILING NEWLINE'S\n",
    ],
)
def test_every_form_bash_prints_is_masked(value: str) -> None:
    assert_nothing_survives(value.encode())


def test_bytes_that_are_no_utf8_are_masked_in_every_form() -> None:
    assert_nothing_survives(b"RAW\xff\xfe BYTES'\xc3(")


def test_set_x_form_of_the_issue_is_masked() -> None:
    masked = Masker(["it's-a-Pa55word"]).mask_bytes(b"+ X='it'\\''s-a-Pa55word'\n")
    assert masked == b"+ X='**************'\n"


_values = st.text(
    alphabet=st.sampled_from(
        list("ABCXYZ0189 '\"\\$`!&;|<>(){}[]?~#=:,^%+@-_/.\t\n\r\x01\x1b\x7f")
        + list("ÉÄЖ€😀\u00a0\u200b\u2028\u0085")
    ),
    min_size=4,
    max_size=24,
).filter(lambda v: len(v.strip()) >= 4)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_property_nothing_of_a_value_survives_bash_quoting(value: str) -> None:
    assert_nothing_survives(value.encode())

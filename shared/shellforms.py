"""The forms bash itself prints a value in, so that the masker knows them.

``set -x``, ``printf %q``, ``${v@Q}`` and ``declare -p`` all quote a value before printing it,
and every quoted form differs from the value wherever it has a quote, a space or a
non-printable character: ``set -x`` shows ``X='it'\\''s-a-Pa55word'``, in which the raw value
``it's-a-Pa55word`` does not occur.

Each function returns the *body* of a form: what bash writes for the value's own characters,
without the surrounding quotes. Bash quotes character by character, so the body of a value
is also what appears when the value is part of a longer quoted word (``"user:$PW"``). The
few escapes bash applies only at the start of a word (``\\#``, ``\\~``) are left out for the
same reason: the body without them is a substring of both forms.

This module mirrors bash 5's ``lib/sh/shquote.c`` and ``strtrans.c`` (checked against the
real shell in ``tests/shared/test_shellforms.py``).
"""

from __future__ import annotations

import unicodedata

__all__ = ["bash_forms"]

# Characters `printf %q` escapes with a backslash anywhere in a word.
_BACKSLASHED = frozenset(b" !\"$&'()*,;<>?[\\]^`{|}")
# `~` is escaped where bash would expand it: after `=` or `:` (and at a word's start).
_TILDE_AFTER = frozenset(b"=:")
_DOUBLE_QUOTED = frozenset(b'"\\$`')
# $'...' escapes of ansic_quote(); other non-printable bytes become three octal digits.
_ANSI_C_NAMED = {
    0x07: b"\\a",
    0x08: b"\\b",
    0x09: b"\\t",
    0x0A: b"\\n",
    0x0B: b"\\v",
    0x0C: b"\\f",
    0x0D: b"\\r",
    0x1B: b"\\E",
    0x27: b"\\'",
    0x5C: b"\\\\",
}
# Categories glibc's iswprint() refuses in a UTF-8 locale: such characters are octal too.
_UNPRINTABLE = frozenset({"Cc", "Cs", "Cn", "Zl", "Zp"})


def bash_forms(raw: bytes) -> set[bytes]:
    """Bodies of the quoted forms of ``raw``: single-quoted (``set -x``, ``${v@Q}``; and
    POSIX sh's ``set``, which closes and reopens around a double-quoted quote), ANSI-C
    (``$'...'``, in a UTF-8 and in the C locale), backslash-escaped (``%q``) and
    double-quoted (``declare -p``)."""
    forms = {
        raw.replace(b"'", b"'\\''"),
        raw.replace(b"'", b"'\"'\"'"),
        _ansi_c(raw, utf8=True),
        _ansi_c(raw, utf8=False),
        bytes(_double_quoted(raw)),
    }
    if _printable(raw):
        # Bash switches %q to $'...' as soon as one character is not printable.
        forms.add(bytes(_backslashed(raw)))
    return forms


def _backslashed(raw: bytes) -> bytearray:
    out = bytearray()
    previous = -1
    for byte in raw:
        if byte in _BACKSLASHED or (byte == 0x7E and previous in _TILDE_AFTER):
            out.append(0x5C)
        out.append(byte)
        previous = byte
    return out


def _double_quoted(raw: bytes) -> bytearray:
    out = bytearray()
    for byte in raw:
        if byte in _DOUBLE_QUOTED:
            out.append(0x5C)
        out.append(byte)
    return out


def _ansi_c(raw: bytes, *, utf8: bool) -> bytes:
    if not utf8 or raw.isascii():
        # Byte by byte (an ASCII character is its byte): from a table, as this runs for
        # every value registered with a masker, each task's credential among them.
        return b"".join([_ANSI_C_TABLE[byte] for byte in raw])
    out = bytearray()
    for char in raw.decode("utf-8", "surrogateescape"):
        code = ord(char)
        if code < 0x80:
            out += _ansi_c_byte(code)
        elif 0xDC80 <= code <= 0xDCFF:
            # A byte that is no UTF-8 character (surrogateescape keeps it as a surrogate).
            out += b"\\%03o" % (code - 0xDC00)
        elif unicodedata.category(char) in _UNPRINTABLE:
            out += b"".join(b"\\%03o" % byte for byte in char.encode("utf-8"))
        else:
            out += char.encode("utf-8")
    return bytes(out)


def _ansi_c_byte(byte: int) -> bytes:
    named = _ANSI_C_NAMED.get(byte)
    if named is not None:
        return named
    if 0x20 <= byte < 0x7F:
        return bytes((byte,))
    return b"\\%03o" % byte


_ANSI_C_TABLE = tuple(_ansi_c_byte(byte) for byte in range(256))


def _printable(raw: bytes) -> bool:
    text = raw.decode("utf-8", "surrogateescape")
    return all(
        0x20 <= ord(c) < 0x7F
        if ord(c) < 0x80
        else not 0xDC80 <= ord(c) <= 0xDCFF and unicodedata.category(c) not in _UNPRINTABLE
        for c in text
    )

"""A log line's bytes, kept exactly: as text when they are text, as base64 when they are not.

A task prints bytes. Most lines are UTF-8 text and travel (JSON) and are stored (a text
column) as such. Two kinds of bytes cannot: a sequence that is not UTF-8 (JSON strings are
Unicode), and NUL, which PostgreSQL's ``text`` refuses and many tools read as the end of a
string. A line holding either is carried whole as base64 in the line's ``data`` and stored
as bytes; what people read of it is :func:`shown`, in which each such byte is U+FFFD.

The delegate decides per line (:func:`is_text`); the manager checks again, so a line sent
as text with a NUL in it (an older delegate) is stored exactly too.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["REPLACEMENT", "from_base64", "is_text", "shown", "to_base64"]

# What a byte that is not text shows as.
REPLACEMENT = "\ufffd"


def is_text(raw: bytes) -> bool:
    """True when ``raw`` is UTF-8 with no NUL: it can travel and be stored as text."""
    if b"\x00" in raw:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def shown(raw: bytes) -> str:
    """``raw`` as text to read: invalid UTF-8 and NUL each become U+FFFD."""
    return raw.decode("utf-8", "replace").replace("\x00", REPLACEMENT)


def to_base64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def from_base64(data: str) -> bytes:
    """The bytes of standard, padded base64; ValueError for anything else."""
    try:
        return base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not base64") from None

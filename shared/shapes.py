"""Well-known credential shapes, masked whether or not anyone registered them as secrets.

A task may print a credential Tether never saw: a key id that a script fetched, a token a tool
created. These shapes are distinctive enough to mask on sight: AWS access key ids (with the
secret key when it follows on the same line) and secret keys after an
``aws_secret_access_key``-like label, GitHub, GitLab and Slack tokens, JWTs and PEM private
key blocks.

Each shape starts with a fixed *trigger* (``AKIA``, ``ghp_``, ``eyJ``, ``-----BEGIN ``...).
The masker looks for the triggers with the same Aho-Corasick scan that finds registered
values, so output without any costs nothing more; only at a trigger does a shape's own
expression run, anchored there.

Streaming: a shape's verdict at a trigger depends only on the bytes from the trigger on, and
on a bounded number of them (:attr:`Shape.reach`). Until they have all arrived (or a byte that
ends the token has), the verdict is :data:`HOLD` and the masker keeps the bytes from the
trigger on. That is what makes the masked output the same however it was split into writes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal, Protocol

__all__ = ["HOLD", "MAX_HOLD", "PEM_CAP", "SHAPES", "Shape"]


class _Hold(enum.Enum):
    HOLD = "hold"


# Not yet decidable: more bytes after the trigger may change the verdict.
HOLD: Final = _Hold.HOLD

# A private key block is masked from its BEGIN line through its END line; this far at most,
# which is more than any real key needs (an RSA 16384-bit key is some 13 KiB). Past it the
# mask stops, so that a stream never holds more than this back.
PEM_CAP = 64 * 1024

Verdict = tuple[int, int] | None | Literal[_Hold.HOLD]


class Shape(Protocol):
    """A credential shape: the fixed strings it starts with, and its verdict at one."""

    @property
    def name(self) -> str: ...
    @property
    def triggers(self) -> tuple[bytes, ...]: ...
    @property
    def reach(self) -> int: ...

    def judge(self, buf: bytes, at: int, final: bool) -> Verdict:
        """The span to mask for a trigger found at ``at``, None, or HOLD (more bytes needed).
        With ``final`` no more bytes will come, so the verdict is never HOLD."""
        ...


@dataclass(frozen=True, slots=True)
class _Token:
    """A token read by one bounded expression: where it may start, how to read it from there.

    ``pattern`` is matched at a trigger; group ``group`` is what gets masked. It reads at
    most ``reach`` bytes, and only bytes of ``alphabet`` plus the one byte that ends a run
    of them: so once such a byte has arrived, the verdict is final.
    """

    name: str
    triggers: tuple[bytes, ...]
    pattern: re.Pattern[bytes]
    alphabet: re.Pattern[bytes]
    reach: int
    group: int = 0
    # Where a run of the shape's bytes starts, counted from the trigger.
    run_from: int = 0

    def judge(self, buf: bytes, at: int, final: bool) -> Verdict:
        limit = at + self.reach
        if not final and len(buf) < limit:
            stop = self.alphabet.match(buf, at + self.run_from)
            if stop is None or stop.end() >= len(buf):
                return HOLD
        found = self.pattern.match(buf, at, limit)
        if found is None or found.start(self.group) < 0:
            return None
        return found.span(self.group)


@dataclass(frozen=True, slots=True)
class _PemBlock:
    """From a ``-----BEGIN ... PRIVATE KEY-----`` line through its END line, or ``PEM_CAP``."""

    name: str
    triggers: tuple[bytes, ...]
    header: re.Pattern[bytes]
    footer: re.Pattern[bytes]
    alphabet: re.Pattern[bytes]
    reach: int

    def judge(self, buf: bytes, at: int, final: bool) -> Verdict:
        head_limit = at + self.reach
        if not final and len(buf) < head_limit:
            stop = self.alphabet.match(buf, at)
            if stop is None or stop.end() >= len(buf):
                return HOLD
        head = self.header.match(buf, at, head_limit)
        if head is None:
            return None
        limit = at + PEM_CAP
        foot = self.footer.search(buf, head.end(), limit)
        if foot is not None:
            return at, foot.end()
        if final or len(buf) >= limit:
            return at, min(len(buf), limit)
        return HOLD


def _label_variants(*words: str) -> Iterator[bytes]:
    """The spellings of a label in the wild: snake, kebab, run together, each in lower and
    upper case and capitalised, and camelCase."""
    for sep in ("_", "-", ""):
        for case in (str.lower, str.upper, str.capitalize):
            yield sep.join(case(w) for w in words).encode()
    yield (words[0].lower() + "".join(w.capitalize() for w in words[1:])).encode()


_B64_40 = rb"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"

SHAPES: tuple[Shape, ...] = (
    _Token(
        name="AWS access key id",
        triggers=(b"AKIA", b"ASIA"),
        # A secret key right after the id on the same line (the console's CSV, `aws
        # configure` style listings) goes with it.
        pattern=re.compile(
            rb"A[KS]IA[A-Z0-9]{16}(?![A-Za-z0-9])(?:[\t ,:;=\"'|]{1,6}" + _B64_40 + rb")?"
        ),
        alphabet=re.compile(rb"[A-Za-z0-9/+=\t ,:;\"'|]*"),
        reach=20 + 6 + 40 + 1,
    ),
    _Token(
        name="AWS secret access key",
        triggers=tuple(_label_variants("secret", "access", "key")),
        pattern=re.compile(
            rb"(?i:secret[_-]?access[_-]?key)[\"'>]?[\t ]{0,4}[:=]?[\t ]{0,4}[\"']?("
            + _B64_40
            + rb")"
        ),
        alphabet=re.compile(rb"[A-Za-z0-9/+=_\-\"'>\t :]*"),
        reach=17 + 1 + 4 + 1 + 4 + 1 + 40 + 1,
        group=1,
    ),
    _Token(
        name="GitHub token",
        triggers=(b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_"),
        pattern=re.compile(rb"gh[pousr]_[A-Za-z0-9]{36,251}"),
        alphabet=re.compile(rb"[A-Za-z0-9]*"),
        reach=255 + 1,
        run_from=4,
    ),
    _Token(
        name="GitHub fine-grained token",
        triggers=(b"github_pat_",),
        pattern=re.compile(rb"github_pat_[A-Za-z0-9_]{22,244}"),
        alphabet=re.compile(rb"[A-Za-z0-9_]*"),
        reach=255 + 1,
    ),
    _Token(
        name="GitLab token",
        triggers=(b"glpat-", b"gldt-", b"glrt-", b"glptt-"),
        pattern=re.compile(rb"gl(?:pat|dt|rt|ptt)-[A-Za-z0-9_.\-]{20,300}"),
        alphabet=re.compile(rb"[A-Za-z0-9_.\-]*"),
        reach=6 + 300 + 1,
    ),
    _Token(
        name="Slack token",
        triggers=(b"xoxa-", b"xoxb-", b"xoxp-", b"xoxr-", b"xoxs-"),
        pattern=re.compile(rb"xox[abprs]-[A-Za-z0-9\-]{10,250}"),
        alphabet=re.compile(rb"[A-Za-z0-9\-]*"),
        reach=5 + 250 + 1,
    ),
    _Token(
        name="JWT",
        triggers=(b"eyJ",),
        # Header and claims are base64url JSON objects: the header starts with eyJ ('{"'),
        # the claims with e ('{'; "e30" is an empty set of claims).
        pattern=re.compile(
            rb"eyJ[A-Za-z0-9_\-]{4,2048}\.e[A-Za-z0-9_\-]{2,8192}\.[A-Za-z0-9_\-]{0,2048}"
        ),
        alphabet=re.compile(rb"[A-Za-z0-9_.\-]*"),
        reach=3 + 2048 + 1 + 1 + 8192 + 1 + 2048 + 1,
    ),
    _PemBlock(
        name="PEM private key block",
        triggers=(b"-----BEGIN ",),
        header=re.compile(rb"-----BEGIN [A-Z0-9 ]{0,32}PRIVATE KEY(?: BLOCK)?-----"),
        footer=re.compile(rb"-----END [A-Z0-9 ]{0,32}PRIVATE KEY(?: BLOCK)?-----"),
        alphabet=re.compile(rb"[A-Z0-9 \-]*"),
        reach=11 + 32 + len(b"PRIVATE KEY BLOCK-----") + 1,
    ),
)

# The most a stream holds back for a shape's sake.
MAX_HOLD = max(PEM_CAP, *(s.reach for s in SHAPES))

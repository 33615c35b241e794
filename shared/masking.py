"""Streaming secret masking for task output and for Tether's own logs.

Every value a task may see is registered with a :class:`Masker` before the process starts.
A value is expanded into the forms a script is likely to print it in (raw, base64 at each
alignment, URL-encoded, JSON-escaped, quoted the ways bash quotes, each line of a multi-line
value, and all of that again without a trailing newline), and all of them are searched for
at once with an Aho-Corasick automaton over the byte stream. The same scan finds the
triggers of well-known credential shapes (:mod:`shared.shapes`), which are masked whether or
not they were registered.

Output is bytes, not lines: a process may write a secret in any number of pieces, so each
output stream gets a :class:`MaskingStream` that holds back just the tail that could still
grow into a match. Everything else is released at once, so output without secrets flows with
no lag and comes out byte-identical. However the output is split into writes, the masked
result is the same as masking it all at once.
"""

from __future__ import annotations

import base64
import bisect
import json
import shlex
import threading
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import quote, quote_plus

import ahocorasick_rs

from shared.limits import MIN_MASKED_SECRET_LEN
from shared.shapes import HOLD, SHAPES, Shape
from shared.shellforms import bash_forms

__all__ = [
    "DFA_MAX_PATTERN_BYTES",
    "MASK",
    "Masker",
    "MaskingProcessor",
    "MaskingStream",
    "expand_value",
]

MASK = b"**************"

# Up to this many bytes of patterns the automaton is a DFA: about 3.5 times faster than the
# NFA, but it takes roughly 500 bytes of memory per pattern byte (16 KiB of patterns, some 80
# secrets with all their encodings, makes an 8 MB DFA). Past it, a contiguous NFA keeps a
# masker holding thousands of secrets to a few MB.
DFA_MAX_PATTERN_BYTES = 16 * 1024


def _base64_alignments(raw: bytes) -> Iterator[bytes]:
    """The base64 characters of ``raw`` that do not depend on its neighbours in a stream.

    Inside a larger encoded blob the value may start at any of three offsets within a
    3-byte group; the characters at the edges mix in bits of the surrounding bytes, so only
    the ones made entirely of the value's own bits are kept.

    When the value is the last thing encoded (``printf %s "$PW" | base64``), its final
    characters are made of its own bits and zero padding: that longer form, with and without
    ``=`` padding, is a pattern too, so such output leaves no character of the value behind
    (the core alone would leave e.g. ``Q==``, about 6 bits of the last byte).
    """
    n = len(raw)
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + raw)
        start = -(-8 * k // 6)
        end = 8 * (k + n) // 6
        for form in {encoded[start:end], encoded[start:], encoded[start:].rstrip(b"=")}:
            yield form
            yield form.replace(b"+", b"-").replace(b"/", b"_")


def _text_forms(raw: bytes) -> Iterator[bytes]:
    # surrogateescape keeps non-UTF-8 values usable: the escapes survive both JSON modes.
    text = raw.decode("utf-8", "surrogateescape")
    yield json.dumps(text, ensure_ascii=True)[1:-1].encode("ascii")
    yield json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8", "surrogateescape")
    yield shlex.quote(text).encode("utf-8", "surrogateescape")
    yield from bash_forms(raw)


def _single_forms(raw: bytes) -> Iterator[bytes]:
    yield raw
    yield from _base64_alignments(raw)
    yield quote(raw, safe="").encode("ascii")
    yield quote_plus(raw, safe="").encode("ascii")
    yield from _text_forms(raw)


def expand_value(value: str | bytes) -> set[bytes]:
    """Every byte pattern that masks ``value``; empty when the value is too short to mask."""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
    # A value read from a file usually ends in a newline that `$(...)`, `read` and most
    # tools drop: what is printed is the value without it, so that is the value's length.
    if len(raw.strip()) < MIN_MASKED_SECRET_LEN:
        return set()
    forms: set[bytes] = set()
    for whole in dict.fromkeys((raw, raw.rstrip(b"\r\n"), raw.strip())):
        forms.update(_single_forms(whole))
    lines = raw.splitlines()
    if len(lines) > 1:
        for line in lines:
            forms.update(_single_forms(line.strip(b"\r")))
    # Short derived forms (a 4-byte value's URL form is fine, but a 1-char line is not) would
    # mask ordinary words, so they go for the same reason short values do.
    return {form for form in forms if len(form) >= MIN_MASKED_SECRET_LEN}


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """An immutable view of the pattern set; streams take one per call, so a concurrent
    ``add`` never changes the patterns half way through a scan."""

    automaton: ahocorasick_rs.BytesAhoCorasick
    # Registered forms and shape triggers, sorted; the automaton's pattern i is ordered[i].
    ordered: tuple[bytes, ...]
    # For each pattern: whether it is a registered form, and the shapes it triggers.
    kinds: tuple[tuple[bool, tuple[Shape, ...]], ...]
    first_bytes: frozenset[int]
    # Every byte of every pattern: a tail ending in any other byte can be no prefix.
    pattern_bytes: frozenset[int]
    longest: int
    dfa: bool

    def held_tail(self, buf: bytes) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of some pattern.

        Only such a suffix can still become a match once more bytes arrive; a suffix that
        is a whole pattern (and a prefix of none longer) is already found by the scan.
        """
        size = len(buf)
        if not size or buf[-1] not in self.pattern_bytes:
            # Output read from a pipe mostly ends a line, and few patterns hold a newline.
            return 0
        ordered = self.ordered
        first = self.first_bytes
        for length in range(min(size, self.longest - 1), 0, -1):
            if buf[size - length] not in first:
                continue
            tail = buf[size - length :]
            # In sorted order, the patterns having `tail` as a proper prefix come right
            # after `tail`; if the first one does not start with it, none does.
            i = bisect.bisect_right(ordered, tail)
            if i < len(ordered) and ordered[i].startswith(tail):
                return length
        return 0


@dataclass(frozen=True, slots=True)
class _Layers:
    """The automatons of a masker, searched together: what one scan sees.

    The first layer is the credential shapes' triggers, shared by every masker (see
    :func:`_triggers`). Then one layer is the usual case (a task's masker gets its values
    before its first scan). A masker that keeps gaining values while it is used (the
    delegate's own, which every task's values join) gets new layers instead of one rebuilt
    automaton holding them all: rebuilding everything on each addition made the delegate's
    cost per task grow with the number of tasks it had run. Layers are merged like a binary
    counter (a layer at least half the size of the one before it is merged into it), so a
    pattern is rebuilt O(log n) times in all and a scan searches O(log n) automatons.
    """

    layers: tuple[_Snapshot, ...]

    def held_tail(self, buf: bytes) -> int:
        return max(layer.held_tail(buf) for layer in self.layers)

    def release(
        self, buf: bytes, covered: int | None, final: bool
    ) -> tuple[bytes, int, int | None]:
        """Mask ``buf`` and decide how much of it may leave.

        ``covered`` is how far into ``buf`` the mask last written already reaches (``None``
        when the output so far does not end in a mask); a match starting inside or right
        after it extends that mask instead of writing a second one.

        Returns the masked bytes to release, the index where release stopped, and the new
        ``covered`` for the bytes held back.

        One pass is enough: a match that will only complete with later bytes must start in
        the held tail (that is how the tail is chosen), so every match starting before
        ``cut`` lies wholly inside ``buf`` and is already known. A shape not yet decided
        moves ``cut`` back to its trigger, and so does one whose mask would start past
        ``cut``: either way it is judged again, on the same bytes, on the next call.
        """
        cut = len(buf) if final else len(buf) - self.held_tail(buf)
        spans: list[tuple[int, int]] = []
        triggered: list[tuple[int, tuple[Shape, ...]]] = []
        for layer in self.layers:
            kinds = layer.kinds
            for index, start, end in layer.automaton.find_matches_as_indexes(buf, overlapping=True):
                registered, shapes = kinds[index]
                if registered:
                    spans.append((start, end))
                if shapes:
                    triggered.append((start, shapes))
        if triggered:
            cut = _judge(buf, triggered, cut, final, spans)
        # Matches starting at or after `cut` lie in the held tail and are found again on
        # the next call, with whatever follows them.
        spans = sorted(span for span in spans if span[0] < cut)
        out: list[bytes] = []
        is_open = covered is not None
        done = covered or 0
        for start, end in spans:
            if is_open and start <= done:
                done = max(done, end)
                continue
            out.append(buf[done:start])
            out.append(MASK)
            done = end
            is_open = True
        if done < cut:
            out.append(buf[done:cut])
            return b"".join(out), cut, None
        # A match may run past `cut` into the held tail. Its mask is written now, whole,
        # and the held bytes it covers are remembered so they never leave unmasked.
        return b"".join(out), cut, (done - cut if is_open else None)


def _judge(
    buf: bytes,
    triggered: list[tuple[int, tuple[Shape, ...]]],
    cut: int,
    final: bool,
    spans: list[tuple[int, int]],
) -> int:
    """Add to ``spans`` the shapes found at triggers before ``cut``; return the new cut."""
    triggered.sort(key=lambda item: item[0])
    for at, shapes in triggered:
        if at >= cut:
            break
        for shape in shapes:
            verdict = shape.judge(buf, at, final)
            if verdict is None:
                continue
            if verdict is HOLD or verdict[0] >= cut:
                return at
            spans.append(verdict)
    return cut


_TRIGGERS: dict[bytes, tuple[Shape, ...]] = {}
for _shape in SHAPES:
    for _trigger in _shape.triggers:
        _TRIGGERS[_trigger] = (*_TRIGGERS.get(_trigger, ()), _shape)


def _build(patterns: frozenset[bytes], *, triggers: bool, dfa: bool) -> _Snapshot:
    # The shapes' triggers are in one layer only (see _triggers), so each is judged once.
    ordered = tuple(sorted(patterns | _TRIGGERS.keys() if triggers else patterns))
    implementation = (
        ahocorasick_rs.Implementation.DFA if dfa else ahocorasick_rs.Implementation.ContiguousNFA
    )
    return _Snapshot(
        automaton=ahocorasick_rs.BytesAhoCorasick(list(ordered), implementation=implementation),
        ordered=ordered,
        kinds=tuple((p in patterns, _TRIGGERS.get(p, ()) if triggers else ()) for p in ordered),
        first_bytes=frozenset(p[0] for p in ordered),
        pattern_bytes=frozenset(b"".join(ordered)),
        longest=max((len(p) for p in ordered), default=0),
        dfa=dfa,
    )


@cache
def _triggers() -> _Snapshot:
    """The credential shapes' triggers: the same for every masker, so one layer built once
    per process and shared. A task's masker then builds only its own values' forms: the
    triggers made a DFA three times as long to build as one of a credential's forms."""
    return _build(frozenset(), triggers=True, dfa=True)


class Masker:
    """The set of values to mask for one task (or one process's own logs).

    Thread-safe: values may be added while other threads mask. The patterns added since
    the last scan become a new layer on the next one (see :class:`_Layers`).
    """

    def __init__(
        self,
        values: Iterable[str | bytes] = (),
        *,
        dfa_max_pattern_bytes: int = DFA_MAX_PATTERN_BYTES,
    ) -> None:
        self._dfa_max_pattern_bytes = dfa_max_pattern_bytes
        self._lock = threading.Lock()
        self._patterns: set[bytes] = set()
        # How many added values each pattern stands for: :meth:`discard` drops a pattern
        # only when no value still registered needs it.
        self._holders: dict[bytes, int] = {}
        # Their total length, kept rather than summed on every rebuild.
        self._pattern_bytes = 0
        # Built layers, oldest (and largest) first, each with its own patterns.
        self._built: list[tuple[frozenset[bytes], _Snapshot | None]] = []
        # Added since the last scan: the next layer.
        self._fresh: set[bytes] = set()
        self._skipped: list[str] = []
        self._snapshot: _Layers | None = None
        for value in values:
            self.add(value)

    def add(self, value: str | bytes) -> bool:
        """Register ``value`` with all its encodings.

        Returns False, and registers nothing, when the value is shorter than
        ``MIN_MASKED_SECRET_LEN`` bytes: masking it would mangle ordinary output. The
        caller says so in the task log (see :attr:`skipped`).
        """
        forms = expand_value(value)
        with self._lock:
            if not forms:
                self._skipped.append(_describe_short(value))
                return False
            for form in forms:
                self._holders[form] = self._holders.get(form, 0) + 1
            new = forms - self._patterns
            if new:
                self._patterns |= new
                self._pattern_bytes += sum(len(p) for p in new)
                self._fresh |= new
                self._snapshot = None
            return True

    def discard(self, value: str | bytes) -> None:
        """Undo one :meth:`add` of ``value``: its patterns that no other registered value
        needs stop being masked. For values that live as long as one task attempt (its
        workload-identity request credential) in a masker that lives as long as the
        process: without it, the process's masker grew by every attempt it ever ran."""
        forms = expand_value(value)
        with self._lock:
            gone: set[bytes] = set()
            for form in forms:
                held = self._holders.get(form, 0)
                if held > 1:
                    self._holders[form] = held - 1
                elif held == 1:
                    del self._holders[form]
                    gone.add(form)
            if not gone:
                return
            self._patterns -= gone
            self._pattern_bytes -= sum(len(p) for p in gone)
            self._fresh -= gone
            # A built layer that held a dropped pattern is built again without it; a layer
            # left empty goes. The others keep their automatons.
            kept: list[tuple[frozenset[bytes], _Snapshot | None]] = []
            for patterns, snapshot in self._built:
                if patterns & gone:
                    patterns, snapshot = patterns - gone, None
                if patterns:
                    kept.append((patterns, snapshot))
            self._built = kept
            self._snapshot = None

    @property
    def skipped(self) -> list[str]:
        """One line per value that was too short to mask; never the value itself."""
        with self._lock:
            return list(self._skipped)

    @property
    def patterns(self) -> int:
        with self._lock:
            return len(self._patterns)

    def stream(self) -> MaskingStream:
        return MaskingStream(self)

    def mask_bytes(self, data: bytes) -> bytes:
        masked, _, _ = self._current().release(bytes(data), None, final=True)
        return masked

    def mask_text(self, text: str) -> str:
        # surrogateescape keeps bytes that came from a lossy decode; surrogatepass is the
        # fallback for lone surrogates of any other origin. Either way nothing is lost.
        try:
            data, errors = text.encode("utf-8", "surrogateescape"), "surrogateescape"
        except UnicodeEncodeError:
            data, errors = text.encode("utf-8", "surrogatepass"), "surrogatepass"
        masked = self.mask_bytes(data)
        if masked == data:
            return text
        try:
            return masked.decode("utf-8", errors)
        except UnicodeDecodeError:
            # A byte pattern cut a character in two; keep the stray bytes as escapes.
            return masked.decode("utf-8", "surrogateescape")

    def _current(self) -> _Layers:
        with self._lock:
            if self._snapshot is None:
                self._snapshot = self._layered()
            return self._snapshot

    def _layered(self) -> _Layers:
        # Called with the lock held. The DFA is chosen by the size of all patterns, not of
        # one layer: layers must not multiply the memory the limit bounds.
        dfa = self._pattern_bytes <= self._dfa_max_pattern_bytes
        built = self._built
        if self._fresh:
            built.append((frozenset(self._fresh), None))
            self._fresh = set()
            while len(built) > 1 and 2 * len(built[-1][0]) >= len(built[-2][0]):
                top, _ = built.pop()
                built[-1] = (built[-1][0] | top, None)
        layers = [_triggers()]
        for i, (patterns, snapshot) in enumerate(built):
            if snapshot is None or snapshot.dfa != dfa:
                snapshot = _build(patterns, triggers=False, dfa=dfa)
                built[i] = (patterns, snapshot)
            layers.append(snapshot)
        return _Layers(tuple(layers))


def _describe_short(value: str | bytes) -> str:
    if not value:
        return "an empty value"
    unit = "character" if isinstance(value, str) else "byte"
    plural = "" if len(value) == 1 else "s"
    stripped = len(value.strip())
    if stripped == len(value):
        return f"a value of {len(value)} {unit}{plural}"
    return f"a value of {len(value)} {unit}{plural} ({stripped} without surrounding whitespace)"


class MaskingStream:
    """Masking state for one output stream (stdout and stderr each get their own)."""

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        self._held = b""
        self._covered: int | None = None

    def feed(self, data: bytes) -> bytes:
        """Take the next bytes written; return the masked bytes that are now safe to send."""
        buf = self._held + bytes(data) if self._held else bytes(data)
        out, cut, self._covered = self._masker._current().release(buf, self._covered, False)
        self._held = buf[cut:]
        return out

    def flush(self) -> bytes:
        """End of stream: release, masked, whatever is still held back."""
        if not self._held:
            # Nothing to mask (a quiet task's streams): no automaton is built for it.
            self._covered = None
            return b""
        out, _, _ = self._masker._current().release(self._held, self._covered, final=True)
        self._held = b""
        self._covered = None
        return out

    @property
    def pending(self) -> int:
        return len(self._held)


class MaskingProcessor:
    """A structlog processor that masks every string in the event dict.

    Place it after ``format_exc_info`` (so tracebacks are strings by then) and before the
    renderer. Exceptions still present as objects are rendered with ``str`` and masked:
    their messages are where secrets most often slip into a log.
    """

    def __init__(self, masker: Masker) -> None:
        self._masker = masker

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            event_dict[key] = self._mask(value)
        return event_dict

    def _mask(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._masker.mask_text(value)
        if isinstance(value, bytes | bytearray):
            return self._masker.mask_bytes(bytes(value))
        if isinstance(value, dict):
            return {k: self._mask(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._mask(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._mask(v) for v in value)
        if isinstance(value, set | frozenset):
            return type(value)(self._mask(v) for v in value)
        if isinstance(value, BaseException):
            return self._masker.mask_text(str(value))
        return value

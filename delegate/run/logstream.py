"""A task's output, from raw bytes to masked, numbered log lines.

Bytes go through the task's masker before anything else sees them: the masker works on the
byte stream, so a secret split across two reads of the pipe is still caught, and it holds
back a tail that could be the start of a secret until the next bytes settle it. Only bytes
the masker has released ever reach a line, including the partial lines shipped early so a
progress bar without a newline still shows.

Bytes are never decoded into something else: a line that is UTF-8 text is shipped as text,
any other (invalid UTF-8, a NUL) as its exact bytes (:mod:`shared.logbytes`). A multi-byte
character cut by a pipe read still waits for its remaining bytes, so that a partial line
shipped early does not turn a text line into two pieces of bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from shared.limits import MAX_LOG_LINE_BYTES
from shared.protocol import LogLine

if TYPE_CHECKING:
    from shared.masking import Masker, MaskingStream

__all__ = ["LogSink", "LogStream", "OutputStream"]

OutputStream = Literal["stdout", "stderr"]
LogSink = Callable[[LogLine], Awaitable[None]]


@dataclass(eq=False)
class _Partial:
    masking: MaskingStream
    # Released (masked) bytes after the last newline.
    buf: bytearray = field(default_factory=bytearray)
    # When the oldest byte in ``buf`` arrived; None while ``buf`` is empty.
    since: float | None = None


class LogStream:
    """Numbers the lines of both output streams (and the delegate's own) in one sequence.

    ``sink`` is awaited for every line, in ``seq`` order. That is the backpressure path: a
    full shipper makes the sink wait, the reader stops reading the pipe, and the child
    blocks on its next write instead of the delegate buffering without bound.
    """

    def __init__(
        self,
        masker: Masker,
        sink: LogSink,
        *,
        clock: Callable[[], float] = time.time,
        flush_after: float,
    ) -> None:
        self._masker = masker
        self._sink = sink
        self._clock = clock
        self._flush_after = flush_after
        self._partials: dict[OutputStream, _Partial] = {
            "stdout": _Partial(masker.stream()),
            "stderr": _Partial(masker.stream()),
        }
        self._seq = -1
        self._closed = False
        # One writer at a time: seq order must be sink order, and a partial flush must
        # not overtake complete lines of the same stream taken out by a write in progress.
        self._lock = asyncio.Lock()

    @property
    def last_seq(self) -> int:
        """The seq of the last line handed to the sink; -1 before the first."""
        return self._seq

    @property
    def masker(self) -> Masker:
        return self._masker

    async def write(self, stream: OutputStream, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("write to a closed log stream")
        async with self._lock:
            partial = self._partials[stream]
            await self._take(stream, partial, partial.masking.feed(data))

    async def system(self, text: str) -> None:
        """A line from the delegate itself (a warning, a note); masked like the output.

        Allowed after :meth:`close`: the delegate may still have something to say about
        the task once its output has ended.
        """
        # A lone surrogate from a file name or the like must not fail the log.
        text = text.encode("utf-8", "replace").decode("utf-8")
        async with self._lock:
            for line in self._masker.mask_text(text).rstrip("\n").split("\n"):
                # "replace" again: mask_text may hand back a lone surrogate.
                await self._emit("system", line.encode("utf-8", "replace"))

    async def flush_partial(self) -> None:
        """Ship partial lines that waited ``flush_after`` seconds for their newline.

        Only released bytes are in a partial line; what the masker holds back stays with
        the masker. An incomplete UTF-8 character at the end stays for the next write.
        """
        async with self._lock:
            now = self._clock()
            for stream, partial in self._partials.items():
                if partial.since is None or now - partial.since < self._flush_after:
                    continue
                n = len(partial.buf) - _incomplete_utf8_tail(partial.buf)
                if n > 0:
                    chunk = bytes(partial.buf[:n])
                    del partial.buf[:n]
                    partial.since = now if partial.buf else None
                    await self._emit(stream, chunk)

    async def flush_periodically(self) -> None:
        """Call :meth:`flush_partial` until cancelled.

        Ticking at half of ``flush_after`` keeps a partial line's wait under about
        1.5 times ``flush_after`` without waking more often than needed.
        """
        while True:
            await asyncio.sleep(self._flush_after / 2)
            # Cancelled half way through a sink call, a line would take its seq with it
            # and leave a gap; the flush finishes first, and close() waits for it.
            await asyncio.shield(self.flush_partial())

    async def close(self) -> None:
        """End of output: release what the maskers hold, and every partial line."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            for stream, partial in self._partials.items():
                await self._take(stream, partial, partial.masking.flush())
                if partial.buf:
                    chunk = bytes(partial.buf)
                    partial.buf.clear()
                    partial.since = None
                    await self._emit(stream, chunk)

    async def _take(self, stream: OutputStream, partial: _Partial, released: bytes) -> None:
        if not released:
            return
        now = self._clock()
        *lines, rest = (bytes(partial.buf) + released).split(b"\n")
        if lines:
            partial.buf = bytearray(rest)
            partial.since = now if rest else None
        else:
            partial.buf += released
            if partial.since is None:
                partial.since = now
        for line in lines:
            await self._emit(stream, line.removesuffix(b"\r"))
        # A line with no end in sight is shipped in pieces rather than held in memory.
        while len(partial.buf) > MAX_LOG_LINE_BYTES:
            cut = _char_boundary(partial.buf, MAX_LOG_LINE_BYTES)
            chunk = bytes(partial.buf[:cut])
            del partial.buf[:cut]
            await self._emit(stream, chunk)
        if not partial.buf:
            partial.since = None

    async def _emit(self, stream: Literal["stdout", "stderr", "system"], raw: bytes) -> None:
        # A complete line may come longer than the limit in one read: shipped in pieces.
        while True:
            cut = (
                len(raw)
                if len(raw) <= MAX_LOG_LINE_BYTES
                else _char_boundary(raw, MAX_LOG_LINE_BYTES)
            )
            piece, raw = raw[:cut], raw[cut:]
            self._seq += 1
            await self._sink(LogLine.of_bytes(self._seq, stream, self._clock(), piece))
            if not raw:
                return


def _is_continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def _incomplete_utf8_tail(buf: bytearray) -> int:
    """How many bytes at the end of ``buf`` start a UTF-8 character that is not complete."""
    for back in range(1, min(4, len(buf)) + 1):
        byte = buf[-back]
        if _is_continuation(byte):
            continue
        if byte >= 0xF0:
            needed = 4
        elif byte >= 0xE0:
            needed = 3
        elif byte >= 0xC0:
            needed = 2
        else:
            needed = 1
        return back if back < needed else 0
    return 0


def _char_boundary(buf: bytes | bytearray, limit: int) -> int:
    """A cut at or below ``limit`` that does not split a UTF-8 character (``len(buf) > limit``)."""
    cut = limit
    while cut > limit - 3 and _is_continuation(buf[cut]):
        cut -= 1
    # Not valid UTF-8 around the limit: any cut is as good as another.
    return cut if cut > 0 and not _is_continuation(buf[cut]) else limit

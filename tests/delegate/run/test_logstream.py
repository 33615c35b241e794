from __future__ import annotations

import asyncio
import contextlib

import pytest

from delegate.run.logstream import LogStream
from shared.limits import MAX_LOG_LINE_BYTES
from shared.masking import MASK, Masker
from shared.protocol import LogLine

SECRET = "hunter2-very-secret"
MASKED = MASK.decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.lines: list[LogLine] = []

    async def __call__(self, line: LogLine) -> None:
        self.lines.append(line)

    def texts(self, stream: str | None = None) -> list[str]:
        return [line.text for line in self.lines if stream is None or line.stream == stream]


def make(
    secrets: tuple[str, ...] = (SECRET,), flush_after: float = 0.1
) -> tuple[LogStream, Recorder, Clock]:
    sink = Recorder()
    clock = Clock()
    return LogStream(Masker(secrets), sink, clock=clock, flush_after=flush_after), sink, clock


async def test_last_seq_is_minus_one_before_any_line() -> None:
    log, _, _ = make()

    assert log.last_seq == -1


async def test_seq_counts_from_zero_across_both_streams_and_system_lines() -> None:
    log, sink, _ = make()

    await log.write("stdout", b"a\nb\n")
    await log.write("stderr", b"c\n")
    await log.system("note")
    await log.write("stdout", b"d\n")

    assert [line.seq for line in sink.lines] == [0, 1, 2, 3, 4]
    assert [line.stream for line in sink.lines] == [
        "stdout",
        "stdout",
        "stderr",
        "system",
        "stdout",
    ]
    assert log.last_seq == 4


async def test_lines_are_split_on_newline_across_writes() -> None:
    log, sink, _ = make()

    await log.write("stdout", b"first li")
    await log.write("stdout", b"ne\nsecond\n\nfourth")
    await log.close()

    assert sink.texts() == ["first line", "second", "", "fourth"]


async def test_partial_lines_of_the_two_streams_do_not_mix() -> None:
    log, sink, _ = make()

    await log.write("stdout", b"out-")
    await log.write("stderr", b"err-")
    await log.write("stdout", b"done\n")
    await log.write("stderr", b"done\n")

    assert sink.texts("stdout") == ["out-done"]
    assert sink.texts("stderr") == ["err-done"]


async def test_carriage_return_before_newline_is_dropped() -> None:
    log, sink, _ = make()

    await log.write("stdout", b"windows\r\n")

    assert sink.texts() == ["windows"]


async def test_secret_split_across_writes_is_masked() -> None:
    log, sink, _ = make()

    await log.write("stdout", b"token=" + SECRET[:5].encode())
    await log.write("stdout", SECRET[5:].encode() + b" ok\n")

    assert sink.texts() == [f"token={MASKED} ok"]


async def test_partial_line_waits_flush_after_before_it_is_shipped() -> None:
    log, sink, clock = make(flush_after=0.1)
    await log.write("stdout", b"progress 10%")
    clock.now += 0.05

    await log.flush_partial()

    assert sink.lines == []


async def test_partial_line_is_shipped_once_it_waited_flush_after() -> None:
    log, sink, clock = make(flush_after=0.1)
    await log.write("stdout", b"progress 10%")
    clock.now += 0.1

    await log.flush_partial()

    assert sink.texts() == ["progress 10%"]


async def test_rest_of_a_flushed_partial_line_comes_as_a_line_of_its_own() -> None:
    log, sink, clock = make()
    await log.write("stdout", b"progress 10%")
    clock.now += 1
    await log.flush_partial()

    await log.write("stdout", b" 20%\n")

    assert sink.texts() == ["progress 10%", " 20%"]


async def test_partial_flush_never_releases_bytes_the_masker_holds_back() -> None:
    log, sink, clock = make()
    await log.write("stdout", b"progress " + SECRET[:6].encode())
    clock.now += 1

    await log.flush_partial()
    await log.write("stdout", SECRET[6:].encode() + b" done\n")

    assert sink.texts() == ["progress ", f"{MASKED} done"]
    assert not any(SECRET[:6] in text for text in sink.texts())


async def test_close_releases_held_bytes_and_the_partial_line() -> None:
    log, sink, _ = make()
    # Could still be the start of the secret, so the masker holds it back until the end.
    await log.write("stdout", b"last words " + SECRET[:4].encode())
    await log.write("stderr", b"no newline")

    await log.close()

    assert sink.texts() == ["last words " + SECRET[:4], "no newline"]


async def test_write_after_close_raises() -> None:
    log, _, _ = make()
    await log.close()

    with pytest.raises(RuntimeError):
        await log.write("stdout", b"late\n")


async def test_system_line_after_close_is_accepted() -> None:
    log, sink, _ = make()
    await log.write("stdout", b"tail")
    await log.close()

    await log.system("warning")

    assert sink.texts() == ["tail", "warning"]


async def test_system_lines_are_masked_and_split_on_newline() -> None:
    log, sink, _ = make()

    await log.system(f"could not use {SECRET}\nsecond line\n")

    assert sink.texts("system") == [f"could not use {MASKED}", "second line"]


async def test_long_line_is_split_at_max_log_line_bytes() -> None:
    log, sink, _ = make()

    await log.write("stdout", b"x" * (2 * MAX_LOG_LINE_BYTES + 10) + b"\n")

    assert [len(text) for text in sink.texts()] == [MAX_LOG_LINE_BYTES, MAX_LOG_LINE_BYTES, 10]


async def test_line_without_end_is_shipped_in_pieces_as_it_grows() -> None:
    log, sink, _ = make()

    await log.write("stdout", b"y" * (MAX_LOG_LINE_BYTES + 1))

    assert sink.texts() == ["y" * MAX_LOG_LINE_BYTES]


async def test_long_line_split_does_not_cut_a_character() -> None:
    log, sink, _ = make()
    text = "a" + "é" * MAX_LOG_LINE_BYTES  # 2 bytes each: the limit falls inside one

    await log.write("stdout", text.encode() + b"\n")

    assert "".join(sink.texts()) == text
    assert all(len(t.encode()) <= MAX_LOG_LINE_BYTES for t in sink.texts())


async def test_multibyte_character_split_across_writes_is_not_corrupted() -> None:
    log, sink, _ = make()
    euro = "€".encode()

    await log.write("stdout", b"price: 5" + euro[:1])
    await log.write("stdout", euro[1:2])
    await log.write("stdout", euro[2:] + b"\n")

    assert sink.texts() == ["price: 5€"]


async def test_partial_flush_keeps_an_incomplete_character_for_the_next_write() -> None:
    log, sink, clock = make()
    euro = "€".encode()
    await log.write("stdout", b"5" + euro[:2])
    clock.now += 1

    await log.flush_partial()
    await log.write("stdout", euro[2:] + b"\n")

    assert sink.texts() == ["5", "€"]


async def test_invalid_utf8_is_shipped_as_its_exact_bytes() -> None:
    log, sink, _ = make()

    await log.write("stdout", b"bad \xff byte\nfine\n")

    assert [line.raw for line in sink.lines] == [b"bad \xff byte", b"fine"]
    assert (sink.lines[0].text, sink.lines[0].data) == ("", "YmFkIP8gYnl0ZQ==")
    # A line of text goes as text, as it always did.
    assert (sink.lines[1].text, sink.lines[1].data) == ("fine", None)


async def test_a_nul_byte_makes_a_line_bytes_and_is_kept() -> None:
    log, sink, _ = make()

    await log.write("stdout", b"a\x00b\xffc\n")

    assert [line.raw for line in sink.lines] == [b"a\x00b\xffc"]
    assert sink.lines[0].data is not None


async def test_a_secret_between_nul_and_invalid_bytes_is_masked_and_the_bytes_kept() -> None:
    log, sink, _ = make()
    secret = SECRET.encode()

    # Split across writes too, right at the odd bytes.
    await log.write("stdout", b"\x00" + secret[:5])
    await log.write("stdout", secret[5:] + b"\xff\xfe|" + secret + b"\x00\n")
    await log.write("stderr", b"\xc3" + secret + b"\xc3\n")

    assert [line.raw for line in sink.lines] == [
        b"\x00" + MASK + b"\xff\xfe|" + MASK + b"\x00",
        b"\xc3" + MASK + b"\xc3",
    ]
    assert all(secret not in line.raw for line in sink.lines)


async def test_a_long_line_of_bytes_is_split_at_max_log_line_bytes_and_kept_whole() -> None:
    log, sink, _ = make()
    raw = bytes(range(256)) * (MAX_LOG_LINE_BYTES // 100)

    await log.write("stdout", raw.replace(b"\n", b"") + b"\n")

    assert b"".join(line.raw for line in sink.lines) == raw.replace(b"\n", b"")
    assert all(len(line.raw) <= MAX_LOG_LINE_BYTES for line in sink.lines)


async def test_lines_carry_the_clock_time_of_emission() -> None:
    log, sink, clock = make()
    clock.now = 1234.5

    await log.write("stdout", b"x\n")

    assert sink.lines[0].ts == 1234.5


async def test_write_waits_for_the_sink() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def slow_sink(line: LogLine) -> None:
        entered.set()
        await release.wait()

    log = LogStream(Masker(), slow_sink, flush_after=0.1)
    write = asyncio.create_task(log.write("stdout", b"line\n"))
    await asyncio.wait_for(entered.wait(), 5)

    assert not write.done()
    release.set()
    await asyncio.wait_for(write, 5)


async def test_flush_periodically_ships_a_stalled_partial_line() -> None:
    shipped = asyncio.Event()

    async def sink(line: LogLine) -> None:
        if line.text == "50%":
            shipped.set()

    log = LogStream(Masker(), sink, flush_after=0.02)
    await log.write("stdout", b"50%")
    flusher = asyncio.create_task(log.flush_periodically())
    try:
        await asyncio.wait_for(shipped.wait(), 5)
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher

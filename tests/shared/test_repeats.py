from __future__ import annotations

from typing import Any

from shared.repeats import RepeatedErrors, Repeats, Report


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Logger:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def test_the_first_occurrence_is_full_and_the_rest_only_count_within_the_interval() -> None:
    r = Repeats(60.0)

    assert r.note("db down", 0.0) == Report(True, 0, 0.0)
    assert [r.note("db down", t) for t in (1.0, 30.0, 59.0)] == [None, None, None]
    # At the interval: one line with the count (this one included), and the window restarts.
    assert r.note("db down", 60.0) == Report(False, 4, 60.0)
    assert r.note("db down", 61.0) is None


def test_different_errors_are_judged_apart() -> None:
    r = Repeats(60.0)

    assert r.note("a", 0.0) == Report(True, 0, 0.0)
    assert r.note("b", 1.0) == Report(True, 0, 0.0)
    assert r.note("a", 2.0) is None


def test_an_error_back_after_a_quiet_interval_is_full_again_and_brings_the_lost_count() -> None:
    r = Repeats(60.0)
    r.note("db down", 0.0)
    r.note("db down", 10.0)
    r.note("db down", 20.0)

    # Quiet from 20 to 500: the two counted ones are told now, not lost.
    assert r.note("db down", 500.0) == Report(True, 2, 500.0)
    assert r.note("db down", 501.0) is None


def test_the_kinds_remembered_are_bounded() -> None:
    r = Repeats(60.0, max_kinds=3)
    for i, key in enumerate("abcd"):
        r.note(key, float(i))

    # "a" was forgotten to make room for "d": it is new again.
    assert r.note("a", 5.0) == Report(True, 0, 0.0)
    assert r.note("d", 5.0) is None


def test_repeated_errors_log_one_traceback_then_a_count() -> None:
    logger, clock = Logger(), Clock()
    errors = RepeatedErrors(logger, "store error", interval=60.0, clock=clock)
    failure = ConnectionError("connection refused\nwith a second line")

    for _ in range(100):
        errors.error(failure, path="/api/v1/tasks")
        clock.now += 1.0

    assert logger.lines[0] == (
        "store error",
        {
            "error": "ConnectionError: connection refused",
            "path": "/api/v1/tasks",
            "exc_info": failure,
        },
    )
    # 100 occurrences over 100 s: the first in full, then one count at 60 s.
    assert logger.lines[1:] == [
        (
            "store error: repeated 60 times in 60 s",
            {"error": "ConnectionError: connection refused", "repeated": 60},
        )
    ]


def test_without_traceback_only_the_line_is_logged() -> None:
    logger = Logger()
    errors = RepeatedErrors(logger, "store refused a value", clock=Clock())

    errors.error(ValueError("bad"), traceback=False)

    assert logger.lines == [("store refused a value", {"error": "ValueError: bad"})]

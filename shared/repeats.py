"""An error that keeps happening is logged once in full, then as a count.

A database that is away fails every request and every sweep the same way: a traceback each is
hundreds of lines a minute that say one thing, and bury whatever else happened. Here the
first occurrence of an error is logged in full; the same error again within ``interval``
is only counted, and the count is logged as one line ("... repeated N times") at its first
occurrence after the interval. An error that stops has its last count logged with its next
occurrence, however much later (a count is delayed, never lost), and as that occurrence comes
after a quiet interval, it is logged in full again.

"The same error" is its type and the first line of its message, which for the errors this
is used for (a store failure, a failed pass of a loop) names the failure, not the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["RepeatedErrors", "Repeats", "Report"]


@dataclass(frozen=True, slots=True)
class Report:
    """What to log of one occurrence.

    ``full``: log it in full; ``repeated`` is then how many earlier occurrences were never
    logged (the end of the last streak). Not ``full``: log one line saying it happened
    ``repeated`` times (this one included) in the last ``seconds``.
    """

    full: bool
    repeated: int
    seconds: float


@dataclass(slots=True)
class _Seen:
    reported: float  # when a line about it was last logged
    last: float  # when it last happened
    count: int  # occurrences since that line, not logged


class Repeats:
    """The decision alone: which occurrences of which error to log, on an injected clock."""

    def __init__(self, interval: float, *, max_kinds: int = 256) -> None:
        self.interval = interval
        self._max_kinds = max_kinds
        self._seen: dict[str, _Seen] = {}

    def note(self, key: str, now: float) -> Report | None:
        """One occurrence of ``key`` at ``now``; None when it is only counted."""
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= self._max_kinds:
                # Bounded whatever the errors say: the kind heard from longest ago goes.
                del self._seen[min(self._seen, key=lambda k: self._seen[k].last)]
            self._seen[key] = _Seen(now, now, 0)
            return Report(True, 0, 0.0)
        quiet = now - seen.last >= self.interval
        seen.last = now
        if quiet:
            report = Report(True, seen.count, now - seen.reported)
        elif now - seen.reported >= self.interval:
            report = Report(False, seen.count + 1, now - seen.reported)
        else:
            seen.count += 1
            return None
        seen.reported = now
        seen.count = 0
        return report


def describe(exc: BaseException) -> str:
    """An error as one line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class RepeatedErrors:
    """Logs ``event`` for each error through ``logger``, as :class:`Repeats` decides."""

    def __init__(
        self,
        logger: Any,
        event: str,
        *,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._event = event
        self._clock = clock
        self.repeats = Repeats(interval)

    def error(self, exc: BaseException, *, traceback: bool = True, **fields: Any) -> None:
        """Log ``exc`` (with its traceback if ``traceback``) the first time, else count it."""
        key = describe(exc)
        report = self.repeats.note(key, self._clock())
        if report is None:
            return
        if report.full:
            if report.repeated:
                fields["unlogged_before"] = report.repeated
            if traceback:
                fields["exc_info"] = exc
            self._logger.error(self._event, error=key, **fields)
            return
        self._logger.error(
            f"{self._event}: repeated {report.repeated} times in {report.seconds:.0f} s",
            error=key,
            repeated=report.repeated,
        )

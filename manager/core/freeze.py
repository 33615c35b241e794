"""Freeze windows: when each is active, and which places it covers. Plain code fed the time.

A window is one-off (an absolute start and end) or recurring: a cron expression or an RFC
5545 RRULE, read in an IANA time zone, each occurrence lasting ``duration_s`` seconds.

Occurrences are computed in the zone's local wall time and then placed on the time line
with :mod:`zoneinfo`'s rule for local times that a DST change makes ambiguous or skips
(``fold=0``): a start in the repeated autumn hour is its first pass; a start in the skipped
spring hour happens as if the clock had not moved yet (02:30 in Berlin on the spring change
is 01:30 UTC, the instant 03:30 CEST). The duration is elapsed time, so a window of 8 hours
over a change still lasts 8 hours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]
from dateutil.rrule import rrulestr

from manager.schemas.grants import EnvType

__all__ = [
    "FreezeScope",
    "FreezeWindow",
    "Schedule",
    "ScheduleError",
    "active_end",
    "check_schedule",
    "freezing",
    "latest_start",
]

# Occurrences looked at around the present before giving up (a cron every minute over the
# margin below is 240); enough for any schedule whose starts are a minute or more apart.
_MAX_STEPS = 1000
# Wider than any UTC offset change (DST moves clocks by an hour, 30 minutes on Lord Howe):
# an occurrence this far before the local present is certainly before the present.
_MARGIN = timedelta(hours=2)


class ScheduleError(ValueError):
    """A schedule that cannot be evaluated (a bad cron, RRULE or time zone)."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """One-off: ``start`` and ``end`` (epoch seconds). Recurring: ``cron`` or ``rrule``,
    ``timezone``, ``duration_s``; an RRULE's DTSTART is ``dtstart`` (local ISO time,
    default: 2000-01-01T00:00). ``not_before``/``until`` bound the occurrences' starts."""

    start: float | None = None
    end: float | None = None
    cron: str | None = None
    rrule: str | None = None
    timezone: str = "UTC"
    duration_s: float = 0.0
    dtstart: str | None = None
    not_before: float | None = None
    until: float | None = None


@dataclass(frozen=True, slots=True)
class FreezeScope:
    """Empty lists match everything; a window with all three empty freezes every place,
    tasks outside any application included."""

    apps: tuple[str, ...] = ()
    envs: tuple[str, ...] = ()
    env_types: tuple[EnvType, ...] = ()

    def covers(self, app_id: str | None, env_id: str | None, env_type: EnvType | None) -> bool:
        if self.apps and app_id not in self.apps:
            return False
        if self.envs and env_id not in self.envs:
            return False
        return not (self.env_types and env_type not in self.env_types)


@dataclass(frozen=True, slots=True)
class FreezeWindow:
    id: str
    name: str
    schedule: Schedule
    scope: FreezeScope = field(default_factory=FreezeScope)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"unknown time zone {name!r}") from exc


def _previous(s: Schedule) -> Callable[[datetime], datetime | None]:
    """The occurrence strictly before a local naive time, in local naive time."""
    if s.cron is not None:
        expr = s.cron
        if not croniter.is_valid(expr):
            raise ScheduleError(f"not a cron expression: {expr!r}")

        def prev_cron(t: datetime) -> datetime | None:
            found = croniter(expr, t).get_prev(datetime)
            return found if isinstance(found, datetime) else None

        return prev_cron
    if s.rrule is not None:
        try:
            start = datetime.fromisoformat(s.dtstart) if s.dtstart else datetime(2000, 1, 1)
            rule = rrulestr(s.rrule, dtstart=start.replace(tzinfo=None), cache=False)
        except (ValueError, TypeError) as exc:
            raise ScheduleError(f"not an RRULE: {exc}") from exc

        def prev_rule(t: datetime) -> datetime | None:
            found = rule.before(t, inc=False)
            return found if isinstance(found, datetime) else None

        return prev_rule
    raise ScheduleError("a recurring window needs cron or rrule")


def check_schedule(s: Schedule) -> None:
    """ScheduleError naming what is wrong; evaluating once proves the rule can be read."""
    if s.cron is None and s.rrule is None:
        if s.start is None or s.end is None:
            raise ScheduleError("give start and end, or cron or rrule with duration_s")
        if s.end <= s.start:
            raise ScheduleError("end must be after start")
        return
    if s.cron is not None and s.rrule is not None:
        raise ScheduleError("give cron or rrule, not both")
    if s.duration_s <= 0:
        raise ScheduleError("a recurring window needs duration_s > 0")
    _zone(s.timezone)
    active_end(s, 0.0)


def _epoch(local: datetime, zone: ZoneInfo) -> float:
    return local.replace(tzinfo=zone, fold=0).timestamp()


def latest_start(s: Schedule, now: float) -> float | None:
    """The start (epoch) of the latest occurrence at or before ``now``; None if none."""
    zone = _zone(s.timezone)
    previous = _previous(s)
    if s.until is not None:
        now = min(now, s.until)  # no occurrence starts after it
    local_now = datetime.fromtimestamp(now, UTC).astimezone(zone).replace(tzinfo=None)
    # Starting ahead of the local present: around a DST change an occurrence whose local
    # time is later than the present's may still be earlier on the time line.
    cursor: datetime | None = local_now + _MARGIN + timedelta(seconds=1)
    best: float | None = None
    for _ in range(_MAX_STEPS):
        assert cursor is not None
        found = previous(cursor)
        if found is None:
            break
        epoch = _epoch(found, zone)
        if epoch <= now and (s.not_before is None or epoch >= s.not_before):
            best = epoch if best is None else max(best, epoch)
        if found < local_now - _MARGIN or (s.not_before is not None and epoch < s.not_before):
            break  # everything before is earlier still
        cursor = found
    return best


def active_end(s: Schedule, now: float) -> float | None:
    """When the occurrence active at ``now`` ends (epoch); None when none is active. With a
    fixed duration the latest start has the latest end, so it alone decides."""
    if s.cron is None and s.rrule is None:
        if s.start is None or s.end is None:
            return None
        return s.end if s.start <= now < s.end else None
    start = latest_start(s, now)
    if start is None:
        return None
    end = start + s.duration_s
    return end if now < end else None


def freezing(
    windows: Iterable[FreezeWindow],
    now: float,
    *,
    app_id: str | None,
    env_id: str | None,
    env_type: EnvType | None,
) -> Sequence[tuple[FreezeWindow, float]]:
    """The windows active at ``now`` that cover the place, each with when it ends, the
    one ending last first. A window whose schedule cannot be read is skipped here (it was
    checked when made: :func:`check_schedule`)."""
    out: list[tuple[FreezeWindow, float]] = []
    for w in windows:
        if not w.scope.covers(app_id, env_id, env_type):
            continue
        try:
            end = active_end(w.schedule, now)
        except ScheduleError:
            continue
        if end is not None:
            out.append((w, end))
    out.sort(key=lambda pair: (-pair[1], pair[0].name))
    return out

"""Freeze windows, fed the time: one-off, cron and RRULE, across DST changes in Berlin and
New York, and which places a window covers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manager.core.freeze import (
    FreezeScope,
    FreezeWindow,
    Schedule,
    ScheduleError,
    active_end,
    check_schedule,
    freezing,
    latest_start,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def at(zone: ZoneInfo, y: int, mo: int, d: int, h: int, mi: int, *, fold: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=zone, fold=fold).timestamp()


HOUR = 3600.0

# (schedule, now, expected end or None)
CASES = [
    # one-off: start inclusive, end exclusive
    (Schedule(start=100.0, end=200.0), 100.0, 200.0),
    (Schedule(start=100.0, end=200.0), 199.9, 200.0),
    (Schedule(start=100.0, end=200.0), 200.0, None),
    (Schedule(start=100.0, end=200.0), 99.0, None),
    # a nightly 22:00-06:00 Berlin freeze over the spring change (29 March 2026, 02:00 ->
    # 03:00): 8 elapsed hours, so it ends at 07:00 local time that morning
    (
        Schedule(cron="0 22 * * *", timezone="Europe/Berlin", duration_s=8 * HOUR),
        at(BERLIN, 2026, 3, 29, 6, 30),
        at(BERLIN, 2026, 3, 29, 7, 0),
    ),
    (
        Schedule(cron="0 22 * * *", timezone="Europe/Berlin", duration_s=8 * HOUR),
        at(BERLIN, 2026, 3, 29, 7, 0),
        None,
    ),
    # the same over the autumn change (25 October 2026, 03:00 -> 02:00): ends at 05:00
    (
        Schedule(cron="0 22 * * *", timezone="Europe/Berlin", duration_s=8 * HOUR),
        at(BERLIN, 2026, 10, 25, 4, 59),
        at(BERLIN, 2026, 10, 25, 5, 0),
    ),
    (
        Schedule(cron="0 22 * * *", timezone="Europe/Berlin", duration_s=8 * HOUR),
        at(BERLIN, 2026, 10, 25, 5, 0),
        None,
    ),
    # a start in the skipped hour (02:30 on 29 March) happens at 03:30 CEST
    (
        Schedule(cron="30 2 * * *", timezone="Europe/Berlin", duration_s=HOUR),
        at(BERLIN, 2026, 3, 29, 3, 29),
        None,
    ),
    (
        Schedule(cron="30 2 * * *", timezone="Europe/Berlin", duration_s=HOUR),
        at(BERLIN, 2026, 3, 29, 3, 30),
        at(BERLIN, 2026, 3, 29, 4, 30),
    ),
    # a start in the repeated hour (01:30 on 1 November in New York) is its first pass
    (
        Schedule(cron="30 1 * * *", timezone="America/New_York", duration_s=HOUR / 2),
        at(NEW_YORK, 2026, 11, 1, 1, 45, fold=0),
        at(NEW_YORK, 2026, 11, 1, 2, 0, fold=0) - HOUR,
    ),
    (
        Schedule(cron="30 1 * * *", timezone="America/New_York", duration_s=HOUR / 2),
        at(NEW_YORK, 2026, 11, 1, 1, 45, fold=1),
        None,
    ),
    # weekends in New York by RRULE, Friday 18:00 for 63 hours, over the spring change
    # (8 March 2026): ends Monday 10:00 EDT, an hour later on the wall clock
    (
        Schedule(
            rrule="FREQ=WEEKLY;BYDAY=FR",
            dtstart="2026-01-02T18:00:00",
            timezone="America/New_York",
            duration_s=63 * HOUR,
        ),
        at(NEW_YORK, 2026, 3, 9, 9, 30),
        at(NEW_YORK, 2026, 3, 9, 10, 0),
    ),
    (
        Schedule(
            rrule="FREQ=WEEKLY;BYDAY=FR",
            dtstart="2026-01-02T18:00:00",
            timezone="America/New_York",
            duration_s=63 * HOUR,
        ),
        at(NEW_YORK, 2026, 3, 6, 17, 59),
        None,
    ),
    # bounded by until: the occurrence after it never starts
    (
        Schedule(
            cron="0 12 * * *",
            timezone="UTC",
            duration_s=HOUR,
            until=datetime(2026, 1, 1, 13, tzinfo=UTC).timestamp(),
        ),
        datetime(2026, 1, 2, 12, 30, tzinfo=UTC).timestamp(),
        None,
    ),
]


@pytest.mark.parametrize(("schedule", "now", "end"), CASES)
def test_active_end(schedule: Schedule, now: float, end: float | None) -> None:
    assert active_end(schedule, now) == end


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (Schedule(), "give start and end"),
        (Schedule(start=2.0, end=1.0), "end must be after start"),
        (Schedule(cron="61 * * * *", duration_s=60), "not a cron expression"),
        (Schedule(cron="0 * * * *", duration_s=0), "duration_s > 0"),
        (Schedule(cron="0 * * * *", duration_s=60, timezone="Mars/Base"), "unknown time zone"),
        (Schedule(rrule="FREQ=SOMETIMES", duration_s=60), "not an RRULE"),
        (Schedule(cron="0 * * * *", rrule="FREQ=DAILY", duration_s=60), "not both"),
    ],
)
def test_bad_schedules_are_named(schedule: Schedule, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        check_schedule(schedule)


def test_scope_and_order() -> None:
    prod = FreezeWindow(
        "f1", "prod", Schedule(start=0, end=100), FreezeScope(env_types=("production",))
    )
    app = FreezeWindow("f2", "app", Schedule(start=0, end=50), FreezeScope(apps=("app_a",)))
    everything = FreezeWindow("f3", "all", Schedule(start=0, end=10))
    got = freezing([app, prod, everything], 5, app_id="app_a", env_id="e", env_type="production")
    assert [(w.name, end) for w, end in got] == [("prod", 100), ("app", 50), ("all", 10)]
    outside = freezing([app, prod, everything], 5, app_id=None, env_id=None, env_type=None)
    assert [w.name for w, _ in outside] == ["all"]
    other = freezing([app, prod], 5, app_id="app_b", env_id="e", env_type="non_production")
    assert other == []


ZONES = ["Europe/Berlin", "America/New_York", "UTC", "Australia/Lord_Howe"]


@settings(max_examples=150, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    duration=st.integers(60, 30 * 3600),
    now=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1)).map(
        lambda d: d.replace(tzinfo=UTC).timestamp()
    ),
)
def test_daily_cron_matches_a_brute_force_walk(
    zone: str, hour: int, minute: int, duration: int, now: float
) -> None:
    """The latest start is the latest day's hh:mm (placed with fold=0) not after now."""
    z = ZoneInfo(zone)
    s = Schedule(cron=f"{minute} {hour} * * *", timezone=zone, duration_s=duration)
    local_day = datetime.fromtimestamp(now, z).date()
    starts = []
    for back in range(-1, 4):
        d = local_day - timedelta(days=back)
        starts.append(datetime(d.year, d.month, d.day, hour, minute, tzinfo=z).timestamp())
    expected = max(t for t in starts if t <= now)
    assert latest_start(s, now) == expected
    end = active_end(s, now)
    assert end == (expected + duration if now < expected + duration else None)

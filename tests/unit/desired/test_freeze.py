"""The cron matcher and freeze windows: fields, ranges, steps, names, day-of-week, DST."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import pytest

from reconciler.desired.cron import CronError, parse_cron
from reconciler.desired.freeze import FreezeWindow, freeze_hold, parse_duration

BERLIN = ZoneInfo("Europe/Berlin")


def window(kind: Literal["deny", "allow"] = "deny", schedule: str = "0 22 * * *",
           duration: str = "2h", timezone: str = "UTC") -> FreezeWindow:  # fmt: skip
    return FreezeWindow(kind=kind, schedule=schedule, duration=duration, timezone=timezone)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> datetime:  # fmt: skip
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_ranges_steps_lists_and_names() -> None:
    cron = parse_cron("*/15 9-17/4 1,15 jan-mar mon-fri")
    assert cron.minutes == {0, 15, 30, 45}
    assert cron.hours == {9, 13, 17}
    assert cron.days == {1, 15} and cron.months == {1, 2, 3}
    assert cron.weekdays == {1, 2, 3, 4, 5}
    assert parse_cron("5/20 * * * *").minutes == {5, 25, 45}
    # 7 is Sunday as well as 0.
    assert parse_cron("0 0 * * 5-7").weekdays == {5, 6, 0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 0 * *", "4 field(s), expected 5"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("0 0 0 * *", "day of month: 0 is outside 1-31"),
        ("0 0 * 13 *", "month: 13 is outside 1-12"),
        ("0 0 * * 8", "day of week: 8 is outside 0-7"),
        ("*/0 * * * *", "minute: step '0' is not a positive number"),
        ("10-5 * * * *", "minute: range '10-5' runs backwards"),
        ("0 0 * * funday", "day of week: 'funday' is not a number or a name"),
        ("0 0 1,,2 * *", "day of month: empty item"),
        ("0 0 31 4,6,9,11 *", "it never matches"),
    ],
)
def test_bad_schedules_name_the_field(text: str, message: str) -> None:
    with pytest.raises(CronError, match="^" + re.escape(message)):
        parse_cron(text)


def test_day_of_month_and_day_of_week_are_or_when_both_restricted() -> None:
    both = parse_cron("0 0 13 * fri")
    assert both.matches_day(date(2026, 3, 13))  # the 13th (a Friday as it happens)
    assert both.matches_day(date(2026, 3, 6))  # a Friday, not the 13th
    assert both.matches_day(date(2026, 4, 13))  # the 13th, a Monday
    assert not both.matches_day(date(2026, 4, 14))
    only_week = parse_cron("0 0 * * fri")
    assert only_week.matches_day(date(2026, 3, 6)) and not only_week.matches_day(date(2026, 4, 13))
    # A day-of-month step starts with '*': the day of week alone does not widen it.
    stepped = parse_cron("0 0 */2 * mon")
    assert stepped.matches_day(date(2026, 3, 9))  # an odd day and a Monday
    assert not stepped.matches_day(date(2026, 3, 2))  # a Monday, an even day
    assert not stepped.matches_day(date(2026, 3, 5))  # an odd day, a Thursday


def test_durations() -> None:
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("1d") == timedelta(days=1)
    for bad in ("", "0m", "8d", "2 h", "h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_a_deny_window_holds_until_it_ends_and_not_before_or_after() -> None:
    w = window(schedule="0 22 * * *", duration="2h")
    assert freeze_hold([w], utc(2026, 3, 2, 21, 59)) is None
    hold = freeze_hold([w], utc(2026, 3, 2, 22, 0))
    assert hold is not None and hold.until == utc(2026, 3, 3, 0, 0)
    assert 'deny window "0 22 * * *" for 2h (UTC)' in hold.reason
    hold = freeze_hold([w], utc(2026, 3, 2, 23, 59, 59))
    assert hold is not None and hold.until == utc(2026, 3, 3, 0, 0)
    assert freeze_hold([w], utc(2026, 3, 3, 0, 0)) is None


def test_windows_that_overlap_or_follow_are_followed_to_the_first_free_moment() -> None:
    evening = window(schedule="0 22 * * *", duration="2h")
    night = window(schedule="0 0 * * *", duration="3h")
    hold = freeze_hold([evening, night], utc(2026, 3, 2, 23, 0))
    assert hold is not None and hold.until == utc(2026, 3, 3, 3, 0)


def test_outside_every_allow_window_holds_until_the_next_one_opens() -> None:
    office = window(kind="allow", schedule="0 9 * * mon-fri", duration="8h",
                    timezone="Europe/Berlin")  # fmt: skip
    # Saturday 2026-03-07, noon in Berlin (11:00 UTC): next opening Monday 09:00 CET (08:00Z).
    hold = freeze_hold([office], utc(2026, 3, 7, 11, 0))
    assert hold is not None and hold.until == utc(2026, 3, 9, 8, 0)
    assert "outside every allow window" in hold.reason
    assert freeze_hold([office], utc(2026, 3, 9, 8, 0)) is None
    # A deny window inside the allowed hours wins; then the allow window is still open.
    lunch = window(schedule="0 12 * * *", duration="1h", timezone="Europe/Berlin")
    hold = freeze_hold([office, lunch], utc(2026, 3, 9, 11, 30))
    assert hold is not None and hold.until == utc(2026, 3, 9, 12, 0)


def test_dst_spring_forward_a_skipped_start_opens_an_hour_later_new_time() -> None:
    # Europe/Berlin jumps from 02:00 CET to 03:00 CEST on 2026-03-29 (01:00 UTC).
    w = window(schedule="30 2 * * *", duration="1h", timezone="Europe/Berlin")
    starts = w.starts(utc(2026, 3, 28, 0, 0), utc(2026, 3, 30, 23, 0))
    assert starts == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 30),  # 02:30 does not exist: 03:30 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    # The duration is elapsed time: 23 hours of wall clock become 23 real hours on that day.
    long = window(schedule="0 0 29 3 *", duration="1d", timezone="Europe/Berlin")
    hold = freeze_hold([long], utc(2026, 3, 29, 12, 0))
    assert hold is not None and hold.until == utc(2026, 3, 29, 23, 0)
    assert hold.until.astimezone(BERLIN).hour == 1  # 01:00 CEST on the 30th


def test_dst_fall_back_a_repeated_start_counts_once() -> None:
    # Europe/Berlin goes from 03:00 CEST back to 02:00 CET on 2026-10-25 (01:00 UTC).
    w = window(schedule="30 2 25 10 *", duration="30m", timezone="Europe/Berlin")
    assert w.starts(utc(2026, 10, 24, 0, 0), utc(2026, 10, 26, 0, 0)) == [
        utc(2026, 10, 25, 0, 30)  # the first 02:30 (CEST)
    ]
    assert freeze_hold([w], utc(2026, 10, 25, 1, 30)) is None  # the second 02:30 (CET)


def test_an_allow_window_that_never_opens_within_a_year_holds_with_no_end() -> None:
    leap = window(kind="allow", schedule="0 0 29 2 *", duration="1h")
    hold = freeze_hold([leap], utc(2026, 3, 1, 0, 0))
    assert hold is not None and hold.until is None

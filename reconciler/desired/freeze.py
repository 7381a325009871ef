"""Freeze windows of a cluster (`[[freeze]]` in its file): when an apply may not start.

A window opens at every minute its cron schedule matches, in its time zone's wall-clock time,
and stays open for its duration (elapsed time). `deny` windows forbid applies while open;
`allow` windows, if a cluster has any, forbid them while none is open. Plans are still made and
shown; only the start of an apply waits (the server's gate decides, `reconciler.server.gate`).

DST: a start time a spring-forward change skips is read as PEP 495 reads it (02:30 on a day
that jumps from 02:00 to 03:00 is 03:30 new time); a start time a fall-back change repeats
counts once, at its first occurrence. The duration is real time either way.

Pure: the caller passes the time to judge.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from reconciler.desired.cron import Cron, CronError, parse_cron

_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
# Bounded, so that finding the window a moment is in looks at a few days of starts.
MAX_DURATION = timedelta(days=7)
# How far ahead the next allow window is looked for (a year and a bit).
_HORIZON_WEEKS = 60


def parse_duration(text: str) -> timedelta:
    """"2h", "1h30m", "90s", "1d": a positive duration of at most 7 days."""
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None:
        raise ValueError(f'"{text}" is not a duration (like "2h", "1h30m", "45m", "90s", "1d")')
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    value = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if not timedelta(0) < value <= MAX_DURATION:
        raise ValueError(f'duration "{text}" must be more than 0 and at most 7d')
    return value


def _check_schedule(value: str) -> str:
    try:
        parse_cron(value)
    except CronError as exc:
        raise ValueError(f'"{value}" is not a cron schedule: {exc}') from None
    return value


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


def _check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'"{value}" is not a time zone (an IANA name like "Europe/Berlin" '
                         'or "UTC")') from None  # fmt: skip
    return value


class FreezeWindow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    kind: Literal["deny", "allow"]
    schedule: Annotated[str, AfterValidator(_check_schedule)]
    duration: Annotated[str, AfterValidator(_check_duration)]
    timezone: Annotated[str, AfterValidator(_check_zone)] = "UTC"
    reason: str = Field(default="", max_length=500)

    @property
    def cron(self) -> Cron:
        return parse_cron(self.schedule)

    @property
    def length(self) -> timedelta:
        return parse_duration(self.duration)

    def describe(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return f'{self.kind} window "{self.schedule}" for {self.duration} ({self.timezone}){why}'

    def starts(self, low: datetime, high: datetime) -> list[datetime]:
        """The instants (UTC) in [low, high] at which this window opens, in order."""
        zone = ZoneInfo(self.timezone)
        cron = self.cron
        times = cron.times()
        day: date = low.astimezone(zone).date() - timedelta(days=1)
        last = high.astimezone(zone).date() + timedelta(days=1)
        found: set[datetime] = set()
        while day <= last:
            if cron.matches_day(day):
                for hour, minute in times:
                    local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
                    moment = local.astimezone(UTC)
                    if low <= moment <= high:
                        found.add(moment)
            day += timedelta(days=1)
        return sorted(found)

    def open_until(self, at: datetime) -> datetime | None:
        """When the window open at `at` closes (the latest end, if several overlap), or None."""
        length = self.length
        ends = [s + length for s in self.starts(at - length, at) if s + length > at]
        return max(ends) if ends else None

    def next_start(self, after: datetime) -> datetime | None:
        """The first opening strictly after `after`, within about a year; None if none."""
        for week in range(_HORIZON_WEEKS):
            low = after + timedelta(weeks=week)
            later = [s for s in self.starts(low, low + timedelta(weeks=1)) if s > after]
            if later:
                return later[0]
        return None


@dataclass(frozen=True, slots=True)
class FreezeHold:
    """Why an apply may not start at a moment, and when it first may (None: not within a
    year)."""

    reason: str
    until: datetime | None


def freeze_hold(windows: Sequence[FreezeWindow], at: datetime) -> FreezeHold | None:
    """Whether `windows` forbid an apply at `at` (aware), and until when; None if they do not.

    Windows that follow or overlap each other are followed to the first free moment."""
    deny = [w for w in windows if w.kind == "deny"]
    allow = [w for w in windows if w.kind == "allow"]
    reason: str | None = None
    moment = at
    for _ in range(100):
        open_deny = [(end, w) for w in deny if (end := w.open_until(moment)) is not None]
        if open_deny:
            end, window = max(open_deny, key=lambda pair: pair[0])
            reason = reason or f"inside the {window.describe()}"
            moment = end
            continue
        if allow and not any(w.open_until(moment) is not None for w in allow):
            reason = reason or "outside every allow window (" + "; ".join(
                w.describe() for w in allow) + ")"  # fmt: skip
            starts = [s for w in allow if (s := w.next_start(moment)) is not None]
            if not starts:
                return FreezeHold(reason, None)
            moment = min(starts)
            continue
        break
    else:
        return FreezeHold(reason or "freeze windows", None)
    if reason is None:
        return None
    return FreezeHold(reason, moment)

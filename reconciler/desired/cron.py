"""A five-field cron schedule (minute hour day-of-month month day-of-week), parsed and matched.

Written here because no cron library is a dependency and the job is small. The fields take
`*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b-c`, and the three-letter
English names of months and days. Day of week is 0-7 (0 and 7 are Sunday). As in Vixie cron,
when both day-of-month and day-of-week are restricted (neither starts with `*`), a day matches
if either matches; otherwise both must.

The schedule matches local wall-clock minutes; turning them into instants (time zones, DST)
is `reconciler.desired.freeze`'s job. Pure: no clock is read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, low, high, names that stand for low, low+1, ...)
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
# The most days a month can have (February in a leap year).
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class CronError(ValueError):
    """A schedule that cannot be read; the message names the field and the bad part."""


@dataclass(frozen=True, slots=True)
class Cron:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday .. 6 = Saturday (7 folded into 0)
    days_restricted: bool
    weekdays_restricted: bool

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = day.isoweekday() % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_month or in_week
        return in_month and in_week

    def times(self) -> list[tuple[int, int]]:
        """The (hour, minute) pairs of a matching day, in order."""
        return [(h, m) for h in sorted(self.hours) for m in sorted(self.minutes)]


def _number(text: str, field: str, low: int, high: int, names: tuple[str, ...]) -> int:
    lowered = text.lower()
    if lowered in names:
        return low + names.index(lowered)
    if not text.isdigit():
        raise CronError(f"{field}: {text!r} is not a number" + (
            f" or a name ({' '.join(names)})" if names else ""))  # fmt: skip
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{field}: {value} is outside {low}-{high}")
    return value


def _field(text: str, field: str, low: int, high: int, names: tuple[str, ...]) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{field}: empty item in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field}: step {step_text!r} is not a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start = _number(first, field, low, high, names)
            end = _number(last, field, low, high, names)
            if start > end:
                raise CronError(f"{field}: range {base!r} runs backwards")
        else:
            start = _number(base, field, low, high, names)
            # "5/15" means 5, 20, 35, 50 (from 5 to the end, every 15), as in Vixie cron.
            end = high if slash else start
        values.update(range(start, end + 1, step))
    return values


def parse_cron(text: str) -> Cron:
    """Parse a five-field schedule; raises CronError naming the field that is wrong."""
    parts = text.split()
    if len(parts) != 5:
        raise CronError(
            f"{len(parts)} field(s), expected 5 (minute hour day-of-month month day-of-week)"
        )
    sets = [_field(p, *spec) for p, spec in zip(parts, _FIELDS, strict=True)]
    minutes, hours, days, months, weekdays = sets
    weekdays = {d % 7 for d in weekdays}
    days_restricted = not parts[2].startswith("*")
    weekdays_restricted = not parts[4].startswith("*")
    if not (days_restricted and weekdays_restricted) and not any(
        d <= _MONTH_DAYS[m - 1] for m in months for d in days
    ):
        raise CronError("it never matches: none of its months has one of its days of month")
    return Cron(text, frozenset(minutes), frozenset(hours), frozenset(days), frozenset(months),
                frozenset(weekdays), days_restricted, weekdays_restricted)  # fmt: skip

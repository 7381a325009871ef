"""Time as the controller sees it: wall-clock stamps, deadlines, jitter, and waiting for a wake.

Everything the watch loop does with time goes through a `Clock`, so a test can run the loop's
decisions (when the next pass comes, how long a backoff is, whether a heal is within its window)
with a clock it moves itself, in no time. `SystemClock` is the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The wall-clock time, aware, in UTC (stamps in the store, the heal window)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines of requeued units)."""
        ...

    def uniform(self, low: float, high: float) -> float:
        """A random number in [low, high] (jitter of the poll and of backoffs)."""
        ...

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait until `event` is set or `timeout` seconds passed; True if it was set."""
        ...


def stamp(moment: datetime) -> str:
    """`moment` in the form the store writes its own timestamps in (ISO 8601, milliseconds)."""
    return moment.isoformat(timespec="milliseconds")


class SystemClock:
    """The machine's clocks, `random`, and asyncio's timeouts."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def uniform(self, low: float, high: float) -> float:
        return random.uniform(low, high)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=timeout)
        return event.is_set()

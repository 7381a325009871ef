"""When the loop looks again after a failure: the retry decisions, kept per piece of work.

A piece of work is a unit (its key, "a,b"), the git fetch (`SOURCE`) or a whole pass (`PASS`).
Each failure is handed to `retry_decision` with the number of failures in a row, and what it
says is kept until that work succeeds: `Requeue` sets when an early look is due, which the loop
sleeps towards (sooner than its poll); `WaitForRevision` holds a unit out of passes while the
branch head is the revision that failed (a person's wake lets it go); `GiveUp` keeps nothing.

Level-triggered all the same: a regular pass (poll or wake) looks at every unit that is not
held, due or not. A unit can also ask to be looked at at a moment (`look_at`: the end of the
freeze window that holds its plan).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from reconciler.server.clock import Clock
from reconciler.server.retry import GiveUp, Requeue, RetryDecision, WaitForRevision, retry_decision

SOURCE = "<source>"
PASS = "<pass>"


@dataclass(frozen=True, slots=True)
class _Pending:
    attempt: int  # failures in a row
    due: float | None = None  # monotonic time of the early look (Requeue)
    held_at: str | None = None  # the revision the unit waits past (WaitForRevision)


class Schedule:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        # Looks asked for at a moment, not after a failure (a freeze window's end).
        self._timed: dict[str, float] = {}
        # The timed looks the last `due()` handed out (why the early pass runs).
        self.last_timed: set[str] = set()

    def failed(self, key: str, exc: Exception, revision: str | None = None) -> RetryDecision:
        """Record that `key` failed with `exc` (at `revision`); what the error's class says."""
        previous = self._pending.get(key)
        attempt = previous.attempt + 1 if previous else 1
        decision = retry_decision(exc, attempt=attempt, uniform=self._clock.uniform)
        match decision:
            case Requeue(after=after):
                self._pending[key] = _Pending(attempt, due=self._clock.monotonic() + after)
            case WaitForRevision():
                self._pending[key] = _Pending(attempt, held_at=revision)
            case GiveUp():
                self._pending.pop(key, None)
        return decision

    def look_at(self, key: str, due: float) -> None:
        """Look at `key` at the monotonic time `due` (the earliest, if asked twice)."""
        self._timed[key] = min(due, self._timed.get(key, due))

    def succeeded(self, key: str) -> None:
        self._pending.pop(key, None)

    def attempts(self, key: str) -> int:
        pending = self._pending.get(key)
        return pending.attempt if pending else 0

    def held(self, key: str, revision: str) -> bool:
        """`key` failed at `revision` in a way only a new revision can change."""
        pending = self._pending.get(key)
        return pending is not None and pending.held_at == revision

    def release_holds(self) -> None:
        """A person asked for a look: held units are looked at again."""
        self._pending = {k: p for k, p in self._pending.items() if p.held_at is None}

    def keep_only(self, keys: Collection[str]) -> None:
        """Forget work that no longer exists (units of an older revision)."""
        self._pending = {k: p for k, p in self._pending.items() if k in keys}
        self._timed = {k: t for k, t in self._timed.items() if k in keys}

    def next_due(self) -> float | None:
        """The monotonic time of the earliest early look, if any is due."""
        dues = [p.due for p in self._pending.values() if p.due is not None]
        dues.extend(self._timed.values())
        return min(dues) if dues else None

    def due(self) -> set[str]:
        """The work whose early look is due now."""
        now = self._clock.monotonic()
        timed = {k for k, t in self._timed.items() if t <= now}
        for key in timed:
            del self._timed[key]
        self.last_timed = timed
        return timed | {k for k, p in self._pending.items() if p.due is not None and p.due <= now}

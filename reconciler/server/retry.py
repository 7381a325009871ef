"""What the controller does after an error: one function from the error tree to a decision.

DESIGN.md: the class of an error decides the retry, not the place that caught it. Every handler
of the controller asks `retry_decision` and does what the answer says:

    Stalled        (invalid repository, requisite cycle, host key,   WaitForRevision
                    sudo refused)
    Waiting        (approval required, stale plan)                   Requeue at once: re-plan
    ApplyError     (a step failed and was rolled back; RollbackError) GiveUp on that plan
    Transient      (git, transport, a fact that did not parse)       Requeue after a backoff
    other ShoalError                                                 GiveUp
    anything else  (a bug)                                           GiveUp, bug=True

GiveUp retries nothing early; the loop being level-triggered, the next regular pass (poll or
wake) still reads git and the hosts afresh, and a failed plan is not proposed again until one of
them changes. The backoff is exponential in the attempt, capped, with jitter (the upper half of
the interval is drawn at random), so hosts that went away together are not all asked again in
the same instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reconciler.errors import ApplyError, ShoalError, Stalled, Transient, Waiting

BACKOFF_BASE = 1.0  # seconds before the first retry (before jitter)
BACKOFF_CAP = 300.0  # no backoff is longer than this


@dataclass(frozen=True, slots=True)
class Requeue:
    """Try again after `after` seconds (0: at once)."""

    after: float
    reason: str


@dataclass(frozen=True, slots=True)
class WaitForRevision:
    """The same input fails the same way: try again when the branch head moves."""

    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No early retry. `bug`: not an error shoal raises on purpose (log it with its traceback)."""

    reason: str
    bug: bool = False


RetryDecision = Requeue | WaitForRevision | GiveUp


def backoff(
    attempt: int,
    uniform: Callable[[float, float], float],
    *,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): base * 2^(attempt-1), capped,
    then a random point in the upper half of that."""
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 1) - 1, 64))
    return uniform(ceiling / 2, ceiling)


def retry_decision(
    exc: Exception, *, attempt: int, uniform: Callable[[float, float], float]
) -> RetryDecision:
    """What to do after `exc`, the `attempt`-th failure in a row of the same work."""
    reason = str(exc) or type(exc).__name__
    match exc:
        case Stalled():
            return WaitForRevision(reason)
        case Waiting():
            return Requeue(0.0, reason)
        case ApplyError():
            return GiveUp(reason)
        case Transient():
            return Requeue(backoff(attempt, uniform), reason)
        case ShoalError():
            return GiveUp(reason)
        case _:
            return GiveUp(f"{type(exc).__name__}: {exc}", bug=True)

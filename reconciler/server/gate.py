"""Whether a unit's plan may start applying now: not while an admin's lock holds one of its
clusters, nor while a freeze window of the plan's revision forbids it (`[[freeze]]`, judged at
the controller's clock) unless an admin overrode the freeze for that plan.

A held plan is still made and shown. An approved plan then waits (state `approved`) and starts
at the first pass after the unlock, or at the look the loop takes when the window ends; policy
approvals and drift heals do not happen while held. An override does not lift a lock: a lock
is a person saying stop, and only the unlock undoes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from reconciler.desired.freeze import FreezeHold, freeze_hold
from reconciler.desired.models import Desired
from reconciler.server.clock import stamp
from reconciler.server.context import ServerContext


@dataclass(frozen=True, slots=True)
class Hold:
    """Why nothing of a unit may apply now; `until`: when a freeze lets go (None: a lock, or
    a freeze with no end within a year)."""

    reason: str
    until: datetime | None = None
    frozen: bool = False


def apply_blocked(
    ctx: ServerContext, unit: tuple[str, ...], desired: Desired | None, plan_id: str | None
) -> Hold | None:
    """Why nothing of `unit` may apply now, or None. `desired`: the plan's revision (its
    freeze windows); `plan_id`: the plan an admin may have let through a freeze."""
    locks = ctx.store.cluster_locks()
    held = [locks[c] for c in unit if c in locks]
    if held:
        return Hold("; ".join(
            f"cluster {lock.cluster} is locked by {lock.actor} since {lock.locked_at}: "
            f"{lock.reason}" for lock in held))  # fmt: skip
    if desired is None or (plan_id is not None and ctx.store.freeze_override(plan_id)):
        return None
    return frozen(unit, desired, ctx.clock.now())


def frozen(unit: tuple[str, ...], desired: Desired, now: datetime) -> Hold | None:
    """The freeze windows' hold on `unit` at `now`, or None."""
    holds: list[tuple[str, FreezeHold]] = []
    for name in unit:
        cluster = desired.clusters.get(name)
        hold = freeze_hold(cluster.freeze, now) if cluster is not None else None
        if hold is not None:
            holds.append((name, hold))
    if not holds:
        return None
    ends = [h.until for _, h in holds]
    until = None if any(e is None for e in ends) else max(e for e in ends if e is not None)
    when = f"until {stamp(until)}" if until is not None else "with no end within a year"
    reason = "; ".join(f"cluster {name} is frozen {hold.reason}" for name, hold in holds)
    return Hold(f"{reason}: no apply starts {when}", until, frozen=True)

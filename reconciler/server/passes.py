"""One level-triggered look: read the branch head and the hosts, plan, hand the plan to `decide`.

Every pass reads the head from git and every host's current facts, and decides from those alone
(a webhook's payload is never read). Units are planned apart: each sees only its own clusters
(and the orphan hosts, for the first unit), under its clusters' locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reconciler.desired.models import Desired
from reconciler.errors import DesiredStateInvalid
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import Plan
from reconciler.server.context import ServerContext
from reconciler.server.decide import decide
from reconciler.server.status import record_invalid, record_valid_head
from reconciler.server.store.records import PlanRecord
from reconciler.server.units import cluster_units, restrict, unit_hosts


@dataclass(frozen=True, slots=True)
class Head:
    """The branch head as a pass read it: its sha, and its desired state or its errors."""

    sha: str
    desired: Desired | None
    errors: list[dict[str, Any]] = field(default_factory=list)


async def read_head(ctx: ServerContext) -> Head:
    """Fetch and load the head, recording it valid or invalid; raises SourceError."""
    sha = await ctx.source.fetch()
    try:
        desired = await ctx.load(sha)
    except DesiredStateInvalid as exc:
        return Head(sha, None, record_invalid(ctx, sha, exc))
    record_valid_head(ctx, sha, desired)
    return Head(sha, desired)


def pass_units(desired: Desired) -> list[tuple[tuple[str, ...], bool]]:
    """The units of `desired`, each with whether it also covers the orphan hosts (the first)."""
    return [(unit, i == 0) for i, unit in enumerate(cluster_units(desired))]


@dataclass(frozen=True, slots=True)
class UnitLook:
    """What one look at a unit found: the plan made, and the plan record now current."""

    plan: Plan
    record: PlanRecord | None


async def reconcile_unit(
    ctx: ServerContext,
    unit: tuple[str, ...],
    desired: Desired,
    *,
    orphans: bool,
    woken_by: str,
) -> UnitLook:
    """Gather the unit's hosts, plan, decide. The caller holds the unit's locks; `woken_by`
    (what asked for this look, in words) goes into the audit entry of a plan it makes."""
    sub = restrict(desired, unit)
    transport = ctx.transport(desired)
    try:
        hosts = unit_hosts(desired, unit, with_orphans=orphans)
        facts = await ctx.gather(transport, sub, hosts)
        plan = plan_desired(sub, facts, reuse=ctx.plan_reuse(unit))
        record = await decide(ctx, unit, sub, plan, transport, facts, woken_by=woken_by)
        return UnitLook(plan, record)
    finally:
        await transport.aclose()

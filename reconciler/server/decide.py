"""What to do with a fresh plan: nothing, wait for a person, report drift, or apply by policy.

    a host unread (plan empty)        out of sync, nothing runs: last_error names the host and why
    plan empty, no host refused       in sync; open plans are stale/superseded
    revision not applied yet          a "change" plan, pending (approval = "auto": applied at once)
    revision already applied          "drift": reported (API + audit); drift = "heal": applied,
                                      at most MAX_HEALS_PER_WINDOW times per HEAL_WINDOW

An open plan made from other facts is closed first (stale, or superseded by a newer revision).
The same plan that failed or was rejected is not proposed again: it stays the current plan until
git or the hosts change (no retry loop on one commit).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta

from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.steps import Plan
from reconciler.server.clock import stamp
from reconciler.server.context import ACTOR, ServerContext
from reconciler.server.execute import AUTO_APPROVER, HEAL_APPROVER, approve_and_apply, execute
from reconciler.server.gate import apply_blocked
from reconciler.server.notify_events import plan_words
from reconciler.server.status import (
    close_plan,
    open_plans,
    record_in_sync,
    record_planned,
    record_unread,
)
from reconciler.server.store.records import PlanKind, PlanRecord
from reconciler.server.units import derived_plan_id, unit_key
from reconciler.transport.protocol import Transport

log = logging.getLogger("shoal.controller")

# drift = "heal" heals the same drift at most this often per window, then asks a person.
MAX_HEALS_PER_WINDOW = 3
HEAL_WINDOW = timedelta(hours=1)


async def decide(
    ctx: ServerContext,
    unit: tuple[str, ...],
    desired: Desired,
    plan: Plan,
    transport: Transport,
    facts: Mapping[str, HostFacts] | None = None,
    *,
    woken_by: str = "a direct call",
) -> PlanRecord | None:
    """Record what `plan` means for the unit and run it if policy says so; the current plan.
    `woken_by`: why this look happened, recorded with a plan it makes."""
    sha = desired.revision
    key = unit_key(unit)
    now = ctx.now()
    records = [ctx.store.get_cluster(name) for name in unit]
    already_applied = all(r is not None and r.applied_revision == sha for r in records)

    if plan.empty and plan.unread:
        record_unread(ctx, unit, sha, plan, now)
        return None
    # A host refused for breaking a safety rule is not in sync, even with no step to run.
    if plan.empty and not plan.refused:
        had_drift = any(r is not None and r.drift for r in records)
        record_in_sync(ctx, unit, sha, now, had_drift=had_drift)
        return None

    for record in open_plans(ctx, unit):
        if record.base_id != plan.id:
            close_plan(ctx, record, sha, "the hosts' facts changed since it was made")

    kind: PlanKind = "drift" if already_applied else "change"
    current = current_plan(ctx, key, plan, kind, woken_by)
    record_planned(ctx, unit, sha, plan, current, kind, records, now)

    blocked = apply_blocked(ctx, unit, desired, current.id)
    if blocked is not None and blocked.until is not None:
        # The window ends at a known moment: the loop looks at the unit then, not at its poll.
        ctx.look_at(key, blocked.until)
    if current.state == "approved" and blocked is None and not plan.empty:
        # Approved while a lock held it back; the facts just gathered are the plan's own
        # (current_plan found it by the plan id they make), so it is not stale.
        run = ctx.store.start_run(current.id, actor=current_approver(ctx, current))
        if run is not None:
            await execute(ctx, run, current, desired, transport, facts)
        return ctx.store.get_plan(current.id)
    if current.state != "pending" or plan.empty:
        return current  # nothing shoal may run: only refused hosts are out of sync
    if blocked is not None:
        return current  # no policy approval and no heal while a lock or a freeze holds
    if kind == "change" and all(desired.approval_for(c) == "auto" for c in unit):
        await approve_and_apply(ctx, current, desired, transport, AUTO_APPROVER, facts)
    elif kind == "drift" and all(desired.drift_for(c) == "heal" for c in unit):
        recent = recent_heals(ctx, plan, current)
        if len(recent) >= MAX_HEALS_PER_WINDOW:
            # The same drift keeps coming back (something on the host fights us, or an
            # apply does not converge): stop healing it and leave the plan to a person.
            ctx.store.audit(
                "drift.heal_repeated",
                actor=ACTOR,
                cluster=key,
                plan_id=current.id,
                detail={"heals_in_window": len(recent)},
            )
        else:
            await approve_and_apply(ctx, current, desired, transport, HEAL_APPROVER, facts)
    return ctx.store.get_plan(current.id)


def current_approver(ctx: ServerContext, record: PlanRecord) -> str:
    """Who approved `record` last (the run is theirs, started late)."""
    approvers = ctx.store.approvers_of(record.id)
    return approvers[-1] if approvers else ACTOR


def recent_heals(ctx: ServerContext, plan: Plan, current: PlanRecord) -> Sequence[PlanRecord]:
    """Earlier drift plans of this same plan, touched within the heal window."""
    since = stamp(ctx.clock.now() - HEAL_WINDOW)
    return [
        r
        for r in ctx.store.list_plans(base_id=plan.id, limit=1000)
        if r.kind == "drift" and r.id != current.id and r.updated_at >= since
    ]


def current_plan(
    ctx: ServerContext, key: str, plan: Plan, kind: PlanKind, woken_by: str
) -> PlanRecord:
    """The stored plan for this exact plan: the open one, a failed/rejected one, or new."""
    store = ctx.store
    existing = store.list_plans(base_id=plan.id, limit=1000)
    for record in existing:
        if record.state in ("pending", "approved", "applying"):
            return record
    for record in existing:
        # A person rejected it, or it failed and was rolled back: the same plan is not
        # proposed again until git or the hosts change (no retry loop on one commit).
        if record.state in ("failed", "rejected") and record.cluster == key:
            return record
    plan_id = plan.id if not existing else derived_plan_id(plan.id, len(existing))
    stored = plan if plan_id == plan.id else plan.model_copy(update={"id": plan_id})
    record = store.add_plan(stored, cluster=key, kind=kind, base_id=plan.id)
    changed = sorted(h for h, hp in plan.hosts.items() if hp.steps)
    store.audit(
        "plan.created",
        actor=ACTOR,
        cluster=key,
        plan_id=record.id,
        detail={
            "revision": plan.revision, "kind": kind, "hosts": changed, "woken_by": woken_by
        },
    )
    if kind == "drift":
        ctx.notify("drift_found", record, who=ACTOR, text=f"drift found: the hosts left revision "
                   f"{plan.revision[:10]}; {plan_words(record)} would bring them back")  # fmt: skip
    else:
        ctx.notify("plan_pending", record, who=ACTOR,
                   text=f"{plan_words(record)} waits for approval")  # fmt: skip
    log.info(
        "plan created",
        extra={
            "plan_id": record.id,
            "clusters": key,
            "revision": plan.revision,
            "kind": kind,
            "woken_by": woken_by,
        },
    )
    return record

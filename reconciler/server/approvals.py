"""A person's decision on a pending plan (called by the API): approve and start it, or reject.

An approval is for one plan id. A cluster with `approvals_required = N` needs N approvals by N
different tokens: the earlier ones are recorded (the same token twice is refused), the Nth
starts the run. Approvals belong to the plan: a stale plan's do not carry over to the new one.
Before it is applied the branch head is read again (moved: the
plan is superseded) and the facts are gathered again: a different digest makes the plan stale
(HTTP 409) and a new plan is made at once. The apply runs as a task of its own, holding the
unit's locks until it ends; GET /runs/{id} follows it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from reconciler.server.context import ServerContext
from reconciler.server.execute import execute_then_release
from reconciler.server.gate import apply_blocked
from reconciler.server.lifecycle import (
    AlreadyApproved,
    AlreadyOverridden,
    ApprovalRecorded,
    PlanNotFound,
    PlanNotPending,
    StaleApproval,
)
from reconciler.server.notify_events import plan_words
from reconciler.server.passes import reconcile_unit
from reconciler.server.status import mark
from reconciler.server.store.freeze_overrides import FreezeOverride
from reconciler.server.store.records import PlanRecord, RunRecord
from reconciler.server.units import cluster_units, restrict, unit_key, unit_of
from reconciler.transport.protocol import Transport

log = logging.getLogger("shoal.controller")

# Starts the apply as a task the controller keeps (so that stop() can wait for it).
StartTask = Callable[[Coroutine[Any, Any, None], str], None]


def pending(ctx: ServerContext, plan_id: str) -> PlanRecord:
    record = ctx.store.get_plan(plan_id)
    if record is None:
        raise PlanNotFound(plan_id)
    if record.state != "pending":
        raise PlanNotPending(plan_id, record.state)
    return record


def _no_longer_pending(ctx: ServerContext, plan_id: str) -> PlanNotPending:
    """The error for a plan another request decided between our check and our write."""
    current = ctx.store.get_plan(plan_id)
    return PlanNotPending(plan_id, current.state if current else "missing")


def _audit_decision(
    ctx: ServerContext,
    action: str,
    record: PlanRecord,
    actor: str,
    comment: str,
    run_id: str | None = None,
) -> None:
    ctx.store.audit(
        action,
        actor=actor,
        cluster=record.cluster,
        plan_id=record.id,
        run_id=run_id,
        detail={"comment": comment},
    )


async def approve(
    ctx: ServerContext, plan_id: str, *, actor: str, comment: str, start: StartTask
) -> RunRecord | ApprovalRecorded:
    """Approve one pending plan and start applying it; raises StaleApproval (409) if git
    or the hosts moved since it was made. Returns the started run, or, while the plan needs
    more approvals by other tokens, the approvals so far."""
    record = pending(ctx, plan_id)
    unit = unit_of(record)
    locks = await ctx.locks.acquire(unit)
    transport: Transport | None = None
    handed_off = False
    try:
        record = pending(ctx, plan_id)
        head = await ctx.source.fetch()
        if head != record.revision:
            reason = f"the branch moved to {head[:12]}"
            mark(ctx, record, "superseded", reason, actor)
            ctx.wake("approval of a superseded plan")
            raise StaleApproval(plan_id, [], reason, None)
        required = await approvals_required(ctx, record)
        if required > 1:
            approvers = ctx.store.approvers_of(plan_id)
            if actor in approvers:
                raise AlreadyApproved(plan_id, actor, required)
            if len(approvers) + 1 < required:
                if not ctx.store.add_approval_vote(plan_id, actor=actor, comment=comment):
                    raise _no_longer_pending(ctx, plan_id)
                approvers.append(actor)
                detail = {"comment": comment, "approvals": len(approvers), "required": required}
                ctx.store.audit("plan.approval_recorded", actor=actor, cluster=record.cluster,
                                plan_id=record.id, detail=detail)  # fmt: skip
                log.info("approval recorded", extra={"actor": actor, "approvals": len(approvers),
                                                     "required": required})  # fmt: skip
                return ApprovalRecorded(plan_id, approvers, required)
        desired = restrict(await ctx.load(record.revision), unit)
        transport = ctx.transport(desired)
        facts = await ctx.gather(transport, desired, sorted(record.plan.hosts))
        changed = sorted(
            host
            for host, hp in record.plan.hosts.items()
            if host not in facts or facts[host].digest() != hp.facts_digest
        )
        if changed:
            reason = f"facts changed on {', '.join(changed)}"
            mark(ctx, record, "stale", reason, actor)
            await transport.aclose()
            transport = None
            full = await ctx.load(record.revision)
            look = await reconcile_unit(
                ctx,
                unit,
                full,
                orphans=unit == cluster_units(full)[0],
                woken_by=f"{actor}'s approval of plan {plan_id} ({reason})",
            )
            new = look.record
            raise StaleApproval(plan_id, changed, reason, new.id if new else None)
        blocked = apply_blocked(ctx, unit, desired, plan_id)
        if blocked is not None:
            # Approved, and it stays so: the first pass after the unlock, or the loop's look
            # when the freeze window ends, starts it.
            if not ctx.store.decide_plan(plan_id, decision="approve", actor=actor,
                                         comment=comment):  # fmt: skip
                raise _no_longer_pending(ctx, plan_id)
            ctx.store.audit("plan.approved", actor=actor, cluster=record.cluster,
                            plan_id=record.id,
                            detail={"comment": comment, "waiting": blocked.reason})  # fmt: skip
            log.info("plan approved, waiting", extra={"actor": actor, "waiting": blocked.reason})
            ctx.notify("plan_approved", record, who=actor, text=f"{plan_words(record)} approved "
                       f"by {actor}; it waits: {blocked.reason}")  # fmt: skip
            if blocked.until is not None:
                ctx.look_at(unit_key(unit), blocked.until)
            return ApprovalRecorded(plan_id, [*ctx.store.approvers_of(plan_id)], required,
                                    waiting=blocked.reason, until=blocked.until)  # fmt: skip
        run = ctx.store.approve_and_start_run(plan_id, actor=actor, comment=comment)
        if run is None:
            raise _no_longer_pending(ctx, plan_id)
        _audit_decision(ctx, "plan.approved", record, actor, comment, run_id=run.id)
        log.info("plan approved", extra={"actor": actor, "run_id": run.id})
        ctx.notify("plan_approved", record, who=actor, run_id=run.id,
                   text=f"{plan_words(record)} approved by {actor}; run {run.id} applies it")
        start(
            execute_then_release(ctx, run, record, desired, transport, locks, facts),
            f"shoal-apply-{plan_id}",
        )
        handed_off = True
        return run
    finally:
        if not handed_off:
            if transport is not None:
                await transport.aclose()
            ctx.locks.release(locks)


async def approvals_required(ctx: ServerContext, record: PlanRecord) -> int:
    """The most any cluster of the plan's unit asks for (its revision's desired state)."""
    desired = await ctx.load(record.revision)
    return max(
        (desired.clusters[c].cluster.approvals_required for c in unit_of(record)
         if c in desired.clusters),
        default=1,
    )  # fmt: skip


def override_freeze(ctx: ServerContext, plan_id: str, *, actor: str, reason: str) -> FreezeOverride:
    """Let one pending or approved plan start although a freeze window forbids applies now
    (an admin, with a reason; audited). An approved plan starts at the pass this wakes."""
    record = ctx.store.get_plan(plan_id)
    if record is None:
        raise PlanNotFound(plan_id)
    if record.state not in ("pending", "approved"):
        raise PlanNotPending(plan_id, record.state)
    override = ctx.store.override_freeze(plan_id, reason=reason, actor=actor)
    if override is None:
        raise AlreadyOverridden(plan_id)
    ctx.store.audit("plan.freeze_overridden", actor=actor, cluster=record.cluster,
                    plan_id=plan_id, detail={"reason": reason})  # fmt: skip
    log.warning("freeze overridden", extra={"plan_id": plan_id, "clusters": record.cluster,
                                            "actor": actor, "reason": reason})  # fmt: skip
    ctx.wake(f"freeze overridden for plan {plan_id}")
    return override


def reject(ctx: ServerContext, plan_id: str, *, actor: str, comment: str) -> PlanRecord:
    record = pending(ctx, plan_id)
    if not ctx.store.decide_plan(plan_id, decision="reject", actor=actor, comment=comment):
        raise _no_longer_pending(ctx, plan_id)
    _audit_decision(ctx, "plan.rejected", record, actor, comment)
    log.info("plan rejected", extra={"plan_id": plan_id, "clusters": record.cluster,
                                     "actor": actor})  # fmt: skip
    rejected = ctx.store.get_plan(plan_id)
    assert rejected is not None
    return rejected

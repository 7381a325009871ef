"""The run of an approved plan: approve by policy, apply, record the outcome.

A run's outcome is written whatever happens: applied (the unit's clusters are in sync at the
plan's revision) or failed, with the step results and the backups index. Only a cancelled task
(a stopping server) leaves a run `applying`, on purpose: the next start rolls it back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from reconciler.apply.events import ApplyEvent, EventHandler
from reconciler.apply.executor import apply_plan
from reconciler.apply.runresult import RunResult
from reconciler.desired.models import Desired
from reconciler.errors import ShoalError
from reconciler.facts.hostfacts import HostFacts
from reconciler.logfmt import log_context
from reconciler.server.context import ACTOR, ServerContext
from reconciler.server.notify_events import plan_words
from reconciler.server.retry import GiveUp, retry_decision
from reconciler.server.run_record import run_result_records, step_row
from reconciler.server.store.records import PlanRecord, RunRecord
from reconciler.server.units import unit_of
from reconciler.transport.protocol import Transport

log = logging.getLogger("shoal.controller")

AUTO_APPROVER = "policy:approval=auto"
HEAL_APPROVER = "policy:drift=heal"


async def approve_and_apply(
    ctx: ServerContext,
    record: PlanRecord,
    desired: Desired,
    transport: Transport,
    actor: str,
    facts: Mapping[str, HostFacts] | None = None,
) -> None:
    """Approve `record` for a policy (`actor`) and apply it now; nothing if it is no longer
    pending (someone else decided it)."""
    run = ctx.store.approve_and_start_run(record.id, actor=actor, comment="by policy")
    if run is None:
        return
    ctx.store.audit("plan.approved", actor=actor, cluster=record.cluster, plan_id=record.id)
    ctx.notify("plan_approved", record, who=actor, run_id=run.id,
               text=f"{plan_words(record)} approved by {actor}; run {run.id} applies it")
    await execute(ctx, run, record, desired, transport, facts)


async def execute(
    ctx: ServerContext,
    run: RunRecord,
    record: PlanRecord,
    desired: Desired,
    transport: Transport,
    facts: Mapping[str, HostFacts] | None = None,
) -> None:
    """Apply `record`'s plan. `facts`: just gathered on `transport` (the plan's own, or those
    the approval's stale check read), so the executor does not read the hosts again. Every
    line logged meanwhile carries the plan, run and cluster ids."""
    with log_context(plan_id=record.id, run_id=run.id, clusters=record.cluster):
        await _execute(ctx, run, record, desired, transport, facts)


async def _execute(
    ctx: ServerContext,
    run: RunRecord,
    record: PlanRecord,
    desired: Desired,
    transport: Transport,
    facts: Mapping[str, HostFacts] | None,
) -> None:
    store = ctx.store
    store.audit(
        "run.started", actor=run.actor, cluster=record.cluster, plan_id=record.id, run_id=run.id
    )
    log.info("applying", extra={"plan_id": record.id, "run_id": run.id})
    try:
        result: RunResult = await apply_plan(
            record.plan, desired, transport, facts=facts, on_event=live_steps(ctx, run)
        )
    except ShoalError as exc:
        _failed(ctx, run, record, exc)
        return
    except Exception as exc:
        # Not an error of the tree: a bug. The run must still end `failed` (left `applying`,
        # the next start would roll back hosts nobody is changing); then the bug goes up.
        _failed(ctx, run, record, exc)
        raise
    steps, backups, summary = run_result_records(result)
    store.add_step_results(run.id, steps, replace=True)
    for backup in backups:
        store.add_backup(run.id, record.id, backup.host, backup.location, backup.detail)
    store.finish_run(
        run.id,
        ok=result.ok,
        plan_state="applied" if result.ok else "failed",
        run_state="applied" if result.ok else "failed",
        result=summary,
        error=None if result.ok else summary.get("error"),
    )
    if result.ok:
        for name in unit_of(record):
            store.update_cluster(name, applied_revision=record.revision, in_sync=True, drift=None)
    store.audit(
        "run.applied" if result.ok else "run.failed",
        actor=ACTOR,
        cluster=record.cluster,
        plan_id=record.id,
        run_id=run.id,
        detail={"ok": result.ok},
    )
    log.info("run finished", extra={"plan_id": record.id, "run_id": run.id, "ok": result.ok})
    _notify_outcome(ctx, run, record, result, summary.get("error"))


def _notify_outcome(ctx: ServerContext, run: RunRecord, record: PlanRecord, result: RunResult,
                    error: object) -> None:  # fmt: skip
    if result.ok:
        ctx.notify("applied", record, who=run.actor, run_id=run.id,
                   text=f"revision {record.revision[:10]} applied by run {run.id} "
                   f"({plan_words(record)})")  # fmt: skip
        if result.verification is not None and result.verification.ok:
            ctx.notify("verified", record, who=ACTOR, run_id=run.id,
                       text=f"run {run.id} verified: traffic through every VIP reached its "
                       "real servers, ARP answered by the active director")  # fmt: skip
        return
    rolled = sorted({rb.host for rb in result.rollbacks})
    if rolled:
        ctx.notify("rolled_back", record, who=ACTOR, run_id=run.id,
                   text=f"run {run.id} failed and was rolled back on {', '.join(rolled)}: "
                   f"{error or 'failed'}")  # fmt: skip
    else:
        ctx.notify("failed", record, who=ACTOR, run_id=run.id,
                   text=f"run {run.id} failed: {error or 'see the run'}")


def live_steps(ctx: ServerContext, run: RunRecord) -> EventHandler:
    """An event handler that stores each step's result as the executor reports it, so
    GET /runs/{id} (and the run's web page) shows the steps while the run goes on; the final
    rows replace these when it ends."""
    seq = 0
    phases = ctx.metrics.phase_timer()

    def on_event(event: ApplyEvent) -> None:
        nonlocal seq
        phases(event)
        if event.kind == "step" and event.step is not None and event.host is not None:
            ctx.store.add_step_results(run.id, [step_row(seq, event.host, event.step)])
            seq += 1

    return on_event


def _failed(ctx: ServerContext, run: RunRecord, record: PlanRecord, exc: Exception) -> None:
    """The apply raised: the run and its plan end `failed`; the plan is not run again (a new
    revision or new facts make a new one), whatever the error's class says of retrying."""
    decision = retry_decision(exc, attempt=1, uniform=ctx.clock.uniform)
    extra = {"plan_id": record.id, "run_id": run.id, "decision": type(decision).__name__}
    if isinstance(decision, GiveUp) and decision.bug:
        log.error("apply raised: a bug", exc_info=exc, extra=extra)
    else:
        log.warning("apply raised", extra={**extra, "error": str(exc)})
    ctx.store.finish_run(
        run.id,
        ok=False,
        plan_state="failed",
        run_state="failed",
        result=None,
        error=f"{type(exc).__name__}: {exc}",
    )
    ctx.store.audit(
        "run.failed", actor=ACTOR, cluster=record.cluster, plan_id=record.id, run_id=run.id
    )
    ctx.notify("failed", record, who=ACTOR, run_id=run.id,
               text=f"run {run.id} failed: {type(exc).__name__}: {exc}")


async def execute_then_release(
    ctx: ServerContext,
    run: RunRecord,
    record: PlanRecord,
    desired: Desired,
    transport: Transport,
    locks: Sequence[asyncio.Lock],
    facts: Mapping[str, HostFacts] | None = None,
) -> None:
    """`execute` as a task of its own (an approval by a person), then close and unlock."""
    try:
        await execute(ctx, run, record, desired, transport, facts)
    finally:
        try:
            await transport.aclose()
        finally:
            ctx.locks.release(locks)

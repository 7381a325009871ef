"""Start-up recovery: runs a crash left `applying` are rolled back and marked interrupted.

Every host such a run touched is rolled back, confirmed phases included, from the hosts' own
backups, and each host is proven by its facts (`reconciler.apply.recovery` has the policy and
why). Pending plans stay pending. A run whose rollback failed is marked interrupted all the
same, with the error in its recovery detail: it is not retried, a person reads it.
"""

from __future__ import annotations

import logging
from typing import Any

from reconciler.apply.recovery import backups as recovery_backups
from reconciler.apply.recovery import host_verdicts, restore_snapshots
from reconciler.errors import ShoalError
from reconciler.logfmt import log_context
from reconciler.plan.planner import plan_desired
from reconciler.server.context import ACTOR, ServerContext
from reconciler.server.retry import GiveUp, retry_decision
from reconciler.server.store.records import PlanRecord, RunRecord
from reconciler.server.units import restrict, unit_hosts, unit_of

log = logging.getLogger("shoal.controller")


async def recover(ctx: ServerContext) -> None:
    """Find runs a crash left `applying`; roll their hosts back; mark them interrupted."""
    for run in ctx.store.list_runs(state="applying", limit=10_000):
        await recover_run(ctx, run)


async def recover_run(ctx: ServerContext, run: RunRecord) -> None:
    record = ctx.store.get_plan(run.plan_id)
    if record is None:
        return
    with log_context(run_id=run.id, plan_id=record.id, clusters=record.cluster):
        await _recover_run(ctx, run, record)


async def _recover_run(ctx: ServerContext, run: RunRecord, record: PlanRecord) -> None:
    unit = unit_of(record)
    detail: dict[str, Any] = {}
    log.warning("recovering interrupted run")
    async with ctx.locks.held(unit):
        try:
            detail = await restore_hosts(ctx, record, run.id)
        except ShoalError as exc:
            _failed(ctx, run, exc, detail)
        except Exception as exc:
            # A bug: the run is closed all the same (it must not be recovered again and again),
            # then the bug goes up to the loop's last-resort handler.
            _failed(ctx, run, exc, detail)
            _interrupted(ctx, run, record, detail)
            raise
        _interrupted(ctx, run, record, detail)


def _failed(ctx: ServerContext, run: RunRecord, exc: Exception, detail: dict[str, Any]) -> None:
    decision = retry_decision(exc, attempt=1, uniform=ctx.clock.uniform)
    extra = {"run_id": run.id, "decision": type(decision).__name__}
    if isinstance(decision, GiveUp) and decision.bug:
        log.error("recovery of run failed: a bug", exc_info=exc, extra=extra)
    else:
        # No retry whatever the class: a person reads the run's recovery detail.
        log.warning("recovery of run failed", extra={**extra, "error": str(exc)})
    detail["error"] = f"{type(exc).__name__}: {exc}"


def _interrupted(
    ctx: ServerContext, run: RunRecord, record: PlanRecord, detail: dict[str, Any]
) -> None:
    ctx.store.finish_run(
        run.id,
        ok=False,
        plan_state="interrupted",
        run_state="interrupted",
        result=None,
        error="the server stopped while this run was applying",
        recovery=detail,
    )
    ctx.store.audit(
        "run.interrupted",
        actor=ACTOR,
        cluster=record.cluster,
        plan_id=record.id,
        run_id=run.id,
        detail=detail,
    )


async def restore_hosts(ctx: ServerContext, record: PlanRecord, run_id: str) -> dict[str, Any]:
    """Roll every host of the plan back from its on-host backups (confirmed phases too), index
    the backups found, and prove each host by its facts."""
    full = await ctx.load(record.revision)
    desired = restrict(full, unit_of(record))
    plan = record.plan
    transport = ctx.transport(desired)
    try:
        phases = await restore_snapshots(plan, transport)
        for p in recovery_backups(phases):
            ctx.store.add_backup(
                run_id, record.id, p.host, p.backup, {**p.as_dict(), "recovery": True}
            )
        everything = unit_hosts(full, unit_of(record), with_orphans=True)
        hosts_read = sorted(set(everything) | set(plan.hosts))
        facts = await ctx.gather(transport, desired, hosts_read)
        fresh = plan_desired(desired, facts)
        hosts = host_verdicts(plan, phases, facts, fresh)
    finally:
        await transport.aclose()
    at_pre = sorted(h for h, v in hosts.items() if v["state"] in ("restored", "untouched"))
    return {
        "policy": "roll back every host of the run, confirmed phases included",
        "outcome": "rolled_back" if len(at_pre) == len(hosts) else "unproven",
        "hosts": hosts,
        "hosts_at_pre_apply_state": at_pre,
        "hosts_unknown": sorted(h for h, v in hosts.items() if v["state"] == "unknown"),
    }

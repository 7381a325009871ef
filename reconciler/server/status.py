"""Status bookkeeping: what the store says about each cluster, revision and open plan.

The controller's decisions end here as writes: a revision recorded valid or invalid (with its
errors), a cluster in sync, out of sync because a host was not read, planned (with its drift
report and the audit of drift found or cleared), failed with an error; open plans closed as
stale or superseded. Nothing here decides what runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from reconciler.desired.models import Desired
from reconciler.errors import DesiredStateInvalid, issue_dicts
from reconciler.plan.steps import Plan
from reconciler.server.context import ACTOR, ServerContext
from reconciler.server.store.records import ClusterRecord, PlanKind, PlanRecord, PlanState
from reconciler.server.units import unit_key

log = logging.getLogger("shoal.controller")


def record_valid_head(ctx: ServerContext, sha: str, desired: Desired) -> None:
    """The head is valid: recorded once; a known cluster the head lacks says so (kept as is)."""
    store = ctx.store
    if store.get_revision(sha) is None:
        store.record_revision(sha, valid=True, errors=[])
        store.audit("revision.valid", actor=ACTOR, detail={"revision": sha})
    for record in store.list_clusters():
        if record.name not in desired.clusters and record.last_error is None:
            store.update_cluster(
                record.name,
                head_revision=sha,
                last_error=f"not in the repository at {sha[:12]} (nothing is removed)",
            )


def record_invalid(ctx: ServerContext, sha: str, exc: DesiredStateInvalid) -> list[dict[str, Any]]:
    """The head is invalid: every known cluster shows its errors; none is planned and open
    plans are kept. Returns the errors (the API shows them for the head)."""
    store = ctx.store
    errors = issue_dicts(exc.issues)
    first_time = store.get_revision(sha) is None
    store.record_revision(sha, valid=False, errors=errors)
    known = {c.name for c in store.list_clusters()}
    for name in known:
        store.update_cluster(
            name, head_revision=sha, errors=errors, errors_revision=sha, checked_at=ctx.now()
        )
    if first_time:
        store.audit(
            "revision.invalid",
            actor=ACTOR,
            detail={"revision": sha, "errors": [e["text"] for e in errors]},
        )
        log.warning(
            "invalid revision: nothing planned",
            extra={"revision": sha, "issues": len(errors)},
        )
    return errors


def record_failure(ctx: ServerContext, unit: Sequence[str], revision: str, error: str) -> None:
    for name in unit:
        ctx.store.update_cluster(
            name, head_revision=revision, last_error=error, checked_at=ctx.now()
        )


def checked(sha: str, now: str) -> dict[str, Any]:
    """The fields every complete look at a unit sets: no errors, checked now."""
    return {
        "head_revision": sha,
        "errors": [],
        "errors_revision": None,
        "last_error": None,
        "checked_at": now,
    }


def record_unread(ctx: ServerContext, unit: Sequence[str], sha: str, plan: Plan, now: str) -> None:
    """A host whose facts could not be read has no step, yet is not known to be in sync: the
    cluster is out of sync, naming the host and why."""
    error = "; ".join(plan.unread.values())
    for name in unit:
        ctx.store.update_cluster(name, in_sync=False, **{**checked(sha, now), "last_error": error})


def record_in_sync(
    ctx: ServerContext, unit: Sequence[str], sha: str, now: str, *, had_drift: bool
) -> None:
    for record in open_plans(ctx, unit):
        close_plan(ctx, record, sha, "the hosts already match this revision")
    for name in unit:
        ctx.store.update_cluster(
            name, applied_revision=sha, in_sync=True, drift=None, **checked(sha, now)
        )
    if had_drift:
        ctx.store.audit(
            "drift.cleared", actor=ACTOR, cluster=unit_key(unit), detail={"revision": sha}
        )


def record_planned(
    ctx: ServerContext,
    unit: Sequence[str],
    sha: str,
    plan: Plan,
    current: PlanRecord,
    kind: PlanKind,
    records: Sequence[ClusterRecord | None],
    now: str,
) -> None:
    """The unit is out of sync with `current` to run; a drift plan is reported (once per
    plan: the API shows it, the audit says when it was found), a change plan clears it."""
    key = unit_key(unit)
    had_drift = any(r is not None and r.drift for r in records)
    drift: dict[str, Any] | None = None
    if kind == "drift":
        hosts = sorted(h for h, hp in plan.hosts.items() if hp.steps or hp.violations)
        drift = {"hosts": hosts, "plan_id": current.id, "revision": sha, "detected_at": now}
        if plan.refused:
            # The same words as the plan's: what breaks the safety rules, and where.
            drift["violations"] = {h: list(v) for h, v in plan.refused.items()}
        previous = next((r.drift for r in records if r is not None and r.drift), None)
        if previous is None or previous.get("plan_id") != current.id:
            ctx.store.audit(
                "drift.detected",
                actor=ACTOR,
                cluster=key,
                plan_id=current.id,
                detail={"hosts": hosts, "revision": sha,
                        **({"violations": drift["violations"]} if plan.refused else {})},
            )  # fmt: skip
            log.warning("drift detected", extra={"clusters": key, "hosts": hosts})
        else:
            drift["detected_at"] = previous.get("detected_at", now)
    elif had_drift:
        ctx.store.audit("drift.cleared", actor=ACTOR, cluster=key, detail={"revision": sha})
    for name in unit:
        ctx.store.update_cluster(
            name,
            planned_revision=sha,
            last_plan_id=current.id,
            in_sync=False,
            drift=drift,
            **checked(sha, now),
        )


def open_plans(ctx: ServerContext, unit: Sequence[str]) -> list[PlanRecord]:
    seen: dict[str, PlanRecord] = {}
    for name in unit:
        for record in ctx.store.list_plans(cluster=name, states=("pending",)):
            seen[record.id] = record
    return list(seen.values())


def mark(ctx: ServerContext, record: PlanRecord, state: PlanState, reason: str, actor: str) -> None:
    """pending -> `state` (compare-and-set), audited when it happened."""
    if ctx.store.transition_plan(record.id, ("pending",), state, reason=reason):
        ctx.store.audit(
            f"plan.{state}",
            actor=actor,
            cluster=record.cluster,
            plan_id=record.id,
            detail={"reason": reason},
        )


def close_plan(ctx: ServerContext, record: PlanRecord, revision: str, why: str) -> None:
    """An open plan that no longer applies: superseded by a newer revision, or stale."""
    if record.revision != revision:
        mark(ctx, record, "superseded", f"revision {revision[:12]} is newer", ACTOR)
    else:
        mark(ctx, record, "stale", why, ACTOR)

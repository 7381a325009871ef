"""Plans: list, show (per-host diff, steps, digests), approve and reject.

Approving needs the approver role and is for one plan id only. The controller gathers the
facts again first: when they moved, the plan is stale and the answer is 409 with the id of the
new plan.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status

from api.auth import Admin, Approver, Viewer, auth_responses
from api.deps import ControllerPort, get_controller, get_store
from api.params import ClusterQuery, LimitQuery, PlanIdPath, PlanStateQuery
from api.schemas import (
    ApproveResponse,
    Conflict,
    Decision,
    FreezeOverrideOut,
    FreezeOverrideRequest,
    PlanDetail,
    PlanSummary,
    Problem,
    RejectResponse,
    plan_detail,
    plan_summary,
)
from reconciler.server.clock import stamp
from reconciler.server.lifecycle import ApprovalRecorded
from reconciler.server.store.database import Store

router = APIRouter(tags=["plans"])

_DECISION: dict[int | str, dict[str, Any]] = {
    **auth_responses("approver"),
    # FastAPI's own answer to a body it cannot decode (not UTF-8, say) before any route runs.
    status.HTTP_400_BAD_REQUEST: {"model": Problem, "description": "the body cannot be read"},
    status.HTTP_404_NOT_FOUND: {"model": Problem, "description": "no such plan"},
    status.HTTP_409_CONFLICT: {
        "model": Conflict,
        "description": "the plan is no longer pending, or git or the hosts moved since it was made",
    },
}


@router.get("/plans", responses=auth_responses("viewer"))
def list_plans(
    _: Viewer,
    store: Annotated[Store, Depends(get_store)],
    cluster: ClusterQuery = None,
    state: PlanStateQuery = None,
    limit: LimitQuery = 100,
) -> list[PlanSummary]:
    records = store.list_plans(cluster=cluster, states=(state,) if state else None, limit=limit)
    return [plan_summary(r) for r in records]


@router.get(
    "/plans/{plan_id}",
    responses={**auth_responses("viewer"), 404: {"model": Problem, "description": "no such plan"}},
)
async def show_plan(
    plan_id: PlanIdPath,
    _: Viewer,
    store: Annotated[Store, Depends(get_store)],
    controller: Annotated[ControllerPort, Depends(get_controller)],
) -> PlanDetail:
    record = store.get_plan(plan_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no plan {plan_id}")
    runs = [r.id for r in store.list_runs(plan_id=plan_id)]
    hold = await controller.hold_of(record)
    return plan_detail(record, store.approvals_for(plan_id), runs, hold,
                       store.freeze_override(plan_id))  # fmt: skip


@router.post(
    "/plans/{plan_id}/approve",
    status_code=202,
    responses={
        **_DECISION,
        status.HTTP_503_SERVICE_UNAVAILABLE: {
            "model": Problem,
            "description": "git or a host could not be read; nothing was decided, retry",
        },
    },
)
async def approve_plan(
    plan_id: PlanIdPath,
    token: Approver,
    controller: Annotated[ControllerPort, Depends(get_controller)],
    body: Decision | None = None,
) -> ApproveResponse:
    comment = body.comment if body else ""
    run = await controller.approve(plan_id, actor=token.actor, comment=comment)
    if isinstance(run, ApprovalRecorded):
        # A recorded vote leaves the plan pending; the last approval under a lock approves it,
        # and it waits for the unlock.
        state = "approved" if run.waiting is not None else "pending"
        until = stamp(run.until) if run.until is not None else None
        return ApproveResponse(plan_id=plan_id, state=state, approvals=len(run.approvers),
                               approvals_required=run.required, waiting=run.waiting,
                               waiting_until=until)  # fmt: skip
    return ApproveResponse(plan_id=plan_id, state="applying", run_id=run.id)


@router.post("/plans/{plan_id}/reject", responses=_DECISION)
async def reject_plan(
    plan_id: PlanIdPath,
    token: Approver,
    controller: Annotated[ControllerPort, Depends(get_controller)],
    body: Decision | None = None,
) -> RejectResponse:
    comment = body.comment if body else ""
    record = await controller.reject(plan_id, actor=token.actor, comment=comment)
    return RejectResponse(plan_id=record.id, state=record.state)


@router.post(
    "/plans/{plan_id}/override-freeze",
    status_code=201,
    responses={
        **auth_responses("admin"),
        # FastAPI's own answer to a body it cannot decode, as for the decisions above.
        status.HTTP_400_BAD_REQUEST: {"model": Problem, "description": "the body cannot be read"},
        status.HTTP_404_NOT_FOUND: {"model": Problem, "description": "no such plan"},
        status.HTTP_409_CONFLICT: {
            "model": Conflict,
            "description": "the plan is not pending or approved, or is overridden already",
        },
    },
)
async def override_freeze(
    plan_id: PlanIdPath,
    body: FreezeOverrideRequest,
    token: Admin,
    controller: Annotated[ControllerPort, Depends(get_controller)],
) -> FreezeOverrideOut:
    """Let this plan start although a freeze window of the config repo forbids applies now
    (audited; a lock still holds it). An approved plan starts at the pass this wakes."""
    done = await controller.override_freeze(plan_id, actor=token.actor, reason=body.reason)
    return FreezeOverrideOut(plan_id=done.plan_id, reason=done.reason, actor=done.actor,
                             at=done.at)  # fmt: skip

"""Plans: list, show (per-host diff, steps, digests), approve and reject.

Approving needs the approver role and is for one plan id only. The controller gathers the
facts again first: when they moved, the plan is stale and the answer is 409 with the id of the
new plan.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status

from api.auth import Approver, Viewer
from api.deps import ControllerPort, get_controller, get_store
from api.schemas import (
    ApproveResponse,
    Conflict,
    Decision,
    PlanDetail,
    PlanSummary,
    Problem,
    RejectResponse,
    plan_detail,
    plan_summary,
)
from reconciler.store import PLAN_STATES, Store

router = APIRouter(tags=["plans"])

_CONFLICT: dict[int | str, dict[str, Any]] = {
    status.HTTP_404_NOT_FOUND: {"model": Problem},
    status.HTTP_409_CONFLICT: {"model": Conflict},
}


@router.get("/plans")
def list_plans(
    _: Viewer,
    store: Annotated[Store, Depends(get_store)],
    cluster: str | None = None,
    state: Annotated[str | None, Query(description=" | ".join(PLAN_STATES))] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[PlanSummary]:
    if state is not None and state not in PLAN_STATES:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"state must be one of {', '.join(PLAN_STATES)}"
        )
    records = store.list_plans(
        cluster=cluster, states=(state,) if state else None, limit=limit
    )
    return [plan_summary(r) for r in records]


@router.get("/plans/{plan_id}", responses={404: {"model": Problem}})
def show_plan(
    plan_id: str, _: Viewer, store: Annotated[Store, Depends(get_store)]
) -> PlanDetail:
    record = store.get_plan(plan_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no plan {plan_id}")
    runs = [r.id for r in store.list_runs(plan_id=plan_id)]
    return plan_detail(record, store.approvals_for(plan_id), runs)


@router.post("/plans/{plan_id}/approve", status_code=202, responses=_CONFLICT)
async def approve_plan(
    plan_id: str,
    token: Approver,
    controller: Annotated[ControllerPort, Depends(get_controller)],
    body: Decision | None = None,
) -> ApproveResponse:
    comment = body.comment if body else ""
    run = await controller.approve(plan_id, actor=token.actor, comment=comment)
    return ApproveResponse(plan_id=plan_id, state="applying", run_id=run.id)


@router.post("/plans/{plan_id}/reject", responses=_CONFLICT)
async def reject_plan(
    plan_id: str,
    token: Approver,
    controller: Annotated[ControllerPort, Depends(get_controller)],
    body: Decision | None = None,
) -> RejectResponse:
    comment = body.comment if body else ""
    record = await controller.reject(plan_id, actor=token.actor, comment=comment)
    return RejectResponse(plan_id=record.id, state=record.state)

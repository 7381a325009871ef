"""A plan's page, and Approve / Reject from it (the same controller calls as the JSON API).

An approval that comes too late (git or the hosts moved: the plan is stale) is refused with the
page of the plan saying so and a link to the plan made from the new facts.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response

from api.deps import get_controller, get_store
from api.params import PlanIdPath
from api.schemas import Decision, plan_detail
from api.web.forms import read_form
from api.web.render import render
from api.web.session import WebUser, check_post, page_user
from api.web.views_plan import WHY, hosts_in_phase_order, successor
from reconciler.errors import HostKeyRejected, SourceError, TransportError
from reconciler.server.lifecycle import (
    AlreadyApproved,
    ApprovalRecorded,
    PlanNotFound,
    PlanNotPending,
    StaleApproval,
)

router = APIRouter(include_in_schema=False)


async def _plan_page(
    request: Request,
    user: WebUser,
    plan_id: str,
    *,
    status_code: int = 200,
    refused: str = "",
    recorded: str = "",
    new_plan_id: str | None = None,
) -> Response:
    store = get_store(request)
    record = store.get_plan(plan_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no plan {plan_id}")
    runs = store.list_runs(plan_id=plan_id)
    controller = get_controller(request)
    hold = await controller.hold_of(record)
    detail = plan_detail(record, store.approvals_for(plan_id), [r.id for r in runs], hold,
                         store.freeze_override(plan_id))  # fmt: skip
    after = successor(store, record)
    created = store.list_audit(plan_id=plan_id, action="plan.created", limit=1)
    return render(
        request,
        "plan.html",
        user,
        status_code,
        plan=detail,
        why=WHY.get(record.kind, record.kind),
        # What started the look that made it (a plan from before this was recorded has none).
        woken_by=created[0].detail.get("woken_by", "") if created else "",
        commit=await controller.describe(record.revision),
        hosts=hosts_in_phase_order(record),
        successor_id=new_plan_id or (after.id if after else None),
        runs=runs,
        refused=refused,
        recorded=recorded,
    )


@router.get("/ui/plans/{plan_id}")
async def show_plan(request: Request, plan_id: PlanIdPath) -> Response:
    return await _plan_page(request, page_user(request), plan_id)


@router.post("/ui/plans/{plan_id}/approve")
async def approve(request: Request, plan_id: PlanIdPath) -> Response:
    form = await read_form(request)
    user = check_post(request, form, "approver")
    comment = Decision(comment=form.get("comment", "")[:4000]).comment
    try:
        run = await get_controller(request).approve(
            plan_id, actor=user.token.actor, comment=comment
        )
    except PlanNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except StaleApproval as exc:
        words = f"Approve refused: this plan is {'stale' if exc.hosts else 'superseded'}"
        return await _plan_page(
            request, user, plan_id, status_code=409,
            refused=f"{words} ({exc.reason}).", new_plan_id=exc.new_plan_id,
        )  # fmt: skip
    except (PlanNotPending, AlreadyApproved) as exc:
        return await _plan_page(
            request, user, plan_id, status_code=409, refused=f"Approve refused: {exc}."
        )
    except (SourceError, TransportError, HostKeyRejected) as exc:
        return await _plan_page(
            request, user, plan_id, status_code=503,
            refused=f"Nothing was decided: {exc}. Try again.",
        )  # fmt: skip
    if isinstance(run, ApprovalRecorded) and run.waiting is not None:
        words = "Approved. It starts by itself once nothing holds it (see below)."
        return await _plan_page(request, user, plan_id, status_code=202, recorded=words)
    if isinstance(run, ApprovalRecorded):
        words = (f"Your approval is recorded: {len(run.approvers)} of {run.required} "
                 f"({', '.join(run.approvers)}). It applies once approvers with other tokens "
                 "approve it too.")  # fmt: skip
        return await _plan_page(request, user, plan_id, status_code=202, recorded=words)
    return RedirectResponse(f"/ui/runs/{run.id}", status.HTTP_303_SEE_OTHER)


@router.post("/ui/plans/{plan_id}/reject")
async def reject(request: Request, plan_id: PlanIdPath) -> Response:
    form = await read_form(request)
    user = check_post(request, form, "approver")
    comment = Decision(comment=form.get("comment", "")[:4000]).comment
    try:
        await get_controller(request).reject(plan_id, actor=user.token.actor, comment=comment)
    except PlanNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except PlanNotPending as exc:
        return await _plan_page(
            request, user, plan_id, status_code=409, refused=f"Reject refused: {exc}."
        )
    return RedirectResponse(f"/ui/plans/{plan_id}", status.HTTP_303_SEE_OTHER)

"""A run's page, and the fragment its script fetches to follow a running run live."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import Response

from api.deps import get_store
from api.params import RunIdPath
from api.schemas import run_out
from api.web.render import render
from api.web.session import PageUser
from api.web.views_run import arp_ok, arp_owner, chart

router = APIRouter(include_in_schema=False)


def _run_page(request: Request, user: PageUser, run_id: str, template: str) -> Response:
    store = get_store(request)
    record = store.get_run(run_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id}")
    run = run_out(record, store.step_results(run_id), store.backups(run_id=run_id))
    plan = store.get_plan(record.plan_id)
    planned = sum(len(hp.steps) for hp in plan.plan.hosts.values()) if plan else 0
    verification = run.verification
    return render(
        request,
        template,
        user,
        run=run,
        planned=planned,
        approvals=store.approvals_for(record.plan_id),
        charts=[chart(s) for s in verification.services] if verification else [],
        arp=[(a, arp_owner(a), arp_ok(a)) for a in verification.arp] if verification else [],
    )


@router.get("/ui/runs/{run_id}")
def show_run(request: Request, user: PageUser, run_id: RunIdPath) -> Response:
    return _run_page(request, user, run_id, "run.html")


@router.get("/ui/runs/{run_id}/live")
def run_live(request: Request, user: PageUser, run_id: RunIdPath) -> Response:
    """The live part of the run's page alone (steps, backups, verification), for polling."""
    return _run_page(request, user, run_id, "run_live.html")

"""The clusters overview, a cluster's history, an admin's "Reconcile now", and an admin's lock
and unlock of a cluster (the same store writes and audit as POST /clusters/{name}/lock)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response

from api.clusters import clusters_out
from api.deps import get_controller, get_settings, get_store
from api.locks import lock, unlock
from api.params import ClusterNamePath
from api.reconcile import request_pass
from api.schemas import plan_summary
from api.web.forms import read_form
from api.web.render import render
from api.web.session import PageUser, WebUser, check_post
from api.web.views_cluster import cluster_view, history
from reconciler.server.source import redact_url

router = APIRouter(include_in_schema=False)


@router.get("/ui/")
async def overview(request: Request, user: PageUser) -> Response:
    store, controller = get_store(request), get_controller(request)
    head = controller.head
    desired = await controller.desired_at(head) if head else None
    views = []
    for out in clusters_out(store):
        sha = out.applied_revision or out.head_revision
        commit = await controller.describe(sha) if sha else None
        views.append(cluster_view(store, out, desired, commit))
    settings = get_settings(request)
    return render(
        request,
        "overview.html",
        user,
        clusters=views,
        repo=redact_url(settings.repo),
        branch=settings.branch,
        head=head,
        head_commit=await controller.describe(head) if head else None,
        head_errors=controller.head_errors,
        source_error=controller.last_source_error,
        last_pass_at=controller.last_pass_at,
        queued=request.query_params.get("queued") == "1",
        locks=store.cluster_locks(),
    )


@router.get("/ui/clusters/{name}")
async def cluster_history(request: Request, user: PageUser, name: ClusterNamePath) -> Response:
    return await _cluster_page(request, user, name)


async def _cluster_page(request: Request, user: WebUser, name: str, *,
                        refused: str = "") -> Response:  # fmt: skip
    store, controller = get_store(request), get_controller(request)
    record = store.get_cluster(name)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no cluster {name}")
    out = next(c for c in clusters_out(store) if c.name == name)
    head = controller.head
    desired = await controller.desired_at(head) if head else None
    sha = out.applied_revision or out.head_revision
    view = cluster_view(store, out, desired, await controller.describe(sha) if sha else None)
    plans = [plan_summary(p) for p in store.list_plans(cluster=name, limit=200)]
    return render(
        request, "cluster.html", user, cluster=view, rows=history(store, name, plans),
        lock=store.cluster_locks().get(name), refused=refused,
        status_code=409 if refused else 200,
    )


@router.post("/ui/clusters/{name}/lock")
async def lock_cluster(request: Request, name: ClusterNamePath) -> Response:
    form = await read_form(request)
    user = check_post(request, form, "admin")
    reason = form.get("reason", "").strip()[:2000]
    store = get_store(request)
    if store.get_cluster(name) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no cluster {name}")
    if not reason:
        return await _cluster_page(request, user, name, refused="A lock needs a reason.")
    if lock(store, name, reason=reason, actor=user.token.actor) is None:
        held = store.cluster_locks()[name]
        return await _cluster_page(request, user, name, refused=(
            f"Cluster {name} is locked already by {held.actor}: {held.reason}."))  # fmt: skip
    return RedirectResponse(f"/ui/clusters/{name}", status.HTTP_303_SEE_OTHER)


@router.post("/ui/clusters/{name}/unlock")
async def unlock_cluster(request: Request, name: ClusterNamePath) -> Response:
    form = await read_form(request)
    user = check_post(request, form, "admin")
    if unlock(get_store(request), get_controller(request), name, actor=user.token.actor) is None:
        return await _cluster_page(request, user, name, refused=f"Cluster {name} is not locked.")
    return RedirectResponse(f"/ui/clusters/{name}", status.HTTP_303_SEE_OTHER)


@router.post("/ui/reconcile")
async def reconcile_now(request: Request) -> Response:
    form = await read_form(request)
    user = check_post(request, form, "admin")
    request_pass(get_store(request), get_controller(request), user.token.actor)
    return RedirectResponse("/ui/?queued=1", status.HTTP_303_SEE_OTHER)
